"""Drift against the training reference: the binning and the population stability index
shared by training (which stores the reference with the model) and the nightly job (which
counts tonight's rows into the same bins).

Why histograms and numpy, not Evidently: Evidently compares two raw datasets, so every
model would have to ship its training rows (lead-level data, in the registry) and each night
would hold all of tonight's rows in one frame. A reference of bin edges and shares is a few
kilobytes in the artifact's metadata, and tonight's bin counts add up bucket by bucket, so
the job needs no second pass and its memory is bins x features. The maths is a few lines:

- numeric feature: up to ``BINS`` quantile bins of the training rows' non-missing values
  (equal edges merged; a value equal to an edge goes to the bin above it) plus a missing bin;
- categorical feature: one bin per training level, one for levels never seen in training
  ("unseen") and one for missing;
- the score: ``BINS`` quantile bins of the calibrated probability.

PSI (Siddiqi, *Credit Risk Scorecards*, 2006; Yurdakul, *Statistical properties of the
population stability index*, 2018) is ``sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins,
``e`` the training shares and ``a`` tonight's, each floored at ``EPS`` so that an empty bin
on either side counts as a rare one rather than an infinite drift. Usual reading: below 0.1
stable, 0.1-0.25 a moderate shift, 0.25 and above a shift to act on (``DEFAULT_ALERT``).

Segments: a shift in one lead source or one dealer is diluted by the others in the
population's PSI, so the reference also keeps, per value of each of ``SEGMENTS`` with enough
training rows, the shares of its rows in the population's bins (the same bins, so the
segments' counts add up to the population's), and ``compare`` reports and alerts per segment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: where the reference lives in the artifact's metadata (:attr:`LeadModel.meta`)
REFERENCE_KEY = "drift_reference"
#: 2: with ``segments`` (version 1 references have none and are compared without them)
REFERENCE_VERSION = 2
#: quantile bins of a numeric feature and of the score
BINS = 10
#: floor of a bin's share in the PSI: an empty bin reads as a rare one
EPS = 1e-4
#: PSI at or above which a feature (or the score) is an alert
DEFAULT_ALERT = 0.25
#: the populations a reference can be compared with tonight's rows: models trained on other
#: rows (the slot model: logged contact attempts) describe another population than the
#: open leads the job scores
NIGHTLY_POPULATIONS = ("open", "open_or_owner")
#: columns whose values are segments, each compared with its own training rows
SEGMENTS = ("source", "dealer_id")
#: rows a segment value needs, in training and tonight, to be compared: a segment's PSI
#: grows with its bins over its rows by chance alone (about bins / rows), so smaller
#: segments would raise alerts on noise
MIN_SEGMENT_ROWS = 500
#: distinct leads a segment value needs in training (whose rows repeat each lead at every
#: cutoff it was open): with 250 on each side, a PSI over 12 bins reaches the alert by chance
#: about once in a thousand (PSI ~ (1/n + 1/m) chi2 with 11 degrees of freedom, Yurdakul
#: 2018; its 0.999 quantile is 31.3, and 31.3 * 2 / 250 = 0.25)
MIN_SEGMENT_LEADS = 250
#: segment values kept per segment column (the largest), so the reference stays small
MAX_SEGMENT_VALUES = 30
#: share of a segment's change the population must show for the segment's PSI to be an
#: alert (see ``_segments``): 1 when the segment alone moved, about 0 when others offset it
SEGMENT_FOLLOWS = 0.75


def numeric_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Interior quantile edges of the non-missing ``values`` (equal ones merged), rounded
    to 6 significant digits: the stored edges are the ones counted against, everywhere."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return []
    # observed values as edges (no interpolation): a count's bins stay whole counts
    q = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    return sorted({float(f"{e:.6g}") for e in q.tolist() if math.isfinite(e)})


def as_float(col) -> np.ndarray:
    """A column as float64 numbers, missing as NaN (what the model's matrix makes of it)."""
    if isinstance(col, np.ndarray) and col.dtype == np.float64:
        return col
    s = pd.Series(col) if not isinstance(col, pd.Series) else col
    if pd.api.types.is_numeric_dtype(s.dtype) and not isinstance(s.dtype, pd.CategoricalDtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(s, errors="coerce").astype("float64").to_numpy()


def numeric_bins(x: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Per row, its bin: 0..len(edges) by value, len(edges) + 1 when missing (uint8).
    A sum of comparisons: for the few edges of a bin set, several times faster than
    ``searchsorted``."""
    k = len(edges)
    if k == 0:
        idx = np.zeros(len(x), dtype=np.uint8)
    else:
        idx = (x >= edges[0]).view(np.uint8).copy()
        for e in edges[1:]:
            idx += (x >= e).view(np.uint8)
    idx[np.isnan(x)] = k + 1
    return idx


def categorical_bins(col, levels: Sequence[str]) -> np.ndarray:
    """Per row, its bin: the training level's position, len(levels) for a level never seen
    in training, len(levels) + 1 when missing."""
    s = col if isinstance(col, pd.Series) else pd.Series(col)
    obj = s.astype("object")
    missing = obj.isna().to_numpy()
    codes = pd.Categorical(obj.where(~missing, None), categories=list(levels)).codes
    idx = np.where(codes >= 0, codes, len(levels)).astype(np.int64)
    idx[missing] = len(levels) + 1
    return idx


def n_bins(spec: Mapping) -> int:
    """Bins of a stored feature (or score) reference: values, then unseen (categorical), then
    missing."""
    return len(spec["levels"]) + 2 if "levels" in spec else len(spec["edges"]) + 2


def bins_of(col, spec: Mapping) -> np.ndarray:
    """The bins of ``col``'s rows under a stored reference entry."""
    if "levels" in spec:
        return categorical_bins(col, spec["levels"])
    return numeric_bins(as_float(col), spec["edges"])


def shares(counts: np.ndarray) -> list[float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return [0.0] * len(counts)
    return [round(float(c), 6) for c in counts / total]


def psi(expected: Sequence[float], actual_counts: Sequence[float]) -> float:
    """Population stability index of tonight's bin counts against the training shares
    (module docstring); NaN without rows tonight."""
    a = np.asarray(actual_counts, dtype=np.float64)
    if a.sum() <= 0:
        return math.nan
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(a / a.sum(), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def entry(col, *, levels: Sequence[str] | None = None,
          edges: Sequence[float] | None = None) -> dict:
    """A reference entry of one column: its bins and their shares over ``col``'s rows
    (categorical with ``levels``, else numeric with ``edges`` or the column's own quantile
    edges)."""
    if levels is not None:
        spec: dict = {"levels": [str(v) for v in levels]}
    else:
        x = as_float(col)
        spec = {"edges": list(edges) if edges is not None else numeric_edges(x)}
    counts = np.bincount(bins_of(col, spec), minlength=n_bins(spec))
    spec["shares"] = shares(counts)
    return spec


def segment_values(col, min_rows: int = MIN_SEGMENT_ROWS, cap: int = MAX_SEGMENT_VALUES,
                   leads=None) -> list[str]:
    """The values of a segment column (as text, missing left out) with at least
    ``min_rows`` rows, the ``cap`` largest (ties by value). ``leads``: each row's lead, when
    rows repeat leads (training pools cutoffs): a value also needs
    :data:`MIN_SEGMENT_LEADS` distinct leads."""
    s = pd.Series(col).astype("string")
    vc = s.value_counts(dropna=True)
    enough = vc >= min_rows
    if leads is not None:
        enough &= leads_per_value(s, leads).reindex(vc.index, fill_value=0) >= MIN_SEGMENT_LEADS
    kept = sorted(((int(n), str(v)) for v, n in vc[enough].items()),
                  key=lambda t: (-t[0], t[1]))
    return [v for _, v in kept[:cap]]


def leads_per_value(col, leads) -> pd.Series:
    """Distinct ``leads`` (each row's lead) per value of a segment column, as text."""
    s = pd.Series(col).astype("string")
    first = ~pd.DataFrame({"v": s.to_numpy(), "l": np.asarray(leads)}).duplicated()
    return s[first.to_numpy()].value_counts(dropna=True)


def segment_codes(col, values: Sequence[str]) -> np.ndarray:
    """Per row, the position of its segment value in ``values``; -1 for any other value
    and for missing."""
    s = pd.Series(col).astype("string")
    return pd.Categorical(s, categories=list(values)).codes.astype(np.int64)


class SegmentRows:
    """The rows whose ``codes`` (:func:`segment_codes`) name one of ``n_values`` segment
    values, found once and reused for every feature's counts (a night counts each of a
    bucket's features per source and per dealer)."""

    def __init__(self, codes: np.ndarray, n_values: int):
        self.rows = np.flatnonzero(np.asarray(codes) >= 0)
        self.codes = np.asarray(codes)[self.rows]
        self.n_values = n_values

    def counts(self, bins: np.ndarray, n: int) -> np.ndarray:
        """Bin counts per segment value, shape (``n_values``, ``n`` bins)."""
        flat = np.asarray(bins)[self.rows] * self.n_values + self.codes
        return np.bincount(flat, minlength=n * self.n_values).reshape(n, self.n_values).T


def segment_counts(bins: np.ndarray, codes: np.ndarray, n_values: int,
                   n: int) -> np.ndarray:
    """Bin counts per segment value, shape (``n_values``, ``n`` bins), of the rows whose
    ``codes`` (:func:`segment_codes`) name one."""
    return SegmentRows(codes, n_values).counts(bins, n)


def segment_entries(col, features: Mapping[str, np.ndarray], specs: Mapping[str, Mapping],
                    score_bins: np.ndarray, score_spec: Mapping, leads=None) -> dict:
    """The reference of one segment column: per kept value (:func:`segment_values`), its
    rows (and distinct ``leads``, each row's lead, when given) and the shares of its rows in
    each feature's and the score's population bins (``features``: each feature's bins per
    row; ``score_bins``: the score's)."""
    values = segment_values(col, leads=leads)
    if not values:
        return {}
    codes = segment_codes(col, values)
    rows = np.bincount(codes[codes >= 0], minlength=len(values))
    out = {v: {"rows": int(rows[i]), "features": {}, "score": None}
           for i, v in enumerate(values)}
    if leads is not None:
        distinct = leads_per_value(col, leads)
        for v in values:
            out[v]["leads"] = int(distinct[v])
    kept = SegmentRows(codes, len(values))
    for f, b in features.items():
        c = kept.counts(b, n_bins(specs[f]))
        for i, v in enumerate(values):
            out[v]["features"][f] = shares(c[i])
    c = kept.counts(score_bins, n_bins(score_spec))
    for i, v in enumerate(values):
        out[v]["score"] = shares(c[i])
    return out


def compare(reference: Mapping, counts: Mapping, alert: float = DEFAULT_ALERT,
            min_rows: int = MIN_SEGMENT_ROWS) -> dict:
    """One model's drift report from its stored reference and tonight's summed counts
    (``{"rows", "features": {name: counts}, "score": counts, "segments": {column: {value:
    {"rows", "features", "score"}}}}``): PSI of the score and of every feature, missing
    shares (training, tonight) of the features missing on either side, tonight's share of
    unseen levels per categorical feature, the same PSIs per segment value with at least
    ``min_rows`` rows on both sides, and the alerts (PSI at or above ``alert``): the score
    first, then the features by PSI, largest first, then the segments' as
    ``feature@column=value`` (``score@...``; see ``_segments``), by PSI too."""
    feats = reference["features"]
    out: dict = {"rows": int(counts.get("rows", 0)),
                 "reference_rows": int(reference.get("rows", 0))}
    score = reference.get("score")
    out["score_psi"] = (_round(psi(score["shares"], counts["score"]))
                        if score is not None and "score" in counts else None)
    out["features"], out["missing"], out["unseen"] = {}, {}, {}
    for name, spec in feats.items():
        c = counts["features"].get(name)
        if c is None:
            continue
        c = np.asarray(c, dtype=np.float64)
        out["features"][name] = _round(psi(spec["shares"], c))
        total = c.sum()
        train_missing, night_missing = spec["shares"][-1], (c[-1] / total if total else 0.0)
        if train_missing > 0 or night_missing > 0:
            out["missing"][name] = [round(train_missing, 6), round(float(night_missing), 6)]
        if "levels" in spec:
            out["unseen"][name] = round(float(c[-2] / total), 6) if total else 0.0
    ranked = sorted(((v, k) for k, v in out["features"].items()
                     if v is not None and v >= alert), key=lambda t: (-t[0], t[1]))
    out["alerts"] = ((["score"] if out["score_psi"] is not None and out["score_psi"] >= alert
                      else []) + [k for _, k in ranked])
    out["segments"], found = _segments(reference, counts, min_rows, alert)
    out["alerts"] += [k for _, k in sorted(found, key=lambda t: (-t[0], t[1]))]
    return out


def follows(e: Sequence[float], a: Sequence[float], e_seg: Sequence[float],
            a_seg: Sequence[float], weight: float) -> float:
    """How much of a segment's change of shares shows in the population's: the population's
    change (``a - e``) projected on the segment's, weighted by its share of tonight's rows
    (``weight * (a_seg - e_seg)``), as a fraction of the latter. About 1 when the segment
    alone moved; near 0 or below when the other segments offset it; NaN when the segment's
    shares did not change."""
    dp = np.asarray(a, np.float64) - np.asarray(e, np.float64)
    ds = weight * (np.asarray(a_seg, np.float64) - np.asarray(e_seg, np.float64))
    norm = float(ds @ ds)
    return float(dp @ ds) / norm if norm > 0 else math.nan


def _segments(reference: Mapping, counts: Mapping, min_rows: int,
              alert: float) -> tuple[dict, list[tuple[float, str]]]:
    """The segments' report and their alerts (PSI, ``feature@column=value``).

    A segment's PSI at or above ``alert`` is an alert when the population moved with it
    (:func:`follows` at least ``SEGMENT_FOLLOWS``): a shift of one source's or one dealer's
    rows reaches the population in proportion to its share, diluted but in the same
    direction. When the other segments offset it, the population the model scores did not
    move that way: the segments differ from their training rows among themselves (in a
    simulated world with another seed, the dealers are other dealers), which is not a shift
    to act on; such PSIs stay in the report, under ``offset`` with their fraction."""
    ref_segments, night = reference.get("segments") or {}, counts.get("segments") or {}
    total = max(int(counts.get("rows", 0)), 1)
    out: dict = {}
    found: list[tuple[float, str]] = []
    for column, values in ref_segments.items():
        tonight = night.get(column) or {}
        got = {}
        for value, ref in values.items():
            c = tonight.get(value)
            if c is None or c["rows"] < min_rows or ref["rows"] < min_rows or \
                    ref.get("leads", MIN_SEGMENT_LEADS) < MIN_SEGMENT_LEADS:
                continue
            pairs = {f: (reference["features"][f]["shares"], counts["features"][f], s,
                         c["features"][f])
                     for f, s in ref["features"].items()
                     if f in c["features"] and f in counts["features"]}
            if c.get("score") is not None and counts.get("score") is not None:
                pairs["score"] = (reference["score"]["shares"], counts["score"], ref["score"],
                                  c["score"])
            r: dict = {"rows": int(c["rows"]), "features": {}, "score_psi": None, "offset": {}}
            weight = c["rows"] / total
            for f, (e, a, e_seg, a_seg) in pairs.items():
                v = _round(psi(e_seg, a_seg))
                if f == "score":
                    r["score_psi"] = v
                else:
                    r["features"][f] = v
                if v is None or v < alert:
                    continue
                share = follows(e, _norm(a), e_seg, _norm(a_seg), weight)
                if share >= SEGMENT_FOLLOWS:
                    found.append((v, f"{f}@{column}={value}"))
                else:
                    r["offset"][f] = _round(share)
            got[value] = r
        if got:
            out[column] = got
    return out, found


def _norm(counts: Sequence[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / c.sum() if c.sum() > 0 else c


def _round(v: float) -> float | None:
    return None if v != v else round(v, 6)
