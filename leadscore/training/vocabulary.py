"""The data-driven vocabulary: which event types beyond the contract's standard list get
features of their own, decided at training and carried by the model.

Real CRMs and funnels have their own steps (trade-in valuation, loan pre-approval, offer
returned); lumped into one "other" count their signal is lost. The most frequent ones in the
training data get the features of :func:`catalog.vocabulary_features`; a type the model never
saw in training still counts in ``other_events_30d`` only. Counted on the events before the
holdout, so the choice does not look at the period the model is judged on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import duckdb
import pandas as pd

from leadscore.features import catalog, job
from leadscore.schema import STANDARD_EVENT_TYPES

log = logging.getLogger(__name__)

#: where a model's artifact (``LeadModel.meta``) keeps its vocabulary
META_KEY = "vocabulary"


def choose_event_types(con: duckdb.DuckDBPyConnection, before: pd.Timestamp, k: int,
                       min_events: int = 1) -> list[str]:
    """The ``k`` most frequent non-standard event types among the events before ``before``
    (and ingested by then), each seen at least ``min_events`` times; ties by name."""
    if k <= 0:
        return []
    t = pd.Timestamp(before)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    std = ", ".join("?" for _ in STANDARD_EVENT_TYPES)
    rows = con.execute(
        f"""SELECT event_type, count(*) AS n FROM events
        WHERE ts < ? AND coalesce(ingested_at, ts) <= ? AND event_type IS NOT NULL
          AND event_type NOT IN ({std})
        GROUP BY event_type HAVING count(*) >= ? ORDER BY n DESC, event_type LIMIT ?""",
        [t.to_pydatetime(), t.to_pydatetime(), *STANDARD_EVENT_TYPES, int(min_events), int(k)],
    ).fetchall()
    return [r[0] for r in rows]


def vocabulary_cutoff(frame: pd.DataFrame, split_kind: str) -> pd.Timestamp:
    """Events before this instant choose the vocabulary: the first holdout cutoff of an
    out-of-time split (nothing of the holdout period), else the latest cutoff."""
    if split_kind == "time" and (frame["split"] == "test").any():
        return pd.Timestamp(frame.loc[frame["split"] == "test", "as_of"].min())
    return pd.Timestamp(frame["as_of"].max())


def add_features(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame,
                 event_types: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` (rows keyed by lead_id, as_of) with the vocabulary features of
    ``event_types`` at its cutoffs, by the same feature job that serving runs; and their
    names."""
    feats = catalog.vocabulary_features(event_types)
    if not feats:
        return frame, []
    names = [f.name for f in feats]
    cutoffs = sorted(pd.to_datetime(frame["as_of"].unique(), utc=True))
    got = job.to_pandas(job.compute(con, list(cutoffs), feats), feats)
    got = got[["lead_id", "as_of", *names]]
    out = frame.drop(columns=[n for n in names if n in frame.columns]).merge(
        got, on=["lead_id", "as_of"], how="left", validate="many_to_one")
    if len(out) != len(frame):  # pragma: no cover - merge on unique keys
        raise RuntimeError("vocabulary features changed the training rows")
    return out, names
