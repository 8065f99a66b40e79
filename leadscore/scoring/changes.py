"""What changed since the previous night: ``score_delta``, ``trend`` and ``changes``.

The nightly job (:mod:`leadscore.nightly.previous`) hands this module tonight's scored rows,
the previous run's written scores, and the conversion model's features at both cutoffs; the
Scorer itself knows nothing about previous runs. ``score_delta`` is exactly the difference of
the two written ``lead_score`` values; ``changes`` explain it in the model's view: both nights'
features go through tonight's model and the per-feature contribution changes (raw margin) are
turned into lead-score points, so a lead's changes are comparable to its delta.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pandas as pd

from leadscore.artifact import LeadModel
from leadscore.features import catalog
from leadscore.scoring.scorer import plain_value

#: |score_delta| at or above this (lead-score points) is ``rising``/``falling``, below it
#: ``steady``: smaller moves are within what a night's rounding and noise make of a steady lead
TREND_POINTS = 3
#: changes kept per lead, and the smallest |points| a change needs to be shown
TOP_CHANGES = 3
MIN_POINTS = 1.0
#: rows with |score_delta| below this get no changes computed: the leads the trend calls
#: ``steady``, whose move is rounding and noise; explaining it would name a feature as the
#: cause of noise (and cost a night ten times the contributions)
EXPLAIN_FROM = TREND_POINTS
#: the model whose score ``lead_score`` is
MODEL = "conversion"


def trend(delta: pd.Series) -> pd.Series:
    """``rising``/``steady``/``falling`` by :data:`TREND_POINTS`; ``new`` where the delta is
    missing (no previous score)."""
    d = pd.array(delta, dtype="Int64").to_numpy(dtype="float64", na_value=np.nan)
    out = np.where(d >= TREND_POINTS, "rising", np.where(d <= -TREND_POINTS, "falling",
                                                         "steady")).astype(object)
    out[np.isnan(d)] = "new"
    out = pd.array(out, dtype="string")
    return pd.Series(out, index=getattr(delta, "index", None))


def _spec(feature: str) -> str:
    """The format spec the feature's template gives ``value`` (so "was" reads as tonight's)."""
    for _, field, spec, _ in string.Formatter().parse(catalog.feature(feature).says):
        if field == "value":
            return spec or ""
    return ""


def _fmt(feature: str, value, lang: str = "en") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "none" if lang == "en" else "无"
    if isinstance(value, (int, float)):
        try:
            return format(float(value) + 0.0, _spec(feature))
        except ValueError:
            return f"{value:g}"
    return str(value)


def _fmt_points(points: float) -> str:
    return f"{round(points):+d}" if abs(points) >= 1 else f"{points:+.1f}"


def change_sentence(feature: str, value, previous, points: float, lang: str = "en") -> str:
    """One change as an advisor reads it: what the feature says tonight, what it was, and the
    lead-score points it moved. The one place change sentences are written (``lang`` picks the
    feature's templates in that language: the reasons' own words)."""
    feat = catalog.feature(feature)
    # a missing value that says nothing as a reason still moved the score: name the feature
    said = feat.sentence(value, lang) or f"{feature}: {_fmt(feature, value, lang)}"
    if lang == "zh-CN":
        return f"{said}（之前 {_fmt(feature, previous, lang)}）：{_fmt_points(points)}"
    return f"{said} (was {_fmt(feature, previous, lang)}): {_fmt_points(points)}"


def _values(model: LeadModel, x: np.ndarray, feats: pd.DataFrame, i: int, j: int):
    if model.categorical_mask[j]:
        return plain_value(feats[model.features[j]].iloc[i])
    return plain_value(x[i, j])


def explain(model: LeadModel, tonight: pd.DataFrame, previous: pd.DataFrame,
            top: int = TOP_CHANGES, lang: str = "en", num_threads: int = 1,
            min_points: float = MIN_POINTS) -> list[list[dict]]:
    """Per row of ``tonight`` (features) and the same lead's row of ``previous`` (features at
    the previous cutoff, aligned row for row), the ``top`` contribution changes that moved the
    score most, in lead-score points (largest |points| first, each at least ``min_points``;
    when none is, the largest one, so a moved score is never unexplained).

    Margin changes become points by the row's own ratio of probability to margin change
    (``100·Δp / Δmargin``), or the calibrator's local slope when the margin barely moved."""
    n = len(tonight)
    if not n:
        return []
    xt, xp = model.matrix(tonight), model.matrix(previous)
    ct = model.contributions(xt, num_threads=num_threads)
    cp = model.contributions(xp, num_threads=num_threads)
    rt, rp = ct.sum(axis=1), cp.sum(axis=1)
    pt, pp = model.calibrator(rt), model.calibrator(rp)
    dr = rt - rp
    eps = 1e-4
    slope = 100 * (model.calibrator(rt + eps) - model.calibrator(rt - eps)) / (2 * eps)
    small = np.abs(dr) < 1e-9
    scale = np.where(small, slope, 100 * (pt - pp) / np.where(small, 1.0, dr))
    points = (ct[:, :-1] - cp[:, :-1]) * scale[:, None]
    k = min(top, points.shape[1])
    order = np.argsort(-np.abs(points), axis=1, kind="stable")[:, :k]
    feats = model.features
    out: list[list[dict]] = []
    tonight = tonight.reset_index(drop=True)
    previous = previous.reset_index(drop=True)
    for i in range(n):
        picked = [j for j in order[i].tolist() if abs(points[i, j]) >= min_points]
        if not picked and points[i, order[i, 0]] != 0:
            picked = [int(order[i, 0])]
        row = []
        for j in picked:
            v, pv = _values(model, xt, tonight, i, j), _values(model, xp, previous, i, j)
            pts = round(float(points[i, j]), 2)
            row.append({"feature": feats[j], "value": v, "previous": pv, "points": pts,
                        "sentence": change_sentence(feats[j], v, pv, pts, lang)})
        out.append(row)
    return out


