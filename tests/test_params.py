"""LightGBM settings: an experiment's ``params`` are checked against what leadscore can score
exactly before any data is read, and a booster it would score wrong is never loaded."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from leadscore import models
from leadscore.artifact import Calibrator, LeadModel, UnsupportedModel, check_booster
from leadscore.cli import app
from leadscore.training import lgb_params, trainer
from leadscore.training.config import ExperimentConfig


def _cfg(text: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(yaml.safe_load(text))


def _tiny(n: int = 400) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                       "c": rng.exponential(size=n)})
    y = (2 * df["a"] - df["b"] + rng.normal(size=n) > 0).astype(int).to_numpy()
    return df, y


@pytest.mark.parametrize("value", ['"true"', "true"])
def test_linear_tree_is_refused_by_the_config(value):
    with pytest.raises(ValueError, match="linear_tree is not supported"):
        _cfg(f"model: conversion\nparams: {{linear_tree: {value}}}")


def test_cli_train_refuses_unsupported_params_before_reading_data(tmp_path):
    """The data folder does not exist: the error is still the setting's, on one line."""
    config = tmp_path / "linear.yaml"
    config.write_text('model: conversion\nparams: {linear_tree: "true"}\n')
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "no-such-data"),
                                   "--config", str(config)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "linear_tree is not supported" in lines[0] and str(config) in lines[0]
    assert "no-such-data" not in res.output


def test_yaml_booleans_reach_lightgbm_as_booleans():
    cfg = _cfg("model: conversion\nparams: {extra_trees: true, use_missing: false}")
    assert cfg.params == {"extra_trees": True, "use_missing": False}
    assert cfg.params["extra_trees"] is True
    spec = cfg.apply(models.get("conversion"))
    params = trainer.booster_params(spec, ["a", "b", "c"], seed=0, num_threads=1,
                                    overrides=cfg.params)
    assert params["extra_trees"] is True and params["use_missing"] is False
    params["monotone_constraints"] = [0, 0, 0]
    df, y = _tiny()
    booster = lgb.train(params, lgb.Dataset(df, y), num_boost_round=3)  # LightGBM takes them
    assert "[extra_trees: 1]" in booster.model_to_string()


def test_aliases_become_the_specs_names_so_they_cannot_lose_to_the_spec():
    """``min_child_samples`` next to the spec's ``min_data_in_leaf`` would be ignored by
    LightGBM; ``n_estimators`` would override the refit's tree count."""
    cfg = _cfg("model: conversion\nparams: {min_child_samples: 20, n_estimators: 50}")
    assert cfg.params == {"min_data_in_leaf": 20, "num_boost_round": 50}
    spec = models.get("conversion")
    params = trainer.booster_params(spec, list(spec.features), seed=0, num_threads=1,
                                    overrides=cfg.params)
    assert params["min_data_in_leaf"] == 20
    assert not {"min_child_samples", "n_estimators", "num_boost_round"} & set(params)
    with pytest.raises(ValueError, match="same setting"):
        _cfg("model: conversion\nparams: {min_child_samples: 20, min_data_in_leaf: 5}")


@pytest.mark.parametrize("text, match", [
    ("{extra_trees: 1}", "extra_trees must be true or false"),
    ("{num_leaves: 2.5}", "num_leaves must be an integer"),
    ("{feature_fraction: 1.5}", "feature_fraction must be at most 1"),
    ("{objective: regression}", "objective must be one of binary"),
    ("{boosting: rf}", "boosting must be one of gbdt"),
    ("{seed: 3}", "top-level seed"),
    ("{learnin_rate: 0.1}", "learnin_rate is not a LightGBM setting"),
])
def test_params_are_checked_by_name_and_type(text, match):
    with pytest.raises(ValueError, match=match):
        _cfg(f"model: conversion\nparams: {text}")


def test_sweep_space_takes_supported_settings_of_the_right_kind():
    cfg = _cfg("model: conversion\nsweep: {space: {colsample_bytree: {low: 0.5, high: 1}}}")
    assert set(cfg.sweep.space) == {"feature_fraction"}
    with pytest.raises(ValueError, match="linear_tree"):
        _cfg("model: conversion\nsweep: {space: {linear_tree: {low: 0, high: 1}}}")
    with pytest.raises(ValueError, match="kind: int"):
        _cfg("model: conversion\nsweep: {space: {num_leaves: {low: 7, high: 31}}}")


def test_every_spec_uses_supported_settings_under_their_own_names():
    for name in models.NAMES:
        spec = models.get(name)
        assert lgb_params.normalize(spec.params) == spec.params, name


def _leadmodel(booster: lgb.Booster, df: pd.DataFrame) -> LeadModel:
    return LeadModel("tiny", booster=booster, features=list(df.columns), categories={},
                     calibrator=Calibrator("none"))


