"""Promotion: move ``champion`` only when the challenger wins on the same holdout, overall
and for every dealer with enough positives to tell; every change is recorded in the registry
(:func:`leadscore.registry.make_champion`) so it can be rolled back."""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import models, registry
from leadscore.models.spec import DealerGate, Gate
from leadscore.training import evaluate

log = logging.getLogger(__name__)

#: the challenger run's artifact that says what promotion decided and why
DECISION_FILE = "promotion.json"


class PromotionError(ValueError):
    """A promotion that cannot be done as asked (no such version, nothing to roll back to)."""


@dataclass
class Decision:
    promoted: bool
    champion_version: str | None
    challenger_version: str | None
    metric: str
    champion_value: float | None
    challenger_value: float | None
    reason: str
    #: per dealer on the same holdout: dealer_id, n, positives, champion_auc, challenger_auc,
    #: change (challenger - champion) and status: "ok", "blocks" or "not judged"
    dealers: list[dict] = field(default_factory=list)
    challenger_run_id: str | None = None

    @property
    def blocked_by(self) -> list[dict]:
        return [d for d in self.dealers if d["status"] == "blocks"]

    def as_dict(self) -> dict:
        return {**asdict(self), "decision": "promoted" if self.promoted else "kept",
                "blocked_by": [d["dealer_id"] for d in self.blocked_by]}


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


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def dealer_table(holdout: pd.DataFrame, p_champion: np.ndarray, p_challenger: np.ndarray,
                 dealer_gate: DealerGate) -> list[dict]:
    """Both versions' AUC per dealer on the same rows, each dealer marked ``blocks`` (enough
    positives and a drop beyond the tolerance), ``ok`` or ``not judged`` (too few positives,
    or one class only: no AUC)."""
    a = evaluate.by_group(holdout, p_champion, "dealer_id")
    b = evaluate.by_group(holdout, p_challenger, "dealer_id")
    rows = []
    for (_, ra), (_, rb) in zip(a.iterrows(), b.iterrows(), strict=True):
        champ, chall = _num(ra["roc_auc"]), _num(rb["roc_auc"])
        pos = int(ra["positives"])
        if champ is None or chall is None or not dealer_gate.judged(pos):
            status = "not judged"
        else:
            status = "blocks" if dealer_gate.blocks(chall, champ) else "ok"
        rows.append({"dealer_id": str(ra["dealer_id"]), "n": int(ra["n"]), "positives": pos,
                     "champion_auc": champ, "challenger_auc": chall,
                     "change": None if champ is None or chall is None else chall - champ,
                     "status": status})
    return rows


def _dealer_line(d: dict) -> str:
    return (f"dealer {d['dealer_id']}: AUC {d['challenger_auc']:.3f} vs champion "
            f"{d['champion_auc']:.3f} ({d['change']:+.3f}, {d['positives']} positives)")


def _not_judged(dealers: list[dict]) -> str:
    out = [f"{d['dealer_id']} ({d['positives']} positives)" for d in dealers
           if d["status"] == "not judged"]
    return f"; not judged: {', '.join(out)}" if out else ""


def judge(holdout: pd.DataFrame, p_champion: np.ndarray, p_challenger: np.ndarray, gate: Gate,
          dealer_gate: DealerGate, champion_version: str, challenger_version: str) -> Decision:
    """The gate on one holdout, without touching the registry: the overall metric first,
    then every dealer with enough positives (a gain overall must not be paid by one dealer)."""
    y = holdout["label"].to_numpy()
    a = evaluate.metrics(y, p_champion)[gate.metric]
    b = evaluate.metrics(y, p_challenger)[gate.metric]
    dealers = dealer_table(holdout, p_champion, p_challenger, dealer_gate)
    head = f"challenger v{challenger_version} {gate.metric}={b:.4f}"
    rows = f"on the same holdout ({len(y):,} rows)"

    def decision(promoted: bool, reason: str) -> Decision:
        return Decision(promoted, champion_version if not promoted else challenger_version,
                        challenger_version, gate.metric, a, b, reason + _not_judged(dealers),
                        dealers)

    if not gate.passes(b, a):
        return decision(False, f"{head} does not beat champion v{champion_version} {a:.4f} by "
                               f"the gate's {gate.min_gain} {rows}: champion kept")
    worse = [d for d in dealers if d["status"] == "blocks"]
    if worse:
        return decision(False, f"{head} beats champion v{champion_version} {a:.4f} {rows} but "
                               f"is worse beyond the tolerance {dealer_gate.tolerance:g} for "
                               f"{len(worse)} dealer(s) with {dealer_gate.min_positives}+ "
                               f"positives: {'; '.join(_dealer_line(d) for d in worse)}: "
                               f"champion kept")
    return decision(True, f"{head} beats champion v{champion_version} {a:.4f} by ≥ "
                          f"{gate.min_gain} {rows}, and no dealer with "
                          f"{dealer_gate.min_positives}+ positives loses more than "
                          f"{dealer_gate.tolerance:g} AUC: promoted")


