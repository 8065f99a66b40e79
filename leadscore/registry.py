"""The seam between training and serving: the MLflow model registry.

Training logs a :class:`~leadscore.artifact.LeadModel` as an MLflow pyfunc (so data scientists
can ``mlflow.pyfunc.load_model`` it) and registers it as ``leadscore-<model>``; serving and batch
resolve an alias (``@champion``) to a version and load the same artifact files. Aliases, not
stages: stages are deprecated in MLflow 3.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leadscore.artifact import LeadModel, find_artifact_dir

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREFIX = "leadscore-"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


_configured: str | None = None
_initialised: set[str] = set()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _initialise_store(uri: str) -> None:
    """Create a SQLite store's schema under an exclusive lock beside the database file.

    MLflow builds the tables and runs its migrations the first time a process opens an empty
    store, without a lock: two trainings starting together on a new store both migrate and one
    fails (``duplicate column name``). Under the lock the first process builds the schema and
    the second finds it complete. Once per process per store.
    """
    db = _sqlite_path(uri)
    if db is None or uri in _initialised:
        return
    from mlflow import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            c = MlflowClient(tracking_uri=uri, registry_uri=uri)
            c.search_experiments(max_results=1)  # the tracking store's tables
            c.search_registered_models(max_results=1)  # the registry store's
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _initialised.add(uri)


def configure() -> None:
    """Point MLflow at the tracking store (creating a new SQLite store's schema once, under
    a lock); quiet its chatty loggers."""
    global _configured
    import mlflow
    import mlflow.tracking.fluent as fluent

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if _configured not in (None, uri) and hasattr(fluent, "_active_experiment_id"):
        # MLflow keeps the active experiment's id across a change of store, where it names
        # another experiment or none (a process that trains into two stores, the tests)
        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set_experiment exports it too
    _configured = uri
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _initialise_store(uri)


def client():
    from mlflow import MlflowClient

    configure()
    return MlflowClient()


def registered_name(model: str) -> str:
    return model if model.startswith(PREFIX) else f"{PREFIX}{model}"


def signature_frame(model: LeadModel, df: pd.DataFrame) -> pd.DataFrame:
    """MLflow signatures know no category type and break on integer columns with missing
    values: categories go as strings, every number as float."""
    out = model.frame(df)
    for f in model.categories:
        out[f] = out[f].astype("object").where(out[f].notna(), None)
    ints = [c for c in out.columns
            if c not in model.categories and pd.api.types.is_integer_dtype(out[c].dtype)]
    return out.astype(dict.fromkeys(ints, "float64")) if ints else out


def log_model(
    model: LeadModel, example: pd.DataFrame, registered_model: str | None
) -> tuple[str, str | None]:
    """Log the artifact under the active run as pyfunc ``model``; returns the model URI and
    the registered version (None when not registering)."""
    import mlflow
    from mlflow.models import infer_signature

    if mlflow.active_run() is None:  # a run will be started: in the store the env names now
        configure()
    example = signature_frame(model, example.head(5))
    signature = infer_signature(example, pd.DataFrame({"probability": [0.5] * len(example)}))
    with tempfile.TemporaryDirectory() as tmp:
        art = model.save(Path(tmp) / "leadmodel")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"leadmodel": str(art)},
            signature=signature,
            input_example=example,
            registered_model_name=registered_model,
            # explicit requirements: inferring them spawns a subprocess that costs ~10 s
            pip_requirements=_requirements(),
            code_paths=[str(Path(__file__).parent)],
        )
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, (str(version) if version is not None else None)


#: MLflow's limit on a description (the SQL stores' column)
_DESCRIPTION_CHARS = 5000


def describe(model: str, version: str, summary: str, card: str) -> None:
    """The registered model's description (what it predicts) and the version's (its model
    card, Markdown), so the registry UI says what a version is without opening its run."""
    c = client()
    name = registered_name(model)
    c.update_registered_model(name, description=summary[:_DESCRIPTION_CHARS])
    c.update_model_version(name, version, description=card[:_DESCRIPTION_CHARS])


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("lightgbm", "pandas", "numpy", "pyarrow")]


@dataclass
class Resolved:
    name: str
    version: str
    run_id: str
    alias: str


def resolve(model: str, alias: str = CHAMPION) -> Resolved | None:
    """Which version an alias points at, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    name = registered_name(model)
    try:
        mv = client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return Resolved(name=name, version=str(mv.version), run_id=mv.run_id, alias=alias)


def load_version(model: str, version: str, dst: Path | None = None) -> LeadModel:
    import mlflow

    configure()
    name = registered_name(model)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}",
        dst_path=str(dst) if dst else None,
    )
    lm = LeadModel.load(find_artifact_dir(Path(local)))
    lm.meta = {**lm.meta, "registered_name": name, "version": str(version)}
    return lm


def load(model: str, alias: str = CHAMPION) -> tuple[LeadModel, Resolved] | None:
    """The model an alias points at, or None if it is not registered (callers skip it)."""
    res = resolve(model, alias)
    if res is None:
        return None
    return load_version(model, res.version), res


