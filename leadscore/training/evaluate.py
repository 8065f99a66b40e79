"""Holdout metrics: discrimination, calibration, ranking value, and the gap to the oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins, weighted by bin size."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / max(len(y), 1))


def ece_floor(p: np.ndarray, draws: int = 200, seed: int = 0, bins: int = 10) -> float:
    """The ECE a perfectly calibrated model would show on a holdout of this size: the mean
    ECE of outcomes drawn from ``p`` itself. A few hundred rows per bin leave a few points of
    ECE from chance alone; an ECE near this floor is as calibrated as the holdout can tell."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    return float(np.mean([ece(rng.random(len(p)) < p, p, bins) for _ in range(draws)]))


def top_decile(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(lift, capture rate) of the 10% highest scores: how much richer the top of the call
    list is than average, and what share of all positives it holds."""
    y = np.asarray(y, dtype=float)
    n_top = max(1, int(np.ceil(0.1 * len(y))))
    order = np.argsort(-np.asarray(p), kind="stable")[:n_top]
    base = y.mean()
    top = y[order].mean()
    lift = float(top / base) if base > 0 else float("nan")
    capture = float(y[order].sum() / y.sum()) if y.sum() > 0 else float("nan")
    return lift, capture


def _safe_auc(y, p) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    lift, capture = top_decile(y, p)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": _safe_auc(y, p),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": ece(y, p),
        "lift_top10": lift,
        "capture_top10": capture,
        "positive_rate": float(y.mean()),
        "mean_score": float(p.mean()),
        "n": float(len(y)),
    }


def by_group(frame: pd.DataFrame, p: np.ndarray, column: str) -> pd.DataFrame:
    """Per-dealer / per-source table: n, positives, positive rate, mean score, AUC."""
    df = pd.DataFrame({"g": frame[column].astype("object").fillna("(missing)").to_numpy(),
                       "y": frame["label"].to_numpy(), "p": p})
    rows = []
    for g, d in df.groupby("g", sort=True):
        rows.append({column: g, "n": len(d), "positives": int(d["y"].sum()),
                     "positive_rate": d["y"].mean(),
                     "mean_score": d["p"].mean(), "roc_auc": _safe_auc(d["y"], d["p"])})
    return pd.DataFrame(rows)


def oracle(frame: pd.DataFrame, truth: pd.DataFrame | None, column: str | None,
           p: np.ndarray) -> dict[str, float]:
    """AUC of the simulator's true probabilities on the same holdout rows, and the gap.

    Only for simulated data (a truth.parquet beside the inputs); on real data this is empty.
    """
    if truth is None or column is None or column not in truth.columns:
        return {}
    t = truth[["lead_id", "as_of", column]].copy()
    t["as_of"] = pd.to_datetime(t["as_of"], utc=True)
    keys = frame[["lead_id", "as_of", "label"]].assign(_p=p, _i=np.arange(len(frame)))
    m = keys.merge(t, on=["lead_id", "as_of"], how="inner")
    if len(m) < 50 or m["label"].nunique() < 2:
        return {}
    model_auc = _safe_auc(m["label"], m["_p"])
    oracle_auc = _safe_auc(m["label"], m[column])
    return {
        "oracle_auc": oracle_auc,
        "model_auc_on_truth_rows": model_auc,
        "oracle_gap": oracle_auc - model_auc,
        "oracle_ece": ece(m["label"].to_numpy(), m[column].to_numpy()),
        "truth_coverage": len(m) / len(frame),
    }


#: bootstrap resamples of the leads, and the share of them a challenger must win to replace
#: the default (``btyd.use: auto``, a horizon's ranking)
RESAMPLES = 200
CLEAR_WIN = 0.9


def win_share(y: np.ndarray, challenger: np.ndarray, default: np.ndarray, leads,
              seed: int = 0, resamples: int = RESAMPLES) -> float:
    """The share of bootstrap resamples of the leads (a lead's rows drawn together) in
    which ``challenger`` ranks ``y`` better than ``default`` (a higher ROC AUC; a resample
    of one class is no win). On few held-out leads an AUC difference is mostly noise, so a
    run keeps its default unless the challenger wins clearly (:data:`CLEAR_WIN`)."""
    y = np.asarray(y)
    codes, uniq = pd.factorize(pd.Series(leads))
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))[codes]
        on = w > 0
        if y[on].min() == y[on].max():
            continue
        wins += roc_auc_score(y[on], challenger[on], sample_weight=w[on]) > \
            roc_auc_score(y[on], default[on], sample_weight=w[on])
    return wins / resamples