def promote_version(model: str, version: str) -> Decision:
    """A data scientist's explicit choice: no gate, but recorded with the reason."""
    if not registry.version_exists(model, str(version)):
        raise PromotionError(f"{registry.registered_name(model)} has no version {version}")
    old = registry.resolve(model, registry.CHAMPION)
    reason = (f"version {version} set as champion by hand "
              f"(was {old.version if old else 'none'})")
    registry.make_champion(model, version, reason)
    return Decision(True, version, None, "manual", None, None, reason)


def rollback(model: str) -> Decision:
    """Back to the champion before the current one, from the registry's history; the
    current one's term is marked rolled back, so rolling back again goes further back."""
    got = registry.rollback_target(model)
    if got is None:
        raise PromotionError(f"{registry.registered_name(model)}: no earlier champion in the "
                             f"history ({registry.HISTORY_TAG}) to roll back to")
    current, target = got
    reason = f"rollback: version {target} champion again (was {current})"
    registry.make_champion(model, target, reason, rollback=True)
    return Decision(True, target, None, "rollback", None, None, reason)


def record(decision: Decision) -> None:
    """What the gate decided and why, on the challenger's run: tags and ``promotion.json``."""
    if decision.challenger_run_id is None:
        return
    c = registry.client()
    run = decision.challenger_run_id
    c.set_tag(run, "promotion.decision", "promoted" if decision.promoted else "kept")
    c.set_tag(run, "promotion.reason", decision.reason[:5000])
    c.set_tag(run, "promotion.blocked_by",
              ",".join(d["dealer_id"] for d in decision.blocked_by) or "-")
    c.log_dict(run, decision.as_dict(), DECISION_FILE)


def promote_best(model: str, dealer_gate: DealerGate | None = None,
                 *, min_positives: int | None = None,
                 tolerance: float | None = None) -> Decision:
    """Score the challenger's holdout with both versions and apply the spec's gates (the
    dealer gate's defaults are the spec's; ``min_positives``/``tolerance`` override them)."""
    spec = models.get(model)
    gate = spec.gate
    dg = dealer_gate or spec.dealer_gate
    if min_positives is not None:
        dg = replace(dg, min_positives=min_positives)
    if tolerance is not None:
        dg = replace(dg, tolerance=tolerance)
    champ = registry.resolve(model, registry.CHAMPION)
    chall = registry.resolve(model, registry.CHALLENGER)
    if chall is None:
        return Decision(False, champ.version if champ else None, None, gate.metric, None, None,
                        "no challenger registered: nothing to promote")
    if champ is None:
        reason = "no champion yet: the challenger becomes champion"
        registry.make_champion(model, chall.version, reason)
        d = Decision(True, chall.version, chall.version, gate.metric, None, None, reason,
                     challenger_run_id=chall.run_id)
        record(d)
        return d
    if champ.version == chall.version:
        return Decision(False, champ.version, chall.version, gate.metric, None, None,
                        "challenger is already the champion")
    holdout = _holdout(chall.run_id)
    p = {res.version: _predictions(model, res, holdout, holdout if res is chall else None)
         for res in (champ, chall)}
    d = judge(holdout, p[champ.version], p[chall.version], gate, dg, champ.version,
              chall.version)
    d.challenger_run_id = chall.run_id
    if d.promoted:  # the history keeps a short reason; the run has the whole one
        registry.make_champion(model, chall.version,
                               f"gate: {gate.metric} {d.challenger_value:.4f} vs champion "
                               f"v{champ.version} {d.champion_value:.4f}, no dealer with "
                               f"{dg.min_positives}+ positives down > {dg.tolerance:g}")
    record(d)
    return d