def champions_features(models: Sequence[str]) -> list[str]:
    """The feature names of the ``models``' champions (none for a model without one)."""
    names: list[str] = []
    for model in models:
        got = load(model, CHAMPION)
        if got is not None:
            names += got[0].features
    return names


def champions_vocabulary(models: Sequence[str]) -> list[str]:
    """The vocabulary event types (features of their own, chosen at training) of the
    ``models``' champions: what a feature store they read must hold besides the catalogue."""
    from leadscore.features import catalog

    return catalog.vocabulary_of(champions_features(models))


def set_alias(model: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(registered_name(model), alias, str(version))


# -- who was champion when ---------------------------------------------------------------------
#: registered-model tag: JSON list of {version, from, until, reason[, rolled_back]}, oldest first
HISTORY_TAG = "champion_history"
#: model-version tags: when the version last became champion, and when it stopped
FROM_TAG = "champion_from"
UNTIL_TAG = "champion_until"
HISTORY_KEEP = 20
#: some MLflow stores hold a tag value in 5,000 characters
HISTORY_MAX_CHARS = 4500
REASON_MAX_CHARS = 160


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def champion_history(model: str) -> list[dict]:
    """The champion changes recorded for ``model``, oldest first (empty when none)."""
    import json

    from mlflow.exceptions import MlflowException

    try:
        rm = client().get_registered_model(registered_name(model))
    except MlflowException:
        return []
    raw = rm.tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        got = json.loads(raw)
    except ValueError:
        log.warning("%s: tag %s is not JSON; history starts again", rm.name, HISTORY_TAG)
        return []
    return [e for e in got if isinstance(e, dict) and "version" in e] if isinstance(got,
                                                                                    list) else []


def _synced(model: str, history: list[dict]) -> list[dict]:
    """The history with the current champion as its open last entry, also when the alias
    was moved outside :func:`make_champion` (by hand in the MLflow UI, an older registry)."""
    cur = resolve(model, CHAMPION)
    if cur is None:
        return history
    if history and history[-1]["version"] == cur.version and history[-1].get("until") is None:
        return history
    if history and history[-1].get("until") is None:
        history[-1]["until"] = _now()
    mv = client().get_model_version(registered_name(model), cur.version)
    history.append({"version": cur.version, "from": mv.tags.get(FROM_TAG), "until": None,
                    "reason": "set outside leadscore"})
    return history


def _write_history(name: str, history: list[dict]) -> None:
    import json

    history = history[-HISTORY_KEEP:]
    text = json.dumps(history, ensure_ascii=False)
    while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
        history = history[1:]
        text = json.dumps(history, ensure_ascii=False)
    client().set_registered_model_tag(name, HISTORY_TAG, text)


def make_champion(model: str, version: str, reason: str, *, rollback: bool = False) -> str | None:
    """Point ``@champion`` at ``version`` and record the change: the one way every champion
    change goes (first training, gate, by hand, rollback), so the history can be trusted.

    Sets ``champion_from`` on the new version and ``champion_until`` on the one it replaces,
    and appends to the registered model's ``champion_history`` (``rollback`` marks the replaced
    entry rolled back, so a later rollback passes over it). Returns the replaced version.
    """
    version = str(version)
    name = registered_name(model)
    c = client()
    history = _synced(model, champion_history(model))
    old = history[-1]["version"] if history and history[-1].get("until") is None else None
    if old == version:
        return old
    now = _now()
    c.set_registered_model_alias(name, CHAMPION, version)
    c.set_model_version_tag(name, version, FROM_TAG, now)
    if UNTIL_TAG in c.get_model_version(name, version).tags:  # champion again: open term
        c.delete_model_version_tag(name, version, UNTIL_TAG)
    if old is not None:
        c.set_model_version_tag(name, old, UNTIL_TAG, now)
        history[-1]["until"] = now
        if rollback:
            history[-1]["rolled_back"] = True
    history.append({"version": version, "from": now, "until": None,
                    "reason": reason if len(reason) <= REASON_MAX_CHARS
                    else reason[:REASON_MAX_CHARS - 1] + "…"})
    _write_history(name, history)
    log.info("%s: champion v%s (was %s): %s", name, version, f"v{old}" if old else "none",
             reason)
    return old


def rollback_target(model: str) -> tuple[str, str] | None:
    """(the current champion, the champion to go back to), or None when there is none.

    The target is the latest earlier champion other than the current one whose latest term
    did not end in a rollback: rolling back twice goes two champions back, not to and fro.
    """
    history = _synced(model, champion_history(model))
    if not history or history[-1].get("until") is not None:
        return None
    current = history[-1]["version"]
    seen = {current}
    for entry in reversed(history[:-1]):
        v = entry["version"]
        if v in seen:
            continue
        seen.add(v)
        if not entry.get("rolled_back") and version_exists(model, v):
            return current, v
    return None


def version_exists(model: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client().get_model_version(registered_name(model), version)
    except MlflowException:
        return False
    return True
