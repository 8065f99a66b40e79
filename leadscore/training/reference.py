"""The drift reference a model carries: per feature and for the score, the bins of the rows
it was boosted on and their shares (:mod:`leadscore.drift`), stored in the artifact's
metadata so the nightly job compares tonight's rows with the model's own training rows
without the rows themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore import drift
from leadscore.artifact import LeadModel


def build(model: LeadModel, rows: pd.DataFrame, scores: np.ndarray, population: str) -> dict:
    """The reference of ``model`` from its training ``rows`` and its calibrated ``scores`` on
    them; ``population``: which rows the model scores (the spec's entity), since only a
    reference of the rows the nightly job scores can be compared with them."""
    features = {}
    for f in model.features:
        if f not in rows.columns:
            continue
        if f in model.categories:
            features[f] = drift.entry(rows[f], levels=model.categories[f])
        else:
            features[f] = drift.entry(rows[f])
    return {"version": drift.REFERENCE_VERSION, "population": population, "rows": len(rows),
            "bins": drift.BINS, "features": features,
            "score": drift.entry(np.asarray(scores, dtype=np.float64))}


def attach(model: LeadModel, rows: pd.DataFrame, scores: np.ndarray, population: str) -> None:
    """Store :func:`build`'s reference in ``model.meta``."""
    model.meta[drift.REFERENCE_KEY] = build(model, rows, scores, population)
