"""The point-in-time feature job: the catalogue compiled into one DuckDB query.

For every cutoff ``as_of`` and every lead created by then, features see only events with
``ts < as_of`` and ``ingested_at <= as_of`` (a missing ``ingested_at`` means the row was available
when it happened), and contacts with ``ts < as_of``. All cutoffs are computed in one pass: the
events are joined once to the cutoffs whose lookback window contains them, and every feature is
a filtered aggregate over that join.

The function works on whatever tables called ``leads``, ``events`` and ``contacts`` the DuckDB
connection holds, so the embedded engine runs it over the whole data set and the Spark engine
runs the very same function over one bucket of leads at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd
import pyarrow as pa

from leadscore.features import catalog as cat
from leadscore.schema import (
    CLOSING_TYPES,
    MESSAGE_CHANNELS,
    RESPONSE_OUTCOMES,
    STANDARD_EVENT_TYPES,
)

US_PER_DAY = 86_400_000_000
ID_COLUMNS = ("lead_id", "dealer_id", "as_of", "is_open", "is_owner")


def _in(types: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{t}'" for t in types) + ")"


def _win(days: int) -> str:
    return f"age_us <= {days * US_PER_DAY}"


def _event_expr(f: cat.Feature) -> str | None:
    """The aggregate over the cutoff-joined events ``ev`` for one feature, or None."""
    if isinstance(f, cat.Count):
        cond = [_win(f.window_days)]
        if f.other:
            cond.append(f"event_type NOT IN {_in(STANDARD_EVENT_TYPES)}")
        elif f.events is not None:
            cond.append(f"event_type IN {_in(f.events)}")
        return f"count(*) FILTER (WHERE {' AND '.join(cond)})::DOUBLE"
    if isinstance(f, cat.DaysSince):
        cond = "" if f.events is None else f" FILTER (WHERE event_type IN {_in(f.events)})"
        return f"min(age_us){cond} / {US_PER_DAY}.0"
    if isinstance(f, cat.DistinctModels):
        return (
            f"count(DISTINCT model) FILTER (WHERE {_win(f.window_days)} "
            f"AND model IS NOT NULL)::DOUBLE"
        )
    if isinstance(f, cat.NightShare):
        start, end = f.local_hours
        hours = (f"(local_hour >= {start} OR local_hour < {end})" if start > end
                 else f"(local_hour >= {start} AND local_hour < {end})")
        w = _win(f.window_days)
        return (
            f"count(*) FILTER (WHERE {w} AND {hours}) / "
            f"NULLIF(count(*) FILTER (WHERE {w}), 0)::DOUBLE"
        )
    if isinstance(f, cat.Sessions):
        return (
            f"count(DISTINCT ts) FILTER (WHERE {_win(f.window_days)} "
            f"AND (prev_avail_{f.gap_minutes} IS NULL OR prev_avail_{f.gap_minutes} > as_of))"
            f"::DOUBLE"
        )
    if isinstance(f, cat.Trend):
        short = f"count(*) FILTER (WHERE {_win(f.short_days)})"
        long = f"count(*) FILTER (WHERE {_win(f.long_days)})"
        return f"({short} * {f.long_days}.0 / {f.short_days}) / NULLIF({long}, 0)"
    return None


def _contact_expr(f: cat.ContactStat) -> str:
    resp = f"outcome IN {_in(RESPONSE_OUTCOMES)}"
    msg = f"channel IN {_in(MESSAGE_CHANNELS)}"
    return {
        "attempts": "count(*)::DOUBLE",
        "responses": f"count(*) FILTER (WHERE {resp})::DOUBLE",
        "response_rate": f"avg(({resp})::INT)",
        "replies": "count(*) FILTER (WHERE outcome = 'replied')::DOUBLE",
        "phone_response_rate": f"avg(({resp})::INT) FILTER (WHERE channel = 'phone')",
        "message_response_rate": f"avg(({resp})::INT) FILTER (WHERE {msg})",
        "days_since": f"min(age_us) / {US_PER_DAY}.0",
    }[f.stat]


def _static_expr(f: cat.Static) -> str:
    if f.column == "lead_age_days":
        return f"(epoch_us(b.as_of) - epoch_us(b.created_at)) / {US_PER_DAY}.0"
    if f.dtype == "category":
        return f"b.{f.column}"
    return f"CAST(b.{f.column} AS DOUBLE)"


def build_sql(features: Sequence[cat.Feature], lookback_days: int = cat.LOOKBACK_DAYS,
              per_lead: bool = False) -> str:
    """The whole feature query over tables leads/events/contacts and ``_cutoffs(as_of)``.

    ``per_lead``: ``_cutoffs`` also has a ``lead_id`` column and each cutoff applies to that
    lead only (features just before each contact attempt, say), joined by key instead of
    fanning every cutoff out to every lead.
    """
    key = " AND {t}.lead_id = c.lead_id" if per_lead else ""
    features = [f for f in features if not isinstance(f, cat.SlotFeature)]
    ev_feats = [(f, _event_expr(f)) for f in features]
    ev_feats = [(f, e) for f, e in ev_feats if e is not None]
    ct_feats = [f for f in features if isinstance(f, cat.ContactStat)]
    top_share = [f for f in features if isinstance(f, cat.TopModelShare)]
    gaps = sorted({f.gap_minutes for f in features if isinstance(f, cat.Sessions)})

    prev_cols = "".join(
        f""",
        min(coalesce(ingested_at, ts)) OVER (
            PARTITION BY lead_id ORDER BY ts
            RANGE BETWEEN INTERVAL {g} MINUTE PRECEDING AND CURRENT ROW EXCLUDE GROUP
        ) AS prev_avail_{g}"""
        for g in gaps
    )
    ev_aggs = ",\n        ".join(f'{e} AS "{f.name}"' for f, e in ev_feats) or "NULL AS _none"
    parts = [
        f"""
