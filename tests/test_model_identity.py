"""The BentoML model store is per user and shared by every registry on the machine: serving
must load the champion of the registry it is configured with, never a model of another
registry that shares its name and version number."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from leadscore import registry
from leadscore.artifact import Calibrator, LeadModel
from leadscore.serving import runtime as rt

#: two catalogue features (the scorer computes what the catalogue names)
FEATURES = ["events_7d", "events_30d"]
A, B = FEATURES


def _tiny_model(seed: int) -> LeadModel:
    """Two features, a few trees; the seed decides which way the label leans."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(300, 2)), columns=FEATURES)
    w = 1.0 if seed % 2 else -1.0
    y = (rng.random(300) < 1 / (1 + np.exp(-3 * w * x[A]))).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 4, "verbose": -1,
                         "num_threads": 1, "seed": seed}, lgb.Dataset(x, label=y),
                        num_boost_round=5)
    return LeadModel("conversion", booster=booster, features=FEATURES, categories={},
                     calibrator=Calibrator("none"))


def _register(model: LeadModel) -> str:
    """Log and register the model as a new version made champion; returns its run id."""
    import mlflow

    registry.configure()
    mlflow.set_experiment("identity-test")
    with mlflow.start_run() as run:
        _, version = registry.log_model(model, pd.DataFrame({A: [0.1], B: [0.2]}),
                                        registry.registered_name("conversion"))
    registry.set_alias("conversion", registry.CHAMPION, version)
    return run.info.run_id


@pytest.fixture
def two_registries(tmp_path, monkeypatch):
    """Registries A and B (two tracking URIs), each with its own conversion v1 champion,
    and one BentoML home for both, as on a machine with two checkouts."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setattr(rt, "_LOADED", {})
    monkeypatch.setattr(rt, "_DIGESTS", {})
    out = {}
    for key, seed in (("A", 1), ("B", 2)):
        folder = tmp_path / key
        folder.mkdir()
        monkeypatch.chdir(folder)  # MLflow's default artifact root
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
        model = _tiny_model(seed)
        out[key] = {"folder": folder, "model": model, "run_id": _register(model)}
    return out


def _use(reg, monkeypatch) -> None:
    monkeypatch.chdir(reg["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{reg['folder'] / 'mlruns.db'}")


ROWS = pd.DataFrame({A: np.linspace(-2, 2, 9), B: np.linspace(1, -1, 9)})


def test_each_registry_is_served_its_own_champion_from_one_shared_store(two_registries,
                                                                          monkeypatch):
    a, b = two_registries["A"], two_registries["B"]
    assert not np.allclose(a["model"].predict_proba(ROWS), b["model"].predict_proba(ROWS))

    _use(a, monkeypatch)
    served_a = rt.load_from_bento_store(names=["conversion"])
    _use(b, monkeypatch)  # same name, same version 1, another registry
    served_b = rt.load_from_bento_store(names=["conversion"])

    for reg, served in ((a, served_a), (b, served_b)):
        assert served.versions == {"conversion": "1"}
        np.testing.assert_array_equal(served.models["conversion"].predict_proba(ROWS),
                                      reg["model"].predict_proba(ROWS))
    import bentoml

    stored = {m.info.labels[rt.LABEL_RUN]: m for m in bentoml.models.list("leadscore-conversion")}
    assert set(stored) == {a["run_id"], b["run_id"]}  # both kept, each under its identity
    for reg in (a, b):
        assert stored[reg["run_id"]].tag.version.startswith(reg["run_id"])
        assert stored[reg["run_id"]].info.labels[rt.LABEL_VERSION] == "1"

    # the registry down: the fallback takes only models imported from this registry, even
    # though B's was imported last
    _use(a, monkeypatch)

    def down(*args, **kwargs):
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(registry, "resolve", down)
    fallback = rt.load_from_bento_store(names=["conversion"])
    np.testing.assert_array_equal(fallback.models["conversion"].predict_proba(ROWS),
                                  a["model"].predict_proba(ROWS))
    assert fallback.versions == {"conversion": "1"}


def test_a_registry_without_the_model_serves_none_of_another_registrys(two_registries,
                                                                         monkeypatch, tmp_path):
    _use(two_registries["A"], monkeypatch)
    assert rt.load_from_bento_store(names=["conversion"]).models  # imported into the store
    empty = tmp_path / "C"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{empty / 'mlruns.db'}")
    assert rt.load_from_bento_store(names=["conversion"]).models == {}


def test_the_default_registry_of_two_folders_is_two_registries(tmp_path, monkeypatch):
    """``sqlite:///mlruns.db`` names a file in the working directory."""
    ids = []
    for key in ("A", "B"):
        (tmp_path / key).mkdir()
        monkeypatch.chdir(tmp_path / key)
        ids.append(rt.registry_id("sqlite:///mlruns.db"))
    assert ids[0] != ids[1]
    assert ids[1] == rt.registry_id(f"sqlite:///{tmp_path / 'B' / 'mlruns.db'}")


def test_a_store_model_whose_files_differ_from_its_checksum_is_imported_again(two_registries,
                                                                             monkeypatch):
    """The tag names the files' checksum: a copy altered or cut short in the store is not
    served as that model; it is replaced by the registry's."""
    from pathlib import Path

    import bentoml

    from leadscore.artifact import BOOSTER_FILE, find_artifact_dir

    a = two_registries["A"]
    _use(a, monkeypatch)
    rt.load_from_bento_store(names=["conversion"])
    # BentoML keeps the store it first opened in this process, which earlier tests share:
    # pick A's model by its run id
    (stored,) = [m for m in bentoml.models.list("leadscore-conversion")
                 if m.info.labels[rt.LABEL_RUN] == a["run_id"]]
    booster = find_artifact_dir(Path(stored.path)) / BOOSTER_FILE
    text = booster.read_text()
    booster.write_text(text.replace("learning_rate: 0.1", "learning_rate: 0.2", 1))
    assert booster.read_text() != text
    monkeypatch.setattr(rt, "_LOADED", {})
    served = rt.load_from_bento_store(names=["conversion"])
    np.testing.assert_array_equal(served.models["conversion"].predict_proba(ROWS),
                                  a["model"].predict_proba(ROWS))
    booster = find_artifact_dir(Path(bentoml.models.get(stored.tag).path)) / BOOSTER_FILE
    assert booster.read_text() == text
