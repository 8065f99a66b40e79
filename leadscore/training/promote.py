"""Promotion: move ``champion`` only when the challenger wins on the same holdout."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leadscore import models, registry
from leadscore.training import evaluate


@dataclass
class Decision:
    promoted: bool
    champion_version: str | None
    challenger_version: str | None
    metric: str
    champion_value: float | None
    challenger_value: float | None
    reason: str


def _holdout(run_id: str) -> pd.DataFrame:
    import mlflow

    registry.configure()
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="holdout.parquet",
                                                   dst_path=tmp)
        return pd.read_parquet(Path(path))


_KEYS = ["lead_id", "as_of"]


def _predictions(model: str, res, holdout: pd.DataFrame, own: pd.DataFrame | None = None):
    """A version's probabilities on ``holdout`` (the challenger's), as honest as they can be.

    A registered model is refit on all its training data, holdout included, so it is not
    scored on its own run's holdout: that run's evaluation-fit predictions (``p_eval``) are
    used instead. The same goes for the champion when its run's holdout holds the very same
    rows (a new config on the same data). Otherwise the champion's registered model scores
    the rows; if it trained on them, it is flattered, and the gate errs towards keeping it.
    """
    if own is None:
        from mlflow.exceptions import MlflowException

        try:
            own = _holdout(res.run_id)
        except (MlflowException, OSError):  # a version logged without a holdout: score it
            own = None
    if own is not None and "p_eval" in own.columns and len(own) == len(holdout):
        keys = holdout[_KEYS].merge(own[[*_KEYS, "p_eval"]], on=_KEYS, how="left")
        if keys["p_eval"].notna().all():
            return keys["p_eval"].to_numpy()
    return registry.load_version(model, res.version).predict_proba(holdout)


def promote_version(model: str, version: str) -> Decision:
    """A data scientist's explicit choice: no gate, but recorded with the reason."""
    old = registry.resolve(model, registry.CHAMPION)
    registry.set_alias(model, registry.CHAMPION, version)
    return Decision(True, version, None, "manual", None, None,
                    f"version {version} set as champion by hand "
                    f"(was {old.version if old else 'none'})")


def promote_best(model: str) -> Decision:
    """Score the challenger's holdout with both versions and apply the spec's gate."""
    spec = models.get(model)
    gate = spec.gate
    champ = registry.resolve(model, registry.CHAMPION)
    chall = registry.resolve(model, registry.CHALLENGER)
    if chall is None:
        return Decision(False, champ.version if champ else None, None, gate.metric, None, None,
                        "no challenger registered: nothing to promote")
    if champ is None:
        registry.set_alias(model, registry.CHAMPION, chall.version)
        return Decision(True, chall.version, chall.version, gate.metric, None, None,
                        "no champion yet: the challenger becomes champion")
    if champ.version == chall.version:
        return Decision(False, champ.version, chall.version, gate.metric, None, None,
                        "challenger is already the champion")
    holdout = _holdout(chall.run_id)
    y = holdout["label"].to_numpy()
    vals = {res.version: evaluate.metrics(y, _predictions(
        model, res, holdout, holdout if res is chall else None))[gate.metric]
        for res in (champ, chall)}
    a, b = vals[champ.version], vals[chall.version]
    if gate.passes(b, a):
        registry.set_alias(model, registry.CHAMPION, chall.version)
        return Decision(True, chall.version, chall.version, gate.metric, a, b,
                        f"challenger v{chall.version} {gate.metric}={b:.4f} beats champion "
                        f"v{champ.version} {a:.4f} by ≥ {gate.min_gain} on the same holdout "
                        f"({len(y):,} rows): promoted")
    return Decision(False, champ.version, chall.version, gate.metric, a, b,
                    f"challenger v{chall.version} {gate.metric}={b:.4f} does not beat champion "
                    f"v{champ.version} {a:.4f} by the gate's {gate.min_gain} on the same "
                    f"holdout ({len(y):,} rows): champion kept")