base AS (
    SELECT l.lead_id, l.dealer_id, l.created_at, l.source, l.intended_model, l.budget,
           l.tz, c.as_of
    FROM leads l JOIN _cutoffs c ON l.created_at <= c.as_of{key.format(t="l")}
),
ev_all AS (
    SELECT e.lead_id, e.ts, e.event_type, e.model,
           coalesce(e.ingested_at, e.ts) AS avail,
           hour(timezone(l.tz, e.ts)) AS local_hour{prev_cols}
    FROM events e JOIN leads l USING (lead_id)
),
ev AS (
    SELECT e.*, c.as_of, epoch_us(c.as_of) - epoch_us(e.ts) AS age_us
    FROM ev_all e JOIN _cutoffs c
      ON e.ts < c.as_of AND e.avail <= c.as_of{key.format(t="e")}
     AND e.ts >= c.as_of - INTERVAL {int(lookback_days)} DAY
),
ev_agg AS (
    SELECT lead_id, as_of,
        {ev_aggs}
    FROM ev GROUP BY lead_id, as_of
),
status AS (
    SELECT e.lead_id, c.as_of,
           bool_or(e.event_type IN {_in(CLOSING_TYPES)}) AS closed,
           bool_or(e.event_type = 'order') AS ordered
    FROM events e JOIN _cutoffs c
      ON e.ts < c.as_of AND coalesce(e.ingested_at, e.ts) <= c.as_of{key.format(t="e")}
    WHERE e.event_type IN {_in(CLOSING_TYPES)}
    GROUP BY ALL
)"""
    ]
    joins = [
        "LEFT JOIN ev_agg a ON a.lead_id = b.lead_id AND a.as_of = b.as_of",
        "LEFT JOIN status s ON s.lead_id = b.lead_id AND s.as_of = b.as_of",
    ]
    if top_share:
        w = max(f.window_days for f in top_share)
        parts.append(
            f"""
model_counts AS (
    SELECT lead_id, as_of, model, age_us FROM ev WHERE model IS NOT NULL
),
top_share AS (
    SELECT lead_id, as_of,
        {", ".join(
            f'max(n_{f.window_days}) / NULLIF(sum(n_{f.window_days}), 0) AS "{f.name}"'
            for f in top_share)}
    FROM (
        SELECT lead_id, as_of, model,
            {", ".join(
                f"count(*) FILTER (WHERE {_win(f.window_days)}) AS n_{f.window_days}"
                for f in top_share)}
        FROM model_counts WHERE {_win(w)} GROUP BY ALL
    ) GROUP BY ALL
)"""
        )
        joins.append("LEFT JOIN top_share t ON t.lead_id = b.lead_id AND t.as_of = b.as_of")
    if ct_feats:
        ct_aggs = ",\n        ".join(
            f'{_contact_expr(f)} AS "{f.name}"' for f in ct_feats if f.stat != "uncontacted_hours"
        )
        parts.append(
            f"""
