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
    vals = {}
    for res in (champ, chall):
        lm = registry.load_version(model, res.version)
        vals[res.version] = evaluate.metrics(y, lm.predict_proba(holdout))[gate.metric]
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
