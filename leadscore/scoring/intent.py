"""Time to order and the intent grade (H/A/B/C/N) an advisor works the list by.

Chinese dealers grade leads by when they expect the purchase: H within about 7 days, A within
about 15, B within a month, C within about 3 months, N not soon. The grade here comes from the
calibrated P(order within 7/15/30/90 days): H when P(7d) reaches its threshold, else A when
P(15d) does, and so on. Default thresholds are chosen at training (score quantiles on held-out
leads, stored in each horizon model's artifact, see :func:`choose_threshold`); a dealer may
override them in a YAML file read only at the edges (CLI, service start) and passed into the
scorer, like the contact rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: horizon (days) → the time-to-order model that predicts it (30 days: the conversion model)
HORIZON_MODELS = {7: "order-7d", 15: "order-15d", 30: "conversion", 90: "order-90d"}
#: horizon → output column; ``p_order_30d`` is ``p_convert`` itself
ORDER_COLUMNS = {d: f"p_order_{d}d" for d in HORIZON_MODELS}
#: grade given when a lead's P(order within the horizon) reaches the horizon's threshold
GRADE_OF = {7: "H", 15: "A", 30: "B", 90: "C"}
GRADES = ("H", "A", "B", "C", "N")
#: default shares of open leads at or above each horizon's threshold, cumulative: about H 2.5%,
#: A the next 5%, B the next 10%, C the next 25%; N the rest (57.5%)
TOP_SHARE = {7: 0.025, 15: 0.075, 30: 0.175, 90: 0.425}
#: where an artifact keeps its horizon's default threshold (:attr:`LeadModel.meta`)
META_KEY = "intent_threshold"
RULES_ENV = "LEADSCORE_INTENT_GRADES"


def monotone(q: Mapping[int, np.ndarray | None]) -> dict[int, np.ndarray | None]:
    """P(order within h) for h = 7, 15, 30, 90 from the per-horizon models' probabilities,
    non-decreasing in h by construction: the 30-day one untouched (it is ``p_convert``),
    running minima below it, a maximum above it. A missing horizon (model not deployed) stays
    None and is skipped by the chain."""
    out: dict[int, np.ndarray | None] = {d: None for d in HORIZON_MODELS}
    q30 = q.get(30)
    out[30] = None if q30 is None else np.asarray(q30, dtype=float)
    upper = out[30]
    for d in (15, 7):
        v = q.get(d)
        if v is not None:
            v = np.asarray(v, dtype=float)
            upper = v if upper is None else np.fmin(v, upper)
            out[d] = upper
    q90 = q.get(90)
    if q90 is not None:
        q90 = np.asarray(q90, dtype=float)
        out[90] = q90 if out[30] is None else np.fmax(q90, out[30])
    return out


#: where the conversion (30-day) artifact keeps the four thresholds chosen together
JOINT_KEY = "intent_thresholds"


def _cut(p: np.ndarray, want: float) -> float:
    """The observed score whose count of rows at or above it is closest to ``want``:
    isotonic calibration gives plateaus of tied scores, which one threshold cannot split."""
    p = p[~np.isnan(p)]
    if not len(p) or want <= 0:
        return 1.0 if not len(p) else float(min(np.nextafter(p.max(), np.inf), 1.0))
    v, counts = np.unique(p, return_counts=True)
    at_or_above = np.cumsum(counts[::-1])[::-1]  # rows >= v[i]
    return float(v[np.argmin(np.abs(at_or_above - want))])


def choose_threshold(p: np.ndarray, days: int, share: float | None = None) -> float:
    """A horizon's threshold from its own scores alone: about ``share`` (cumulative, see
    :data:`TOP_SHARE`) of the held-out open leads reach it."""
    share = TOP_SHARE[days] if share is None else share
    p = np.asarray(p, dtype=float)
    if np.isnan(p).all():
        raise ValueError(f"no held-out scores to choose the {days}-day threshold on")
    return _cut(p, share * np.count_nonzero(~np.isnan(p)))


def choose_thresholds(p: Mapping[int, np.ndarray]) -> dict[int, float]:
    """The four thresholds chosen together on the same held-out leads (``p``: the
    monotone-corrected probabilities): in grade order, each takes the next leads up to its
    cumulative share of :data:`TOP_SHARE` among those not graded yet, so the grades' shares
    come out near 2.5/5/10/25% whatever the overlap of the horizons' rankings."""
    n = len(p[30])
    done = np.zeros(n, dtype=bool)
    out = {}
    for d in (7, 15, 30, 90):
        v = np.asarray(p[d], dtype=float)
        t = _cut(np.where(done, np.nan, v), TOP_SHARE[d] * n - done.sum())
        out[d] = t
        done |= v >= t
    return out


def threshold_meta(p: np.ndarray, days: int) -> dict:
    return {"days": days, "top_share": TOP_SHARE[days], "threshold": choose_threshold(p, days),
            "chosen_on": "the evaluation fit's calibrated scores of the holdout's open leads"}