ct AS (
    SELECT ct.lead_id, c.as_of, ct.channel, ct.outcome,
           epoch_us(c.as_of) - epoch_us(ct.ts) AS age_us
    FROM contacts ct JOIN _cutoffs c ON ct.ts < c.as_of{key.format(t="ct")}
),
ct_agg AS (
    SELECT lead_id, as_of,
        {ct_aggs},
        max(age_us) AS _first_age_us
    FROM ct GROUP BY lead_id, as_of
)"""
        )
        joins.append("LEFT JOIN ct_agg k ON k.lead_id = b.lead_id AND k.as_of = b.as_of")

    select = ["b.lead_id", "b.dealer_id", "b.as_of",
              "NOT coalesce(s.closed, FALSE) AS is_open",
              "coalesce(s.ordered, FALSE) AS is_owner"]
    zero_if_missing = (cat.Count, cat.ContactStat)
    for f in features:
        q = f'"{f.name}"'
        if isinstance(f, cat.Static):
            expr = _static_expr(f)
        elif isinstance(f, cat.TopModelShare):
            expr = f"t.{q}"
        elif isinstance(f, cat.ContactStat):
            if f.stat == "uncontacted_hours":
                # hours from creation to first contact, or to as_of while none was made
                expr = (
                    "(CASE WHEN k._first_age_us IS NULL "
                    "THEN epoch_us(b.as_of) - epoch_us(b.created_at) "
                    "ELSE epoch_us(b.as_of) - k._first_age_us - epoch_us(b.created_at) END)"
                    " / 3600000000.0"
                )
            elif f.stat in ("attempts", "responses", "replies"):
                expr = f"coalesce(k.{q}, 0)"
            else:
                expr = f"k.{q}"
        else:
            expr = f"coalesce(a.{q}, 0)" if isinstance(f, zero_if_missing) else f"a.{q}"
        select.append(f"{expr} AS {q}")
    return (
        "WITH "
        + ",".join(parts)
        + "\nSELECT "
        + ",\n       ".join(select)
        + "\nFROM base b\n"
        + "\n".join(joins)
        + "\nORDER BY b.as_of, b.lead_id"
    )


def _cutoffs_table(con: duckdb.DuckDBPyConnection, as_of: Sequence[pd.Timestamp]) -> None:
    ts = [pd.Timestamp(t) for t in as_of]
    ts = [t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in ts]
    if not ts:
        raise ValueError("at least one cutoff (as_of) is needed")
    con.execute("CREATE OR REPLACE TEMP TABLE _cutoffs (as_of TIMESTAMPTZ)")
    con.executemany("INSERT INTO _cutoffs VALUES (?)", [[t.to_pydatetime()] for t in ts])


def compute(
    con: duckdb.DuckDBPyConnection,
    as_of: Sequence[pd.Timestamp],
    features: Sequence[cat.Feature] = cat.CATALOG,
    *,
    only_open: bool = False,
) -> pa.Table:
    """Features for every lead created by each cutoff, as an Arrow table.

    ``only_open`` keeps leads with no visible order or lost event (the entities the lead models
    score). Output columns: lead_id, dealer_id, as_of, is_open, is_owner, then the features.
    """
    _cutoffs_table(con, as_of)
    sql = build_sql(features)
    if only_open:
        sql = f"SELECT * FROM ({sql}) WHERE is_open"
    return con.sql(sql).to_arrow_table()


def compute_pairs(
    con: duckdb.DuckDBPyConnection,
    pairs: pd.DataFrame,
    features: Sequence[cat.Feature] = cat.CATALOG,
) -> pa.Table:
    """Features for given (lead_id, as_of) pairs only — e.g. just before each contact attempt.

    Same SQL and semantics as :func:`compute`; each cutoff applies to its own lead.
    """
    p = pairs[["lead_id", "as_of"]].drop_duplicates().copy()
    p["as_of"] = pd.to_datetime(p["as_of"], utc=True)
    con.register("_pairs_in", p)
    con.execute("CREATE OR REPLACE TEMP TABLE _cutoffs AS "
                "SELECT CAST(lead_id AS VARCHAR) AS lead_id, CAST(as_of AS TIMESTAMPTZ) AS as_of "
                "FROM _pairs_in")
    con.unregister("_pairs_in")
    return con.sql(build_sql(features, per_lead=True)).to_arrow_table()


def to_pandas(table: pa.Table, features: Sequence[cat.Feature] = cat.CATALOG) -> pd.DataFrame:
    """Arrow → pandas with catalogue dtypes (categoricals as ``category``, numbers float64)."""
    df = table.to_pandas()
    for f in features:
        if f.name not in df.columns:
            continue
        if f.dtype == "category":
            df[f.name] = df[f.name].astype("category")
        else:
            df[f.name] = df[f.name].astype("float64")
    return df
