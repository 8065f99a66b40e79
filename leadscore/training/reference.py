"""The drift reference a model carries: per feature and for the score, the bins of the rows
it was boosted on at its latest training cutoffs and their shares (:mod:`leadscore.drift`),
stored in the artifact's metadata so the nightly job compares tonight's rows with the
model's own training rows without the rows themselves; and the same per lead source and per
dealer (:data:`leadscore.drift.SEGMENTS`), whose shifts the population's PSI dilutes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore import drift
from leadscore.artifact import LeadModel

#: the latest training cutoffs a reference holds: at least this many, and more until it
#: holds :data:`MIN_ROWS` rows (or every cutoff)
LATEST_CUTOFFS = 4
MIN_ROWS = 20_000


def latest(rows: pd.DataFrame) -> pd.DataFrame:
    """The training rows of the latest cutoffs (column ``as_of``; rows without one: all).

    A night scores one cutoff, which looks like the latest training cutoffs, not like all
    of them pooled: training pools cutoffs from the start of the data, when every lead and
    owner had just appeared (tenure, lead age and whole-history counts only grow as the
    data does), so a pooled reference alerts on those features every night. (A model
    trained on one row per contact attempt, ``as_of`` its instant, keeps its latest
    attempts.)"""
    if "as_of" not in rows.columns or rows.empty:
        return rows
    per = rows.groupby("as_of").size().sort_index(ascending=False)
    enough = int(np.searchsorted(np.cumsum(per.to_numpy()), MIN_ROWS)) + 1
    keep = per.index[:max(LATEST_CUTOFFS, enough)]
    return rows[rows["as_of"].isin(keep)]


def build(model: LeadModel, rows: pd.DataFrame, scores: np.ndarray, population: str) -> dict:
    """The reference of ``model`` from its training ``rows`` and its calibrated ``scores`` on
    them; ``population``: which rows the model scores (the spec's entity), since only a
    reference of the rows the nightly job scores can be compared with them. Segments: the
    segment columns' values with enough rows, in the population's bins."""
    features = {}
    for f in model.features:
        if f not in rows.columns:
            continue
        if f in model.categories:
            features[f] = drift.entry(rows[f], levels=model.categories[f])
        else:
            features[f] = drift.entry(rows[f])
    scores = np.asarray(scores, dtype=np.float64)
    score = drift.entry(scores)
    segments = {}
    cols = [c for c in drift.SEGMENTS if c in rows.columns]
    if cols:
        bins = {f: drift.bins_of(rows[f], spec) for f, spec in features.items()}
        score_bins = drift.bins_of(scores, score)
        for c in cols:
            got = drift.segment_entries(rows[c], bins, features, score_bins, score,
                                        rows.get("lead_id"))
            if got:
                segments[c] = got
    # the cutoffs it holds, for the populations a night compares (not every contact attempt)
    cutoffs = (sorted(pd.Timestamp(t).isoformat() for t in rows["as_of"].unique())
               if "as_of" in rows.columns and population in drift.NIGHTLY_POPULATIONS
               else [])
    return {"version": drift.REFERENCE_VERSION, "population": population, "rows": len(rows),
            "cutoffs": cutoffs, "bins": drift.BINS, "features": features, "score": score,
            "segments": segments}


def attach(model: LeadModel, rows: pd.DataFrame, scores: np.ndarray, population: str) -> None:
    """Store :func:`build`'s reference in ``model.meta`` (``rows``: :func:`latest` of the
    rows boosting saw, ``scores`` theirs)."""
    model.meta[drift.REFERENCE_KEY] = build(model, rows, scores, population)