def model_thresholds(models: Mapping) -> dict[int, float | None]:
    """Per horizon, the default threshold of deployed models (``models``: name →
    LeadModel): the four chosen together with the 30-day model when it has them, else each
    model's own; None for a horizon without a model."""
    conv = models.get(HORIZON_MODELS[30])
    joint = (conv.meta.get(JOINT_KEY) or {}) if conv is not None else {}
    out: dict[int, float | None] = {}
    for d, name in HORIZON_MODELS.items():
        m = models.get(name)
        if m is None:
            out[d] = None
        elif str(d) in joint:
            out[d] = float(joint[str(d)])
        else:
            out[d] = (m.meta.get(META_KEY) or {}).get("threshold")
    return out


class RulesError(ValueError):
    """An intent-grade file that cannot be read or does not validate (names the file)."""


class Thresholds(BaseModel):
    """Per horizon, the P(order within it) from which a lead gets its grade; unset: the next
    level's (the file's ``default``, then the models')."""

    model_config = ConfigDict(extra="forbid")
    t7: float | None = Field(None, ge=0, le=1)
    t15: float | None = Field(None, ge=0, le=1)
    t30: float | None = Field(None, ge=0, le=1)
    t90: float | None = Field(None, ge=0, le=1)

    def get(self, days: int) -> float | None:
        return getattr(self, f"t{days}")


class IntentRules(BaseModel):
    """``default`` thresholds for every dealer and ``dealers``' own, over the models'."""

    model_config = ConfigDict(extra="forbid")
    default: Thresholds = Field(default_factory=Thresholds)
    dealers: dict[str, Thresholds] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> IntentRules:
        """The rules in the YAML file ``path``; none (the models' thresholds) when None."""
        if path is None:
            return cls()
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
        except ValidationError as e:
            fields = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
                               for err in e.errors())
            raise RulesError(f"{path}: intent grades: {fields}") from e
        except (OSError, yaml.YAMLError) as e:
            raise RulesError(f"{path}: intent grades: {e}") from e

    def thresholds(self, dealer_id: str, models: Mapping[int, float | None]) -> dict:
        """Per horizon, the dealer's threshold: its own, else the file's default, else the
        model's (None: that horizon gives no grade)."""
        own = self.dealers.get(dealer_id)
        out = {}
        for d in HORIZON_MODELS:
            t = own.get(d) if own is not None else None
            if t is None:
                t = self.default.get(d)
            out[d] = models.get(d) if t is None else t
        return out


def rules_path_from_env() -> Path | None:
    """The file named by ``LEADSCORE_INTENT_GRADES``, if any (the edges only call this)."""
    value = os.environ.get(RULES_ENV, "").strip()
    return Path(value) if value else None


def grade(p: Mapping[int, np.ndarray | None], dealer_ids: Sequence[str],
          rules: IntentRules, models: Mapping[int, float | None]) -> np.ndarray:
    """``intent_grade`` per row: the first of H/A/B/C whose horizon's probability reaches its
    threshold, else N. A horizon without a model or a threshold is skipped (a deployment of
    the 30-day model alone grades B or N); without the 30-day probability, or without any
    horizon that has a threshold, the grade is None (not N: nothing was graded)."""
    n = len(dealer_ids)
    out = np.full(n, None, dtype=object)
    if p.get(30) is None:
        return out
    dealers = pd.Series(np.asarray(dealer_ids, dtype=object))
    for dealer in dealers.unique():
        rows = np.flatnonzero((dealers == dealer).to_numpy())
        t = rules.thresholds(str(dealer), models)
        if all(p.get(d) is None or t[d] is None for d in HORIZON_MODELS):
            continue
        g = np.full(len(rows), "N", dtype=object)
        done = np.zeros(len(rows), dtype=bool)
        for d in (7, 15, 30, 90):
            v = p.get(d)
            if v is None or t[d] is None:
                continue
            hit = ~done & (np.asarray(v)[rows] >= t[d])
            g[hit] = GRADE_OF[d]
            done |= hit
        g[np.isnan(np.asarray(p[30], dtype=float)[rows])] = None
        out[rows] = g
    return out


def grade_table(grades: np.ndarray, labels: Mapping[int, np.ndarray]) -> pd.DataFrame:
    """Per grade: leads, share, and the realised order rate within each horizon (``labels``:
    0/1 with NaN where the window is not observed; a rate counts observed rows only)."""
    g = pd.Series(np.asarray(grades, dtype=object))
    rows = []
    for name in GRADES:
        m = (g == name).to_numpy()
        row = {"grade": name, "n": int(m.sum()), "share": float(m.mean()) if len(m) else 0.0}
        for d in sorted(labels):
            y = np.asarray(labels[d], dtype=float)[m]
            y = y[~np.isnan(y)]
            row[f"rate_{d}d"] = float(y.mean()) if len(y) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def ordered(table: pd.DataFrame, column: str = "rate_30d", min_leads: int = 50) -> bool:
    """Whether ``column`` strictly decreases H > A > B > C > N over grades with at least
    ``min_leads`` leads (the issue's goal)."""
    rates = table.loc[table["n"] >= min_leads, column].to_numpy()
    return bool(np.all(np.diff(rates) < 0))
