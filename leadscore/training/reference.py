"""The drift reference a model carries: per feature and for the score, the bins of the rows
it was boosted on and their shares (:mod:`leadscore.drift`), stored in the artifact's
metadata so the nightly job compares tonight's rows with the model's own training rows
without the rows themselves; and the same per lead source and per dealer
(:data:`leadscore.drift.SEGMENTS`), whose shifts the population's PSI dilutes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore import drift
from leadscore.artifact import LeadModel


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
            got = drift.segment_entries(rows[c], bins, features, score_bins, score)
            if got:
                segments[c] = got
    return {"version": drift.REFERENCE_VERSION, "population": population, "rows": len(rows),
            "bins": drift.BINS, "features": features, "score": score, "segments": segments}


def attach(model: LeadModel, rows: pd.DataFrame, scores: np.ndarray, population: str) -> None:
    """Store :func:`build`'s reference in ``model.meta``."""
    model.meta[drift.REFERENCE_KEY] = build(model, rows, scores, population)
