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

from leadscore.contract import extra_lead_columns
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


#: a numeric column whose present values are (nearly) all integers and all distinct is an id
_ID_DISTINCT_SHARE = 0.95
#: share of present values that must parse for a text column to count as numbers / times
_PARSE_SHARE = 0.95


def choose_lead_columns(con: duckdb.DuckDBPyConnection, before: pd.Timestamp,
                        columns: str | Sequence[str] = "auto", exclude: Sequence[str] = (),
                        max_categories: int = 50, min_present: float = 0.1,
                        ) -> dict[str, str]:
    """The extra columns of table ``leads`` (beyond the contract's) a model uses, ``{column:
    "float" | "category"}``, judged on the leads created before ``before``.

    ``auto``: a column of numbers (or text that parses as numbers) is a number; text with at
    most ``max_categories`` distinct values is a category; ids (all values distinct), free
    text, dates and times, and columns present on fewer than ``min_present`` of the leads are
    left out. A list names the columns to use (numbers, else categories). ``exclude``: never.

    These are static attributes, so no cutoff can see the future through them, but a CRM field
    filled in after the first contact (a lead's quality grade, its last activity, a tag an
    advisor sets) can give the outcome away: a model would then look good in training and
    fail on new leads, where it is still empty. Exclude such fields (the X Education data's
    ``Tags`` and ``Lead Quality`` are like that).
    """
    if columns == "none":
        return {}
    have = extra_lead_columns([d[0] for d in con.sql("SELECT * FROM leads LIMIT 0").description])
    if columns == "auto":
        names = [c for c in have if c not in set(exclude)]
    else:
        missing = [c for c in columns if c not in have]
        if missing:
            raise ValueError(f"vocabulary.lead_columns names {missing}, which the leads table "
                             f"does not have beyond the contract's (it has: {have or 'none'})")
        names = [c for c in columns if c not in set(exclude)]
    if not names:
        return {}
    t = pd.Timestamp(before)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    types = {d[0]: str(d[1]).upper() for d in con.sql("SELECT * FROM leads LIMIT 0").description}
    aggs = []
    for c in names:
        q = '"' + c.replace('"', '""') + '"'
        txt = f"NULLIF(trim(CAST({q} AS VARCHAR)), '')"
        num = f"TRY_CAST({txt} AS DOUBLE)"
        aggs += [f"count({txt})", f"count({num})", f"count(TRY_CAST({txt} AS TIMESTAMP))",
                 f"count(DISTINCT {txt})", f"count(*) FILTER (WHERE {num} <> round({num}))"]
    n, *res = con.execute(f"SELECT count(*), {', '.join(aggs)} FROM leads WHERE created_at < ?",
                          [t.to_pydatetime()]).fetchall()[0]
    out: dict[str, str] = {}
    for i, c in enumerate(names):
        present, numeric, times, distinct, fractional = res[5 * i: 5 * i + 5]
        is_num = present > 0 and numeric >= _PARSE_SHARE * present \
            and not types[c].startswith(("TIMESTAMP", "DATE"))
        if columns != "auto":
            if present:
                out[c] = "float" if is_num else "category"
            continue
        why = None
        if not n or present < min_present * n:
            why = "mostly missing"
        elif types[c].startswith(("TIMESTAMP", "DATE", "TIME")) or (
                not is_num and times >= _PARSE_SHARE * present):
            why = "dates or times"
        elif is_num:
            if fractional == 0 and distinct >= _ID_DISTINCT_SHARE * present and present >= 20:
                why = "an id (every value distinct)"
        elif distinct > max_categories:
            why = f"more than {max_categories} distinct values (an id or free text)"
        if why:
            log.info("lead column %s left out: %s", c, why)
            continue
        out[c] = "float" if is_num else "category"
    return out


def vocabulary_cutoff(frame: pd.DataFrame, split_kind: str) -> pd.Timestamp:
    """Events before this instant choose the vocabulary: the first holdout cutoff of an
    out-of-time split (nothing of the holdout period), else the latest cutoff."""
    if split_kind == "time" and (frame["split"] == "test").any():
        return pd.Timestamp(frame.loc[frame["split"] == "test", "as_of"].min())
    return pd.Timestamp(frame["as_of"].max())


def add_features(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame,
                 event_types: Sequence[str], lead_columns: dict[str, str] | None = None,
                 ) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` (rows keyed by lead_id, as_of) with the vocabulary features of
    ``event_types`` and ``lead_columns`` at its cutoffs, by the same feature job that serving
    runs; and their names."""
    feats = [*catalog.vocabulary_features(event_types),
             *(catalog.lead_column_feature(c, t) for c, t in (lead_columns or {}).items())]
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