def test_a_linear_tree_booster_is_refused_at_load_and_in_memory(tmp_path):
    """LightGBM's own scores of a linear-tree booster are not the sum of its leaf values
    (all that the compiled walk reads): such an artifact must not load, nor score."""
    df, y = _tiny()
    booster = lgb.train({"objective": "binary", "linear_tree": True, "num_leaves": 4,
                         "verbosity": -1, "seed": 1}, lgb.Dataset(df, y), num_boost_round=10)
    leaves = booster.predict(df, pred_leaf=True)
    values = [[n["leaf_value"] for n in _leaves(t["tree_structure"])]
              for t in booster.dump_model()["tree_info"]]
    by_leaf_values = sum(np.asarray(v)[leaves[:, i]] for i, v in enumerate(values))
    assert np.abs(booster.predict(df, raw_score=True) - by_leaf_values).max() > 0.05
    _leadmodel(booster, df).save(tmp_path / "m")
    with pytest.raises(UnsupportedModel, match="linear_tree"):
        LeadModel.load(tmp_path / "m")
    for score in ("predict_proba", "contributions"):
        with pytest.raises(UnsupportedModel, match="linear_tree"):
            getattr(_leadmodel(booster, df), score)(df)


def _leaves(node: dict) -> list[dict]:
    if "split_feature" not in node:
        return [node]
    return _leaves(node["left_child"]) + _leaves(node["right_child"])