def compare(scored: pd.DataFrame, prev_scores: pd.Series | None,
            features_at_previous=None, tonight_features=None,
            model: LeadModel | None = None, lang: str = "en", num_threads: int = 1
            ) -> pd.DataFrame:
    """``score_delta``, ``trend`` and ``changes`` (JSON text) for tonight's ``scored`` rows.

    ``prev_scores``: the previous run's ``lead_score`` by ``lead_id`` (None: no previous run).
    ``features_at_previous(lead_ids)`` and ``tonight_features(lead_ids)`` give the feature
    rows (with ``lead_id``) of those leads at the previous cutoff and tonight's, called once
    each and only for the rows whose score moved by at least :data:`EXPLAIN_FROM`. Rows
    without a lead score tonight (owners scored for churn only) get nulls."""
    n = len(scored)
    score = pd.array(scored["lead_score"], dtype="Int64")
    has = ~pd.isna(score)
    if prev_scores is None:
        before = pd.array([pd.NA] * n, dtype="Int64")
    else:
        before = pd.array(prev_scores.reindex(scored["lead_id"].astype(str)).to_numpy(),
                          dtype="Int64")
    delta = score - before
    tr = trend(pd.Series(delta))
    tr[~has] = pd.NA
    changes = np.full(n, "[]", dtype=object)
    changes[~has] = None
    d = delta.to_numpy(dtype="float64", na_value=np.nan)
    need = np.flatnonzero(np.abs(np.nan_to_num(d)) >= EXPLAIN_FROM)
    if len(need) and model is not None and features_at_previous is not None:
        ids = scored["lead_id"].astype(str).to_numpy()[need]
        prev, tf = features_at_previous(ids), tonight_features(ids)
        at_prev, at_tonight = _positions(prev, ids), _positions(tf, ids)
        found = (at_prev >= 0) & (at_tonight >= 0)  # a lead without features then: no changes
        if found.any():
            need = need[found]
            rows = explain(model, tf.iloc[at_tonight[found]].reset_index(drop=True),
                           prev.iloc[at_prev[found]].reset_index(drop=True), lang=lang,
                           num_threads=num_threads)
            for i, row in zip(need.tolist(), rows, strict=True):
                changes[i] = json.dumps(row, ensure_ascii=False)
    return pd.DataFrame({"score_delta": pd.Series(delta, dtype="Int64").to_numpy(),
                         "trend": tr.to_numpy(), "changes": changes}, index=scored.index)


def _positions(frame: pd.DataFrame | None, ids: np.ndarray) -> np.ndarray:
    """Row positions in ``frame`` of each id (its first row), -1 where it has none."""
    if frame is None or not len(frame):
        return np.full(len(ids), -1, dtype=np.intp)
    lead = pd.Index(frame["lead_id"].astype(str).to_numpy())
    first = ~lead.duplicated()
    pos = np.flatnonzero(first)
    return np.where((got := lead[first].get_indexer(ids)) >= 0, pos[got], -1)


def as_sentences(changes_json: str | None) -> str:
    """``changes`` JSON → "sentence; sentence" (the CSV, like the reasons)."""
    if not changes_json:
        return ""
    return "; ".join(c["sentence"] for c in json.loads(changes_json))