@pytest.mark.parametrize("params, match", [
    ({"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}, "boosting: rf"),
    ({"objective": "multiclass", "num_class": 3}, "num_class"),
    ({"objective": "regression"}, "objective regression"),
])
def test_other_boosters_leadscore_cannot_score_are_refused(params, match):
    df, y = _tiny()
    if "num_class" in params:
        y = y + (df["c"].to_numpy() > 1)
    booster = lgb.train({"objective": "binary", "num_leaves": 4, "verbosity": -1, **params},
                        lgb.Dataset(df, y), num_boost_round=3)
    with pytest.raises(UnsupportedModel, match=match):
        check_booster(booster)


def test_a_plain_binary_booster_loads_and_scores_as_lightgbm(tmp_path):
    df, y = _tiny()
    booster = lgb.train({"objective": "binary", "num_leaves": 4, "verbosity": -1,
                         "extra_trees": True}, lgb.Dataset(df, y), num_boost_round=10)
    _leadmodel(booster, df).save(tmp_path / "m")
    model = LeadModel.load(tmp_path / "m")
    np.testing.assert_array_equal(model.raw(df), booster.predict(df, raw_score=True))


def test_serving_does_not_reimport_a_model_it_refuses(tmp_path, monkeypatch):
    """A refused artifact is whole: the BentoML store copy is not taken for a broken one
    (deleted and imported again); the error reaches the reload, which keeps the old models."""
    import bentoml

    from leadscore.serving import runtime

    df, y = _tiny()
    booster = lgb.train({"objective": "binary", "linear_tree": True, "num_leaves": 4,
                         "verbosity": -1}, lgb.Dataset(df, y), num_boost_round=3)
    _leadmodel(booster, df).save(tmp_path / "m")
    bm = SimpleNamespace(tag=SimpleNamespace(version="v1"), path=str(tmp_path / "m"))
    _ = bentoml.models.get  # a lazy module: loading it later would undo the patches
    monkeypatch.setattr(bentoml.models, "get", lambda _tag: bm)
    deleted = []
    monkeypatch.setattr(bentoml.models, "delete", deleted.append)
    with pytest.raises(UnsupportedModel, match="linear_tree"):
        runtime._get_or_import(runtime.ModelIdentity(
            name="tiny", registered_name="leadscore-tiny", version="1", run_id="r1",
            digest="0" * runtime.DIGEST_CHARS, registry="test"), None, None)
    assert not deleted


def test_leaf_size_counts_leads_not_their_rows_at_every_cutoff():
    """A lead open at twelve weekly cutoffs is twelve rows; the default leaf of 100 leads
    becomes LightGBM's ``min_data_in_leaf`` by the rows per lead, so no leaf is the same eight
    customers twelve times over. A leaf given in rows (the config's ``min_data_in_leaf``)
    replaces it; giving both is refused."""
    spec = models.get("churn")
    assert spec.params["min_leads_in_leaf"] == 100 and "min_data_in_leaf" not in spec.params
    rows = pd.DataFrame({"lead_id": np.repeat(np.arange(50), 12)})
    per_lead = trainer.rows_per_lead(rows)
    assert per_lead == 12.0
    params = trainer.booster_params(spec, list(spec.features), 0, 1, per_lead=per_lead)
    assert params["min_data_in_leaf"] == 1200 and "min_leads_in_leaf" not in params
    params = trainer.booster_params(spec, list(spec.features), 0, 1, per_lead=per_lead,
                                    overrides={"min_child_samples": 30})
    assert params["min_data_in_leaf"] == 30
    params = trainer.booster_params(spec, list(spec.features), 0, 1, per_lead=2.5,
                                    overrides={"min_leads_in_leaf": 20})
    assert params["min_data_in_leaf"] == 50
    with pytest.raises(ValueError, match="give one"):
        trainer.booster_params(spec, list(spec.features), 0, 1,
                               overrides={"min_leads_in_leaf": 20, "min_data_in_leaf": 5})
    cfg = _cfg("model: churn\nparams: {min_leads_in_leaf: 40}")
    assert cfg.params == {"min_leads_in_leaf": 40}


def test_the_fit_sizes_leaves_by_its_own_rows_per_lead():
    """The evaluation fit turns leads into rows on the rows it boosts on."""
    from leadscore.training.dataset import TrainingSet, lead_share

    rng = np.random.default_rng(0)
    n, k = 400, 5
    frame = pd.DataFrame({"lead_id": np.repeat([f"L{i}" for i in range(n)], k),
                          "as_of": np.tile(pd.date_range("2026-01-05", periods=k, freq="7D",
                                                         tz="UTC"), n)})
    x = rng.random(len(frame))
    frame["a"] = x
    frame["label"] = (rng.random(len(frame)) < x).astype(int)
    u = lead_share(frame["lead_id"], 0)
    frame["split"] = np.select([u < 0.7, u < 0.85], ["fit", "valid"], "calib")
    spec = replace(models.get("conversion"), features=("lead_age_days",))
    frame["lead_age_days"] = x
    ts = TrainingSet(frame=frame, cutoffs=[], data_end=frame["as_of"].max(), n_censored=0,
                     split_kind="entity")
    fr = trainer.fit(spec, ts, seed=0, num_threads=1, overrides={"min_leads_in_leaf": 10})
    assert fr.params["min_data_in_leaf"] == 10 * k


def test_recency_weights_halve_every_half_life_and_are_off_by_default():
    as_of = pd.Series(pd.to_datetime(["2026-01-01", "2026-03-02", "2026-05-01"], utc=True))
    w = trainer.recency_weights(as_of, 60.0)
    assert w == pytest.approx([0.5 ** 2, 0.5, 1.0])
    assert trainer.recency_weights(as_of, None) is None
    assert models.get("conversion").params["recency_half_life_days"] == 90
    assert models.get("order-7d").params["recency_half_life_days"] == 90  # the same spec
    assert "recency_half_life_days" not in models.get("churn").params
    with pytest.raises(ValueError, match="recency_half_life_days"):
        _cfg("model: conversion\nparams: {recency_half_life_days: 0}")


def test_with_a_half_life_the_recent_cutoffs_teach_the_trees_most():
    """A signal that turned around: the feature raised orders at the older cutoffs and lowers
    them at the recent ones. Unweighted, the older (more numerous) rows win; with a short
    half-life the model follows the recent months."""
    from leadscore.training.dataset import TrainingSet, lead_share

    rng = np.random.default_rng(1)
    cuts = pd.date_range("2025-01-06", periods=40, freq="7D", tz="UTC")
    n = 300
    frame = pd.DataFrame({"lead_id": np.repeat([f"L{i}" for i in range(n)], len(cuts)),
                          "as_of": np.tile(cuts, n)})
    x = rng.random(len(frame))
    recent = (frame["as_of"] >= cuts[-10]).to_numpy()  # the last quarter of the cutoffs
    p = np.where(recent, 0.8 - 0.6 * x, 0.2 + 0.6 * x)
    frame["lead_age_days"] = x
    frame["label"] = (rng.random(len(frame)) < p).astype(int)
    u = lead_share(frame["lead_id"], 0)
    frame["split"] = np.select([u < 0.7, u < 0.85], ["fit", "valid"], "calib")
    spec = replace(models.get("conversion"), features=("lead_age_days",), monotone={})
    ts = TrainingSet(frame=frame, cutoffs=list(cuts), data_end=cuts[-1], n_censored=0,
                     split_kind="entity")
    probe = pd.DataFrame({"lead_age_days": [0.1, 0.9]})

    def slope(half_life):
        fr = trainer.fit(spec, ts, seed=0, num_threads=1,
                         overrides={"recency_half_life_days": half_life, "max_depth": 2,
                                    "min_leads_in_leaf": 10})
        lo, hi = fr.model.raw(probe)
        return hi - lo

    assert slope(1e6) > 0  # (practically) unweighted: the older rows' direction
    assert slope(14.0) < 0  # the recent rows' direction
