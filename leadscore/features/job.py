"""The point-in-time feature job: the catalogue compiled into DuckDB SQL.

For every cutoff ``as_of`` and every lead created by then, features see only events with
``ts < as_of`` and ``ingested_at <= as_of`` (a missing ``ingested_at`` means the row was available
when it happened), and contacts with ``ts < as_of``. Event features look back at most
``lookback_days``; a lead's open/owner status looks at its whole history.

How. An event is *visible from* ``vs = max(ts + 1us, ingested_at)``: visible at a cutoff iff
``vs <= as_of``. Every event feature is a sum (or a max) over the visible events whose ``ts`` lies
in ``[as_of - W, as_of)``. So the events are reduced once to small per-lead tables keyed by a time
bucket ``d`` of ``ts`` and a visibility key ``vis``, and those tables are aggregated per cutoff:

* :func:`compute` takes as bucket the longest length that divides a day and every distance
  between its cutoffs (a day for midnight-aligned cutoffs), so that cutoffs and window edges fall
  on bucket edges and bucketed sums are exact (with few cutoffs, the buckets between two window
  edges are merged); ``vis`` is the index of the first cutoff at which the event is visible.
  DuckDB reads the events once, whatever the number of cutoffs, into per (lead, bucket, vis,
  event type | local hour | model) counts; then the cutoffs are taken in order and per-lead sums
  per window are kept up to date in numpy: the rows that became visible are added, the rows
  that left a window taken away.
* :func:`build_sql` is the same computation as one statement over a ``_cutoffs`` table, for any
  cutoffs (microsecond buckets, visibility instants); ``per_lead`` cutoffs apply to one lead each.

A session opens at an event when no event visible at the cutoff precedes it within the gap: the
previous event in (lead, ts) order settles almost every case, and only where that one became
visible later than the current event is the whole gap searched.

The functions work on whatever tables called ``leads``, ``events`` and ``contacts`` the DuckDB
connection holds, so the embedded engine runs them over the whole data set and the Spark engine
runs the very same function over one bucket of leads at a time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from leadscore.contract import extra_lead_columns, lead_exists_sql
from leadscore.features import catalog as cat
from leadscore.schema import (
    CLOSING_TYPES,
    MESSAGE_CHANNELS,
    RESPONSE_OUTCOMES,
    STANDARD_EVENT_TYPES,
)

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
US_PER_MIN = 60_000_000
ID_COLUMNS = ("lead_id", "dealer_id", "as_of", "is_open", "is_owner")
_OTHER_CODE = 255  # event types outside the contract's standard list
#: (lead, day) cells up to which distinct active days are counted on a grid of flags
_DAYS_GRID = 1 << 26
_TMP = "_fj_"  # prefix of compute()'s temporary tables
#: when an event became visible, in epoch microseconds (SQL): just after it happened, or when
#: it was ingested if later
VS = "greatest(epoch_us(e.ts) + 1, epoch_us(coalesce(e.ingested_at, e.ts)))"


def _in(types: Sequence[str]) -> str:
    return "(" + ", ".join("'" + t.replace("'", "''") + "'" for t in types) + ")"


def ts_lit(us: int) -> str:
    """A SQL TIMESTAMPTZ literal for epoch microseconds ``us``."""
    return f"TIMESTAMPTZ '{pd.Timestamp(us, unit='us', tz='UTC').isoformat()}'"


def _hours(col: str, local_hours: tuple[int, int]) -> str:
    start, end = local_hours
    if start > end:  # across midnight
        return f"({col} >= {start} OR {col} < {end})"
    return f"({col} >= {start} AND {col} < {end})"


# --------------------------------------------------------------------------- what is needed


class Plan:
    """What a feature list needs from the events: event types to count separately, local-hour
    ranges, recency sets, session gaps, model windows. Pure data, built once per call."""

    def __init__(self, features: Sequence[cat.Feature], lookback_days: int):
        self.features = [f for f in features if not isinstance(f, cat.SlotFeature)]
        self.lookback = int(lookback_days)
        fs = self.features
        named: list[str] = []
        for f in fs:
            if ((isinstance(f, cat.Count) and not f.other)
                    or isinstance(f, cat.DaysSince | cat.History)):
                named += [t for t in (f.events or ()) if t not in named]
        if len(named) >= _OTHER_CODE:
            raise ValueError("too many event types named by the features")
        self.code = {t: i + 1 for i, t in enumerate(named)}
        self.other = any(isinstance(f, cat.Count) and f.other for f in fs)
        self.hours = list(dict.fromkeys(f.local_hours for f in fs
                                        if isinstance(f, cat.NightShare)))
        self.since = list(dict.fromkeys(f.events for f in fs if isinstance(f, cat.DaysSince)))
        self.gaps = sorted({f.gap_minutes for f in fs if isinstance(f, cat.Sessions)})
        self.contacts = [f for f in fs if isinstance(f, cat.ContactStat)]
        #: whole-history features: their event groups and the windows they sum over
        self.history = [f for f in fs if isinstance(f, cat.History)]
        self.hgroups = list(dict.fromkeys(f.events for f in self.history))
        self.hwindows = sorted({f.window_days for f in self.history if f.window_days})
        self.model_feats = [f for f in fs if isinstance(f, cat.DistinctModels | cat.TopModelShare)]
        self.main = any(isinstance(f, cat.Count | cat.DaysSince | cat.NightShare | cat.Trend)
                        for f in fs)
        for f in fs:
            if not isinstance(f, _KINDS):
                raise TypeError(f"the feature job cannot compute {type(f).__name__} {f.name}")

    def days(self, w: int) -> int:
        """A window as the job applies it: never beyond the lookback."""
        return min(int(w), self.lookback)

    def max_days(self, kinds) -> int:
        return max((self.days(f.window_days) for f in self.features if isinstance(f, kinds)),
                   default=0)

    def spans(self) -> dict[str, int]:
        """How far before a cutoff (us) each per-event relation reaches."""
        s = {"main": self.lookback * US_PER_DAY if self.main else 0,
             "hours": self.max_days(cat.NightShare) * US_PER_DAY if self.hours else 0,
             "models": self.max_days(cat.DistinctModels | cat.TopModelShare) * US_PER_DAY
             if self.model_feats else 0,
             "sessions": self.max_days(cat.Sessions) * US_PER_DAY + max(self.gaps) * US_PER_MIN
             if self.gaps else 0}
        s["recent"] = max(s["hours"], s["models"], s["sessions"])
        s["all"] = max(s["main"], s["recent"])
        return s

    def code_of(self, event_type: str) -> int:
        """An event type's code: the rule :meth:`code_sql` writes in SQL."""
        if event_type in self.code:
            return self.code[event_type]
        return _OTHER_CODE if self.other and event_type not in STANDARD_EVENT_TYPES else 0

    def code_sql(self, col: str) -> str:
        whens = " ".join(f"WHEN '{t}' THEN {c}" for t, c in self.code.items())
        rest = (f"CASE WHEN {col} IN {_in(STANDARD_EVENT_TYPES)} THEN 0 ELSE {_OTHER_CODE} END"
                if self.other else "0")
        if not whens:
            return f"CAST({rest} AS UTINYINT)"
        return f"CAST(CASE {col} {whens} ELSE {rest} END AS UTINYINT)"

    @property
    def other_codes(self) -> list[int]:
        """Codes whose events an ``other`` count takes: every type outside the standard
        list, whether a feature names it (a vocabulary type) or not, so the count does not
        depend on which other features are computed beside it."""
        return [_OTHER_CODE, *(c for t, c in self.code.items() if t not in STANDARD_EVENT_TYPES)]

    def codes(self, types: Sequence[str]) -> str:
        return ", ".join(str(self.code[t]) for t in types)

    def main_aggs(self, hours: bool) -> list[tuple[str, str]]:
        """(column, aggregate over per-event rows ``x``) of the main bucket table."""
        aggs = [("n", "count(*)")]
        aggs += [(f"n_{c}", f"count_if(x.code = {c})") for c in self.code.values()]
        if self.other:
            aggs.append(("n_other", f"count_if(x.code = {_OTHER_CODE})"))
        aggs += [(f"h_{i}", f"count_if({_hours('x.lh', h)})" if hours else "0")
                 for i, h in enumerate(self.hours)]
        for i, types in enumerate(self.since):
            cond = "x.t" if types is None else (
                f"CASE WHEN x.code IN ({self.codes(types)}) THEN x.t END")
            aggs.append((f"m_{i}", f"max({cond})"))
        return aggs


_KINDS = (cat.Count, cat.DaysSince, cat.NightShare, cat.Trend, cat.Sessions, cat.DistinctModels,
          cat.TopModelShare, cat.ContactStat, cat.Static, cat.History, cat.LeadColumn)


# --------------------------------------------------------------------------- whole history
#
# Every History feature is a formula over its group's aggregates of the visible events: count,
# value sum and value count (over a window or the whole history), first and last ts, distinct
# active days. The engines differ only in how they get the aggregates (numpy sums of the
# per (lead, type, day) reduction in compute() and the kept rollups; SQL in build_sql()); the
# formulas below are written once and evaluated by either engine's operations.


def history_value(f: cat.History, agg, ops):
    """Feature ``f`` from ``agg(kind, window_days)`` (kind: count, vsum, vn, first, last,
    days; first/last missing while the group has no visible event) with ``ops``."""
    w = f.window_days
    if f.stat == "count":
        return agg("count", w)
    if f.stat == "value_sum":
        return ops.when_positive(agg("vn", w), agg("vsum", w))
    if f.stat == "value_mean":
        return ops.ratio(agg("vsum", w), agg("vn", w))
    if f.stat == "tenure":
        return ops.ago(agg("first"))
    if f.stat == "since_last":
        return ops.ago(agg("last"))
    if f.stat == "active_days":
        return agg("days")
    gap = ops.ratio(ops.days_between(agg("first"), agg("last")), ops.minus(agg("days"), 1))
    if f.stat == "typical_gap":
        return gap
    if f.stat == "overdue":
        return ops.ratio(ops.ago(agg("last")), gap)
    if f.stat == "pace_trend":
        long_run = ops.ratio(agg("count"), ops.at_least(ops.ago(agg("first")), w))
        return ops.ratio(ops.per(agg("count", w), w), long_run)
    raise ValueError(f"{f.name}: unknown history stat {f.stat!r}")


class _NpOps:
    """history_value's operations on numpy arrays (missing: NaN)."""

    def __init__(self, a: int):
        self.a = a

    def ago(self, t):
        return (self.a - t) / US_PER_DAY

    @staticmethod
    def days_between(t0, t1):
        return (t1 - t0) / US_PER_DAY

    @staticmethod
    def ratio(x, y):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(y > 0, x / y, np.nan)

    @staticmethod
    def when_positive(c, x):
        return np.where(c > 0, x, np.nan)

    @staticmethod
    def minus(x, c):
        return x - c

    @staticmethod
    def at_least(x, c):
        return np.maximum(x, c)  # missing stays missing

    @staticmethod
    def per(x, c):
        return x / c


class _SqlOps:
    """history_value's operations as SQL (missing: NULL), the same arithmetic."""

    def __init__(self, us: str):
        self.us = us

    def ago(self, t):
        return f"(({self.us}) - ({t})) / {US_PER_DAY}.0"

    @staticmethod
    def days_between(t0, t1):
        return f"(({t1}) - ({t0})) / {US_PER_DAY}.0"

    @staticmethod
    def ratio(x, y):
        return f"(CASE WHEN ({y}) > 0 THEN CAST({x} AS DOUBLE) / ({y}) END)"

    @staticmethod
    def when_positive(c, x):
        return f"(CASE WHEN ({c}) > 0 THEN CAST({x} AS DOUBLE) END)"

    @staticmethod
    def minus(x, c):
        return f"(({x}) - {c})"

    @staticmethod
    def at_least(x, c):
        return f"(CASE WHEN ({x}) IS NOT NULL THEN greatest({x}, {c}.0) END)"

    @staticmethod
    def per(x, c):
        return f"(CAST({x} AS DOUBLE) / {c}.0)"


def _floor_div(x: str, size: int) -> str:
    """``floor(x / size)`` in integer SQL (DuckDB's ``//`` truncates towards zero)."""
    return f"(({x}) - ((({x}) % {size}) + {size}) % {size}) // {size}"


def history_rows_sql(events: str, lk: str, code: str, d: str, vis: str, key: str = "k",
                     hi: str | None = None) -> str:
    """The one reduction of the whole-history features: per (lead, event ``code``, UTC day of
    ``ts``, time bucket ``d``, visibility ``vis``) the count, value sum and count, first and
    last ts. Every aggregate is a sum, min or max, so loads and cutoffs add up; distinct days
    are distinct keys. ``code``, ``d`` and ``vis`` are each engine's keys, as SQL over the
    events ``e``; with ``hi``, only the events before it and ingested by it."""
    before = "" if hi is None else f" AND e.ts < {hi} AND coalesce(e.ingested_at, e.ts) <= {hi}"
    return f"""SELECT l.{key} AS k, {code} AS code,
        CAST({_floor_div('epoch_us(e.ts)', US_PER_DAY)} AS BIGINT) AS day,
        CAST({d} AS BIGINT) AS d, {vis} AS vis, CAST(count(*) AS INTEGER) AS n,
        coalesce(sum(CAST(e.value AS DOUBLE)), 0.0) AS vsum,
        CAST(count(e.value) AS INTEGER) AS vn,
        min(epoch_us(e.ts)) AS tmin, max(epoch_us(e.ts)) AS tmax
    FROM {events} e JOIN {lk} l ON e.lead_id = l.lead_id
    WHERE TRUE{before} GROUP BY ALL"""



# --------------------------------------------------------------------------- time grid


@dataclass(frozen=True)
class Grid:
    """How ``ts`` and visibility are keyed. ``cuts is None`` is the generic form of
    :func:`build_sql`: microsecond buckets and visibility instants."""

    base: int = 0  # buckets are (t - base) // size, with t > base for every event used
    size: int = 1
    cuts: tuple[int, ...] | None = None  # sorted distinct cutoffs (us) of compute()

    def d(self, t: str) -> str:
        if self.cuts is None:
            return t
        wide = (self.cuts[-1] - self.base) // self.size >= 2**31
        return f"CAST(({t} - {self.base}) // {self.size} AS {'BIGINT' if wide else 'INTEGER'})"

    def vis(self, vs: str) -> str:
        """The visibility key of an event visible from ``vs``, comparable with a cutoff's."""
        if self.cuts is None:
            return vs
        c = self.cuts
        if len(c) == 1:
            return "CAST(0 AS INTEGER)"
        steps = {b - a for a, b in itertools.pairwise(c)}
        if len(steps) == 1:
            s = steps.pop()
            return (f"CAST(CASE WHEN {vs} <= {c[0]} THEN 0 "
                    f"ELSE ({vs} - {c[0]} + {s - 1}) // {s} END AS INTEGER)")
        whens = " ".join(f"WHEN {vs} <= {x} THEN {i}" for i, x in enumerate(c))
        return f"CAST(CASE {whens} ELSE {len(c)} END AS INTEGER)"

    def bucket(self, us: int) -> int:
        return (us - self.base) // self.size

    def window(self, days: int) -> int:
        return days * US_PER_DAY // self.size

    @staticmethod
    def for_cutoffs(cuts: Sequence[int], span_us: int) -> Grid:
        size = US_PER_DAY
        for c in cuts[1:]:
            size = math.gcd(size, c - cuts[0])
        base = cuts[0] - size * (span_us // size + 2)
        return Grid(base=base, size=size, cuts=tuple(cuts))


@dataclass(frozen=True)
class _Cut:
    """How the per-cutoff aggregates refer to the cutoff: literals for one cutoff of
    compute(), columns of the joined ``cuts`` relation in build_sql()."""

    D: str  # the cutoff's bucket
    key: str  # the cutoff's visibility key (compared with g.vis)
    us: str  # epoch microseconds of the cutoff, inside the per-cutoff aggregates
    out_us: str  # the same in the output row
    as_of: str  # the TIMESTAMPTZ in the output row
    join: str = ""  # joins the cutoff relation (build_sql)
    group: str = ""  # extra grouping columns (build_sql)

    @staticmethod
    def literal(grid: Grid, index: int) -> _Cut:
        us = grid.cuts[index]
        return _Cut(D=str(grid.bucket(us)), key=str(index), us=str(us), out_us=str(us),
                    as_of=ts_lit(us))


_GENERIC_CUT = _Cut(D="c.cut", key="c.cut", us="c.cut", out_us="epoch_us(b.as_of)",
                    as_of="b.as_of", join="JOIN cuts c ON g.vis <= c.cut{key}", group=", c.as_of")


# --------------------------------------------------------------------------- local time


def tz_offsets(con, zones: Sequence[str], lo_us: int, hi_us: int) -> dict[str, list]:
    """For each zone, [(from_us, offset_us), ...] over [lo, hi]: the UTC offsets that DuckDB's
    ICU ``timezone()`` applies and the exact second at which each starts (sampled hourly, then
    the changes pinned down to the minute and to the second)."""
    h0 = lo_us // US_PER_HOUR * US_PER_HOUR - US_PER_HOUR
    h1 = hi_us // US_PER_HOUR * US_PER_HOUR + 2 * US_PER_HOUR
    zs = ", ".join(f"({_in([z])[1:-1]})" for z in zones)

    def offsets(points: list[tuple[str, int]]) -> list[int]:
        if not points:
            return []
        vals = ", ".join(f"({i}, {_in([z])[1:-1]}, {p})" for i, (z, p) in enumerate(points))
        return [r[0] for r in con.execute(
            f"SELECT epoch_us(timezone(z, make_timestamptz(p))) - p FROM (VALUES {vals}) "
            f"v(i, z, p) ORDER BY i").fetchall()]

    rows = con.execute(
        f"SELECT z, g, epoch_us(timezone(z, make_timestamptz(g))) - g FROM (VALUES {zs}) zs(z), "
        f"range({h0}, {h1}, {US_PER_HOUR}) r(g) ORDER BY z, g").fetchall()
    out: dict[str, list] = {}
    for z, grp in itertools.groupby(rows, key=lambda r: r[0]):
        grp = list(grp)
        segs = [(None, grp[0][2])]
        for (_, g, off), (_, _, nxt) in itertools.pairwise(grp):
            if nxt == off:
                continue
            # the change lies in (g, g + 1h]: find its minute, then its second
            step, start = US_PER_HOUR, g
            for unit in (US_PER_MIN, 1_000_000):
                pts = [start + unit * j for j in range(1, step // unit + 1)]
                first = next(p for p, o in zip(pts, offsets([(z, p) for p in pts]), strict=True)
                             if o == nxt)
                step, start = unit, first - unit
            segs.append((start + 1_000_000, nxt))
        out[z] = segs
    return out


def local_hour_sql(offsets: dict | None, ts: str, t: str, tz: str) -> str:
    """The local hour of ``ts`` (epoch us ``t``) in zone ``tz``: through ICU, or — given the
    zones' offsets, keyed by the value of ``tz`` (a name or a zone number) — as integer
    arithmetic (the same result, without a zone lookup per row)."""
    if offsets is None:
        return f"hour(timezone({tz}, {ts}))"
    whens = []
    for z, segs in offsets.items():
        off = str(segs[0][1])
        if len(segs) > 1:
            inner = " ".join(f"WHEN {t} < {start} THEN {prev}"
                             for (_, prev), (start, _) in itertools.pairwise(segs))
            off = f"CASE {inner} ELSE {segs[-1][1]} END"
        whens.append(f"WHEN {z if isinstance(z, int) else _in([z])[1:-1]} THEN {off}")
    if not whens:
        return "CAST(NULL AS INTEGER)"
    return f"(({t} + CASE {tz} {' '.join(whens)} END) // {US_PER_HOUR}) % 24"


# --------------------------------------------------------------------------- relations


def leads_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The columns of table ``leads``."""
    return [d[0] for d in con.sql("SELECT * FROM leads LIMIT 0").description]


def lead_column_sql(f: cat.LeadColumn, present: bool, ref: str | None = None) -> str:
    """An extra lead column as its feature reads it: a number (text that does not parse is
    missing) or trimmed text; missing when the leads table lacks the column (a model trained
    on a CRM field scores data without it)."""
    num = f.dtype != "category"
    if not present:
        return "CAST(NULL AS DOUBLE)" if num else "CAST(NULL AS VARCHAR)"
    q = ref or '"' + f.column.replace('"', '""') + '"'
    if num:
        return f"TRY_CAST(NULLIF(trim(CAST({q} AS VARCHAR)), '') AS DOUBLE)"
    return f"NULLIF(trim(CAST({q} AS VARCHAR)), '')"


def _leads_star(features: Sequence[cat.Feature], columns: Sequence[str] | None) -> str:
    """``*`` of table ``leads`` for the job: its contract columns (the extra ones, named
    anything, stay out of the job's relations) and the lead-column features, named as the
    features (``columns``: the table's, None when not known: every column then counts as
    present)."""
    extra = extra_lead_columns(columns) if columns is not None else []
    star = "*" if not extra else "* EXCLUDE (" + ", ".join(
        '"' + c.replace('"', '""') + '"' for c in extra) + ")"
    have = None if columns is None else set(columns)
    for f in features:
        if isinstance(f, cat.LeadColumn):
            star += f', {lead_column_sql(f, have is None or f.column in have)} AS "{f.name}"'
    return star


def _lk_sql(hi: str, star: str = "*") -> str:
    """Leads created by the last cutoff, numbered in lead_id order (``k``)."""
    return (f"SELECT CAST(row_number() OVER (ORDER BY lead_id) AS INTEGER) AS k, "
            f"epoch_us(created_at) AS created_us, {star} FROM leads "
            f"WHERE {lead_exists_sql('created_at', hi)}")


def status_sql(events: str, lk: str, key: str = "k", hi: str | None = None) -> str:
    """Per lead of ``lk`` (keyed by its column ``key``): the first instant an order
    (``vs_order``) and a closing event (``vs_close``) of table ``events`` is visible; with
    ``hi``, of the events before it. Shared by the feature job and the kept rollups."""
    before = "" if hi is None else f" AND e.ts < {hi}"
    return f"""SELECT l.{key} AS k,
        min(CASE WHEN e.event_type = 'order' THEN {VS} END) AS vs_order, min({VS}) AS vs_close
    FROM {events} e JOIN {lk} l ON e.lead_id = l.lead_id
    WHERE e.event_type IN {_in(CLOSING_TYPES)}{before} GROUP BY l.{key}"""


def contact_rows_sql(contacts: str, lk: str, key: str = "k", hi: str | None = None) -> str:
    """One row per contact attempt in table ``contacts`` of the leads in ``lk`` (before
    ``hi``), as :func:`contact_stats` reads them (in no order). Shared by the feature job and
    the kept rollups."""
    before = "" if hi is None else f" WHERE c.ts < {hi}"
    return f"""SELECT l.{key} AS k, epoch_us(c.ts) AS t,
        coalesce(c.outcome IN {_in(RESPONSE_OUTCOMES)}, FALSE) AS resp,
        coalesce(c.outcome = 'replied', FALSE) AS replied,
        coalesce(c.channel = 'phone', FALSE) AS phone,
        coalesce(c.channel IN {_in(MESSAGE_CHANNELS)}, FALSE) AS msg
    FROM {contacts} c JOIN {lk} l ON c.lead_id = l.lead_id{before}"""


def _common(plan: Plan, lk: str, hi: str) -> list[tuple[str, str]]:
    """Status (first instant an order / a closing event is visible) and contacts."""
    out = [("status", status_sql("events", lk, hi=hi))]
    if plan.contacts:
        out.append(("contacts", f"""SELECT l.k, epoch_us(c.ts) AS t,
        coalesce(c.outcome IN {_in(RESPONSE_OUTCOMES)}, FALSE) AS resp,
        coalesce(c.outcome = 'replied', FALSE) AS replied,
        coalesce(c.channel = 'phone', FALSE) AS phone,
        coalesce(c.channel IN {_in(MESSAGE_CHANNELS)}, FALSE) AS msg,
        -- position in the lead's log; on a tie in time an answer counts as the later attempt
        row_number() OVER (PARTITION BY l.k ORDER BY c.ts,
            coalesce(c.outcome IN {_in(RESPONSE_OUTCOMES)}, FALSE)) AS rn
    FROM contacts c JOIN {lk} l ON c.lead_id = l.lead_id WHERE c.ts < {hi}"""))
    return out


def _sessions_sql(grid: Grid, src: str, gap_us: int) -> tuple[str, str, str]:
    """(cand, fix, sess) SQL for one session gap over ``src`` rows (k, t, vis); ``{cand}`` and
    ``{fix}`` name the first two.

    ``cand`` keeps representatives (the first row of equal ts in (t, vis) order) that can open
    a session: ``fresh`` ones have no event within the gap before them and open one at every
    cutoff where they are visible; for the others, whose previous event became visible later
    than themselves, ``fix`` finds the smallest visibility key within the gap (``w``): they
    open a session at the cutoffs where they are visible and nothing before them is yet.
    A representative whose previous event was visible no later than itself never opens one.
    """
    cand = f"""SELECT k, t, vis, p_t IS NULL OR p_t < t - {gap_us} AS fresh
        FROM (SELECT k, t, vis, lag(t) OVER w AS p_t, lag(vis) OVER w AS p_vis FROM ({src})
              WINDOW w AS (PARTITION BY k ORDER BY t, vis))
        WHERE (p_t IS NULL OR p_t < t) AND (p_t IS NULL OR p_t < t - {gap_us} OR p_vis > vis)"""
    fix = f"""SELECT r.k, r.t, min(s.vis) AS w
        FROM {{cand}} r JOIN ({src}) s ON s.k = r.k AND s.t >= r.t - {gap_us} AND s.t < r.t
        WHERE NOT r.fresh GROUP BY r.k, r.t"""
    sess = f"""SELECT k, {grid.d('t')} AS d, vis, w, CAST(count(*) AS INTEGER) AS n FROM (
            SELECT k, t, vis, NULL AS w FROM {{cand}} WHERE fresh
            UNION ALL
            SELECT r.k, r.t, r.vis, f.w FROM {{cand}} r JOIN {{fix}} f ON f.k = r.k AND f.t = r.t
            WHERE f.w > r.vis) GROUP BY ALL"""
    return cand, fix, sess


class _Aggs:
    """Deduplicated aggregate expressions of one per-cutoff query."""

    def __init__(self):
        self.items: dict[str, str] = {}

    def add(self, sql: str) -> str:
        if sql not in self.items:
            self.items[sql] = f"a{len(self.items)}"
        return self.items[sql]

    def select(self) -> str:
        return ", ".join(f"{sql} AS {alias}" for sql, alias in self.items.items())


def _sum(cut: _Cut, grid: Grid, days: int, full: int, expr: str) -> str:
    """Sum of ``expr`` over the rows within ``days`` of the cutoff (rows are already limited to
    ``full`` days)."""
    if days >= full:
        return f"sum({expr})"
    return f"sum(CASE WHEN g.d >= {cut.D} - {grid.window(days)} THEN {expr} ELSE 0 END)"


def _count_expr(plan: Plan, f: cat.Count) -> str:
    if f.other:
        return " + ".join(["g.n_other", *(f"g.n_{c}" for c in plan.other_codes[1:])])
    if f.events is None:
        return "g.n"
    return " + ".join(f"g.n_{plan.code[e]}" for e in f.events)


def _per_cutoff_sql(plan: Plan, grid: Grid, cut: _Cut, t: dict[str, str], only_open: bool,
                    per_lead: bool = False) -> str:
    """Features of every lead created by the cutoff(s) in ``cut`` from the relations ``t``."""
    join_key = " AND c.k = g.k" if per_lead else ""
    join = cut.join.format(key=join_key)
    grp = f"g.k{cut.group}"
    on = "{x}.k = b.k" + (" AND {x}.as_of = b.as_of" if cut.group else "")
    ctes: list[str] = []
    joins: list[str] = []
    feats: dict[str, object] = {}
    lb = plan.lookback
    if plan.main:
        ag = _Aggs()
        single: dict[tuple[str, int], str] = {}  # (event type, days) -> alias
        for f in plan.features:
            if isinstance(f, cat.Count) and f.events is not None and len(f.events) == 1:
                d = plan.days(f.window_days)
                single[f.events[0], d] = ag.add(_sum(cut, grid, d, lb, _count_expr(plan, f)))
        for f in plan.features:
            if isinstance(f, cat.Count):
                d = plan.days(f.window_days)
                parts = [single.get((e, d)) for e in (f.events or ())]
                if f.events is not None and len(f.events) > 1 and all(parts):
                    feats[f.name] = " + ".join(f"x0.{p}" for p in parts)  # from its types
                else:
                    feats[f.name] = "x0." + ag.add(_sum(cut, grid, d, lb, _count_expr(plan, f)))
            elif isinstance(f, cat.DaysSince):
                feats[f.name] = ag.add(f"max(g.m_{plan.since.index(f.events)})")
            elif isinstance(f, cat.NightShare):
                d = plan.days(f.window_days)
                num = ag.add(_sum(cut, grid, d, lb, f"g.h_{plan.hours.index(f.local_hours)}"))
                feats[f.name] = (num, ag.add(_sum(cut, grid, d, lb, "g.n")))
            elif isinstance(f, cat.Trend):
                feats[f.name] = (ag.add(_sum(cut, grid, plan.days(f.short_days), lb, "g.n")),
                                 ag.add(_sum(cut, grid, plan.days(f.long_days), lb, "g.n")))
        ctes.append(f"""a_main AS (
    SELECT {grp}, {ag.select()}
    FROM {t['main']} g {join}
    WHERE g.vis <= {cut.key} AND g.d >= {cut.D} - {grid.window(lb)}
    GROUP BY {grp})""")
        joins.append(f"LEFT JOIN a_main x0 ON {on.format(x='x0')}")
    for gi, gap in enumerate(plan.gaps):
        sess = [f for f in plan.features if isinstance(f, cat.Sessions) and f.gap_minutes == gap]
        full = max(plan.days(f.window_days) for f in sess)
        ag = _Aggs()
        for f in sess:
            feats[f.name] = ag.add(_sum(cut, grid, plan.days(f.window_days), full, "g.n"))
        ctes.append(f"""a_sess{gi} AS (
    SELECT {grp}, {ag.select()}
    FROM {t[f'sess{gap}']} g {join}
    WHERE g.vis <= {cut.key} AND (g.w IS NULL OR g.w > {cut.key})
      AND g.d >= {cut.D} - {grid.window(full)}
    GROUP BY {grp})""")
        joins.append(f"LEFT JOIN a_sess{gi} xs{gi} ON {on.format(x=f'xs{gi}')}")
    if plan.model_feats:
        full = max(plan.days(f.window_days) for f in plan.model_feats)
        ws = sorted({plan.days(f.window_days) for f in plan.model_feats})
        per_model = ", ".join(f"{_sum(cut, grid, w, full, 'g.n')} AS n{w}" for w in ws)
        outer = ", ".join(
            f"count_if(n{w} > 0) AS models{w}, max(n{w}) / NULLIF(sum(n{w}), 0) AS top{w}"
            for w in ws)
        grp_m = "k" + (", as_of" if cut.group else "")
        ctes.append(f"""a_models AS (
    SELECT {grp_m}, {outer} FROM (
        SELECT {grp}, g.model, {per_model}
        FROM {t['model']} g {join}
        WHERE g.vis <= {cut.key} AND g.d >= {cut.D} - {grid.window(full)}
        GROUP BY {grp}, g.model)
    GROUP BY {grp_m})""")
        joins.append(f"LEFT JOIN a_models xm ON {on.format(x='xm')}")
    if plan.contacts:
        ct_join = cut.join.replace("g.vis <= c.cut{key}", "g.t < c.cut" + join_key)
        ctes.append(f"""a_contacts AS (
    SELECT {grp}, count(*) AS attempts, count_if(g.resp) AS responses,
        avg(g.resp::INT) AS response_rate, count_if(g.replied) AS replies,
        avg(CASE WHEN g.phone THEN g.resp::INT END) AS phone_rate,
        avg(CASE WHEN g.msg THEN g.resp::INT END) AS msg_rate,
        count_if(g.phone) AS phone_n, count_if(g.msg) AS msg_n,
        max(CASE WHEN g.resp THEN g.t END) AS last_resp_t,
        -- the attempts before a cutoff are a prefix of the log: count = last position
        count(*) - coalesce(max(CASE WHEN g.resp THEN g.rn END), 0) AS streak,
        max(g.t) AS last_t, min(g.t) AS first_t
    FROM {t['contacts']} g {ct_join}
    WHERE g.t < {cut.us}
    GROUP BY {grp})""")
        joins.append(f"LEFT JOIN a_contacts xc ON {on.format(x='xc')}")
    hist: dict[str, str] = {}
    if plan.history:
        ag = _Aggs()
        sql_ops = _SqlOps(cut.out_us)
        for f in plan.history:
            cond = "TRUE" if f.events is None else f"g.code IN ({plan.codes(f.events)})"

            def agg(kind: str, w: int | None = None, cond: str = cond) -> str:
                c = cond if w is None else f"{cond} AND g.d >= {cut.us} - {w * US_PER_DAY}"
                if kind in ("first", "last"):
                    fn, col = ("min", "tmin") if kind == "first" else ("max", "tmax")
                    return "xh." + ag.add(f"{fn}(CASE WHEN {c} THEN g.{col} END)")
                a = ag.add(f"count(DISTINCT CASE WHEN {c} THEN g.day END)" if kind == "days"
                           else f"sum(CASE WHEN {c} THEN g.{'n' if kind == 'count' else kind} "
                                f"ELSE 0 END)")
                return f"coalesce(xh.{a}, 0)"

            hist[f.name] = history_value(f, agg, sql_ops)
        ctes.append(f"""a_hist AS (
    SELECT {grp}, {ag.select()}
    FROM {t['hist']} g {join}
    WHERE g.vis <= {cut.key}
    GROUP BY {grp})""")
        joins.append(f"LEFT JOIN a_hist xh ON {on.format(x='xh')}")
    joins.append(f"LEFT JOIN {t['status']} st ON st.k = b.k")
    us = cut.out_us
    sel = ["b.lead_id", "b.dealer_id", f"{cut.as_of} AS as_of",
           f"NOT coalesce(st.vs_close <= {us}, FALSE) AS is_open",
           f"coalesce(st.vs_order <= {us}, FALSE) AS is_owner"]
    for f in plan.features:
        v = feats.get(f.name)
        if isinstance(f, cat.Static):
            if f.column == "lead_age_days":
                e = f"({us} - b.created_us) / {US_PER_DAY}.0"
            elif f.column == "days_since_order":
                e = (f"CASE WHEN st.vs_order <= {us} THEN ({us} - st.vs_order) / {US_PER_DAY}.0 "
                     f"END")
            elif f.dtype == "category":
                e = f'b."{f.column}"'
            else:
                e = f'CAST(b."{f.column}" AS DOUBLE)'
        elif isinstance(f, cat.LeadColumn):
            e = f'b."{f.name}"'
        elif isinstance(f, cat.History):
            e = f"CAST({hist[f.name]} AS DOUBLE)"
        elif isinstance(f, cat.Count):
            e = f"CAST(coalesce({v}, 0) AS DOUBLE)"
        elif isinstance(f, cat.DaysSince):
            e = f"({us} - x0.{v}) / {US_PER_DAY}.0"
        elif isinstance(f, cat.NightShare):
            e = f"CAST(x0.{v[0]} AS DOUBLE) / NULLIF(CAST(x0.{v[1]} AS DOUBLE), 0)"
        elif isinstance(f, cat.Trend):
            e = (f"(CAST(x0.{v[0]} AS DOUBLE) * {f.long_days} / {f.short_days}) "
                 f"/ NULLIF(CAST(x0.{v[1]} AS DOUBLE), 0)")
        elif isinstance(f, cat.Sessions):
            e = f"CAST(coalesce(xs{plan.gaps.index(f.gap_minutes)}.{v}, 0) AS DOUBLE)"
        elif isinstance(f, cat.DistinctModels):
            e = f"CAST(coalesce(xm.models{plan.days(f.window_days)}, 0) AS DOUBLE)"
        elif isinstance(f, cat.TopModelShare):
            e = f"CAST(xm.top{plan.days(f.window_days)} AS DOUBLE)"
        else:  # ContactStat
            e = {
                "attempts": "CAST(coalesce(xc.attempts, 0) AS DOUBLE)",
                "responses": "CAST(coalesce(xc.responses, 0) AS DOUBLE)",
                "replies": "CAST(coalesce(xc.replies, 0) AS DOUBLE)",
                "phone_attempts": "CAST(coalesce(xc.phone_n, 0) AS DOUBLE)",
                "message_attempts": "CAST(coalesce(xc.msg_n, 0) AS DOUBLE)",
                "response_rate": "CAST(xc.response_rate AS DOUBLE)",
                "phone_response_rate": "CAST(xc.phone_rate AS DOUBLE)",
                "message_response_rate": "CAST(xc.msg_rate AS DOUBLE)",
                "days_since": f"({us} - xc.last_t) / {US_PER_DAY}.0",
                "days_since_response": f"({us} - xc.last_resp_t) / {US_PER_DAY}.0",
                "unanswered_streak": "CAST(coalesce(xc.streak, 0) AS DOUBLE)",
                # a lead called before its record was made (pre-lead history) waited 0 hours
                "uncontacted_hours": (f"greatest(coalesce(xc.first_t, {us}) - b.created_us, 0)"
                                      f" / {US_PER_HOUR}.0"),
            }[f.stat]
        sel.append(f'{e} AS "{f.name}"')
    where = "TRUE" if cut.group else f"b.created_us <= {us}"
    if only_open:
        where += f" AND NOT coalesce(st.vs_close <= {us}, FALSE)"
    order = "b.as_of, b.lead_id" if cut.group else "b.k"
    return (("WITH " + ",\n".join(ctes) + "\n") if ctes else "") + (
        f"SELECT {', '.join(sel)}\nFROM {t['base']} b\n" + "\n".join(joins)
        + f"\nWHERE {where}\nORDER BY {order}")


def _events(lk: str, lo: str, hi: str, cols: str = "", where: str = "") -> str:
    """Events of the leads in ``lk`` with ``lo <= ts < hi``, visible by ``hi``."""
    return f"""SELECT l.k, epoch_us(e.ts) AS t, {VS} AS vs{cols}
        FROM events e JOIN {lk} l ON e.lead_id = l.lead_id
        WHERE e.ts >= {lo} AND e.ts < {hi} AND coalesce(e.ingested_at, e.ts) <= {hi}{where}"""


# --------------------------------------------------------------------------- build_sql


def build_sql(features: Sequence[cat.Feature], lookback_days: int = cat.LOOKBACK_DAYS,
              per_lead: bool = False, leads_columns: Sequence[str] | None = None) -> str:
    """The whole feature query over tables leads/events/contacts and ``_cutoffs(as_of)``, as
    one statement, for any cutoffs; ordered by (as_of, lead_id). :func:`compute` runs the same
    relations staged, with buckets fitted to its cutoffs.

    ``per_lead``: ``_cutoffs`` also has a ``lead_id`` column and each cutoff applies to that
    lead only (features just before each contact attempt, say), joined by key instead of
    fanning every cutoff out to every lead. ``leads_columns``: the columns of table ``leads``
    (:func:`leads_columns`), for lead-column features of columns it lacks.
    """
    plan = Plan(features, lookback_days)
    grid = Grid()
    spans = plan.spans()
    hi, lo = "(SELECT max(as_of) FROM _cutoffs)", "(SELECT min(as_of) FROM _cutoffs)"

    def since(us: int) -> str:
        return f"{lo} - to_microseconds({us})"

    rels: list[tuple[str, str]] = [("lk", _lk_sql(hi, _leads_star(plan.features,
                                                                   leads_columns)))]
    if per_lead:
        rels += [("cuts", """SELECT DISTINCT c.as_of, epoch_us(c.as_of) AS cut, l.k
        FROM _cutoffs c JOIN lk l ON c.lead_id = l.lead_id"""),
                 ("base", "SELECT l.*, c.as_of FROM lk l JOIN cuts c ON c.k = l.k "
                          f"WHERE {lead_exists_sql('l.created_at', 'c.as_of')}")]
    else:
        rels += [("cuts", "SELECT DISTINCT as_of, epoch_us(as_of) AS cut FROM _cutoffs"),
                 ("base", "SELECT l.*, c.as_of FROM lk l JOIN cuts c "
                          f"ON {lead_exists_sql('l.created_at', 'c.as_of')}")]
    rels += _common(plan, "lk", hi)
    if plan.main:
        hour = local_hour_sql(None, "e.ts", "epoch_us(e.ts)", "l.tz")
        cols = f", {plan.code_sql('e.event_type')} AS code"
        if plan.hours:
            cols += f", CASE WHEN e.ts >= {since(spans['hours'])} THEN {hour} END AS lh"
        one = []  # every event its own row: the per-cutoff query sums them
        for n, a in plan.main_aggs(bool(plan.hours)):
            if a == "count(*)":
                one.append(f"CAST(1 AS INTEGER) AS {n}")
            elif a.startswith("count_if("):
                one.append(f"CAST(coalesce({a[9:-1]}, FALSE) AS INTEGER) AS {n}")
            elif a.startswith("max("):
                one.append(f"{a[4:-1]} AS {n}")
            else:
                one.append(f"CAST({a} AS INTEGER) AS {n}")
        rels.append(("main", f"SELECT x.k, x.t AS d, x.vs AS vis, {', '.join(one)} FROM ("
                             f"{_events('lk', since(spans['main']), hi, cols)}) x"))
    for gap in plan.gaps:
        src = f"SELECT k, t, vs AS vis FROM ({_events('lk', since(spans['sessions']), hi)})"
        cand, fix, sess = _sessions_sql(grid, src, gap * US_PER_MIN)
        names = {"cand": f"cand{gap}", "fix": f"fix{gap}"}
        rels += [(f"cand{gap}", cand), (f"fix{gap}", fix.format(**names)),
                 (f"sess{gap}", sess.format(**names))]
    if plan.history:  # the same reduction, keyed by the instant and the visibility instant
        rels.append(("hist", history_rows_sql("events", "lk", plan.code_sql("e.event_type"),
                                              "epoch_us(e.ts)", VS, hi=hi)))
    if plan.model_feats:
        src = _events("lk", since(spans["models"]), hi, ", e.model AS model",
                      " AND e.model IS NOT NULL")
        rels.append(("model", f"SELECT k, t AS d, vs AS vis, model, 1 AS n FROM ({src})"))
    t = {n: n for n, _ in rels}
    final = _per_cutoff_sql(plan, grid, _GENERIC_CUT, t, False, per_lead)
    mat = {"lk", "cuts"} | {f"cand{g}" for g in plan.gaps}
    head = "WITH " + ",\n".join(
        f"{n} AS {'MATERIALIZED ' if n in mat else ''}({sql})" for n, sql in rels)
    if final.startswith("WITH "):
        return head + ",\n" + final[len("WITH "):]
    return head + "\n" + final


# --------------------------------------------------------------------------- compute


def _cutoffs_table(con: duckdb.DuckDBPyConnection, as_of: Sequence[pd.Timestamp]) -> list[int]:
    ts = [pd.Timestamp(t) for t in as_of]
    ts = [t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in ts]
    if not ts:
        raise ValueError("at least one cutoff (as_of) is needed")
    con.execute("CREATE OR REPLACE TEMP TABLE _cutoffs (as_of TIMESTAMPTZ)")
    con.executemany("INSERT INTO _cutoffs VALUES (?)", [[t.to_pydatetime()] for t in ts])
    return [t.value // 1000 for t in ts]


def fetch(con, sql: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A query's columns as numpy arrays (NULLs must have been replaced in SQL). With ``keys``
    (the rows being sorted by them), also the start of each run of equal keys (``_starts``),
    the run of each row (``_run``) and the keys of each run (``_<key>``)."""
    res = con.execute(sql).fetchnumpy()
    return _with_runs({n: np.asarray(v) for n, v in res.items()}, keys)


def _with_runs(rows: dict[str, np.ndarray], keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """``rows`` plus the runs of equal ``keys`` (see :func:`fetch`)."""
    if keys:
        starts = runs(*(rows[k] for k in keys))
        flag = np.zeros(len(rows[keys[0]]), dtype=np.int32)
        flag[starts] = 1
        rows["_run"] = np.cumsum(flag, dtype=np.int32) - 1
        rows["_starts"] = starts
        for k in keys:
            rows["_" + k] = rows[k][starts]
    return rows


def runs(*keys: np.ndarray) -> np.ndarray:
    """Start positions of the runs of equal keys in rows sorted by them."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


_NEVER = np.iinfo(np.int64).max
#: Up to this many (window, model, lead) cells the model features use a dense matrix kept up to
#: date across cutoffs; beyond it (many distinct models), per-cutoff sums over sorted runs.
_DENSE_MODELS = 50_000_000


class Reduced:
    """compute()'s events, reduced once for all cutoffs by DuckDB into small per-lead tables
    (numpy arrays), plus the leads, their status and their contacts."""

    def __init__(self, con, plan: Plan, grid: Grid, cuts: list[int]):
        self.plan, self.grid, self.cuts = plan, grid, cuts
        self._state: dict[str, dict] = {}
        self._done = -1
        first, hi = cuts[0], ts_lit(cuts[-1])
        spans = plan.spans()
        tmp: list[str] = []

        def make(name: str, sql: str) -> str:
            tmp.append(f"{_TMP}{name}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {tmp[-1]} AS {sql}")
            return tmp[-1]

        def drop(name: str) -> None:  # as soon as it has been read: less memory at the peak
            con.execute(f"DROP TABLE IF EXISTS {name}")

        try:
            self.zones = [r[0] for r in con.execute(
                f"SELECT DISTINCT tz FROM leads WHERE created_at <= {hi} AND tz IS NOT NULL "
                f"ORDER BY 1").fetchall()]
            tzi = " ".join(f"WHEN {_in([z])[1:-1]} THEN {i}" for i, z in enumerate(self.zones))
            tzi = f"CAST(CASE tz {tzi} END AS SMALLINT)" if tzi else "CAST(NULL AS SMALLINT)"
            lk = make("lk", f"SELECT CAST(row_number() OVER (ORDER BY lead_id) - 1 AS INTEGER) "
                            f"AS k, epoch_us(created_at) AS created_us, {tzi} AS _tzi, "
                            f"{_leads_star(plan.features, leads_columns(con))} "
                            f"FROM leads WHERE {lead_exists_sql('created_at', hi)} "
                            f"ORDER BY k")
            self.leads = con.sql(f"SELECT * FROM {lk} ORDER BY k").to_arrow_table()
            self.n = self.leads.num_rows
            st = fetch(con, f"SELECT k, coalesce(vs_order, {_NEVER}) AS o, "
                             f"coalesce(vs_close, {_NEVER}) AS c FROM ("
                             + _common(plan, lk, hi)[0][1] + ")")
            self.vs_order = np.full(self.n, _NEVER, dtype=np.int64)
            self.vs_close = np.full(self.n, _NEVER, dtype=np.int64)
            self.vs_order[st["k"]] = st["o"]
            self.vs_close[st["k"]] = st["c"]
            if plan.contacts:  # in no order: the stats need none (see _contacts_at)
                self.ct = fetch(con, contact_rows_sql("contacts", lk, hi=hi))
            if plan.history:  # every day of history, however old
                self.hist = fetch(con, history_rows_sql(
                    "events", lk, plan.code_sql("e.event_type"),
                    _floor_div(f"epoch_us(e.ts) - {grid.base}", grid.size), grid.vis(VS),
                    hi=hi))
            self._events(con, make, drop, lk, first, hi, spans)
        finally:
            for name in tmp:
                con.execute(f"DROP TABLE IF EXISTS {name}")

    @classmethod
    def of_rows(cls, plan: Plan, grid: Grid, cuts: list[int], leads: pa.Table,
                vs_order: np.ndarray, vs_close: np.ndarray, rows: dict) -> Reduced:
        """The reduction of one cutoff (``cuts == [c]``) from rows reduced elsewhere (kept
        rollups, :mod:`leadscore.features.rollup`): every row visible (``vis`` 0), ``d`` in
        ``grid``'s buckets, ``leads`` in ``k`` order with ``created_us``. ``rows`` holds
        what the plan needs: main, latest, hours, sess (by gap), model (+ n_models), ct,
        hist (``history_rows_sql``'s columns, ``d`` in ``grid``'s buckets)."""
        if len(cuts) != 1:
            raise ValueError("kept rollups give one cutoff at a time")
        self = cls.__new__(cls)
        self.plan, self.grid, self.cuts = plan, grid, cuts
        self._state, self._done = {}, -1
        self.leads, self.n = leads, leads.num_rows
        self.vs_order, self.vs_close = vs_order, vs_close
        self.sess = rows.get("sess", {})
        for name in ("main", "hours", "ct", "hist"):
            if name in rows:
                setattr(self, name, rows[name])
        if "latest" in rows:
            self.latest = {**rows["latest"], "_at": np.array([0, len(rows["latest"]["k"])])}
        if "model" in rows:
            self.n_models = rows["n_models"]
            wins = {grid.window(plan.days(f.window_days)) for f in plan.model_feats}
            self.models_dense = self.n_models * self.n * len(wins) <= _DENSE_MODELS
            m = rows["model"]
            if self.models_dense:
                self.model = m
            else:
                order = np.lexsort((m["mc"], m["k"]))
                self.model = _with_runs({c: v[order] for c, v in m.items()}, ("k", "mc"))
                self.model["_lead_starts"] = runs(self.model["_k"])
        return self

    def _segments(self) -> list[int] | None:
        """Bucket edges at which some window of some cutoff starts or ends. Rows only need
        their ``d`` up to these: every bucket between two edges is in the same windows at
        every cutoff. None when there are too many edges to be worth a CASE per event."""
        plan, grid = self.plan, self.grid
        days = {plan.lookback} | {plan.days(w) for w in self._main_windows()}
        days |= {plan.days(f.window_days) for f in plan.features
                 if isinstance(f, cat.Sessions | cat.DistinctModels | cat.TopModelShare)}
        edges = sorted({grid.bucket(c) - grid.window(w) for c in self.cuts for w in days | {0}})
        return edges if len(edges) <= 16 else None

    def _events(self, con, make, drop, lk: str, first: int, hi: str, spans: dict) -> None:
        plan, grid = self.plan, self.grid
        d_sql, vis_sql = grid.d("epoch_us(e.ts)"), grid.vis(VS)
        edges = self._segments()
        if edges is not None:  # d := the start of its segment (below every window: edge-1)
            whens = " ".join(f"WHEN epoch_us(e.ts) >= {grid.base + e * grid.size} THEN {e}"
                             for e in reversed(edges))
            d_sql = f"CAST(CASE {whens} ELSE {edges[0] - 1} END AS INTEGER)"
        recent = None
        if spans["recent"]:
            cols = f", {d_sql} AS d, {vis_sql} AS vis"
            if plan.main:
                cols += f", {plan.code_sql('e.event_type')} AS code"
            if plan.hours:
                night_lo = first - spans["hours"]
                if night_lo > 0 and self.zones:  # zone offsets: integer arithmetic per event
                    offsets = tz_offsets(con, self.zones, night_lo, self.cuts[-1])
                    offsets = {i: offsets[z] for i, z in enumerate(self.zones)}
                    hour = local_hour_sql(offsets, "e.ts", "epoch_us(e.ts)", "l._tzi")
                else:
                    hour = local_hour_sql(None, "e.ts", "epoch_us(e.ts)", "l.tz")
                cols += (f", CAST(CASE WHEN e.ts >= {ts_lit(night_lo)} THEN {hour} END "
                         f"AS TINYINT) AS lh")
            if plan.model_feats:
                cols += (f", CASE WHEN e.ts >= {ts_lit(first - spans['models'])} "
                         f"THEN e.model END AS model")
            recent = make("recent", _events(lk, ts_lit(first - spans["recent"]), hi, cols))
        if plan.main:  # (lead, bucket, visibility, event type) -> count, latest ts
            parts = []
            main_lo = first - spans["main"]
            if recent is not None:
                parts.append(f"SELECT k, d, vis, code, CAST(count(*) AS INTEGER) AS n, "
                             f"max(t) AS m FROM {recent} WHERE t >= {main_lo} GROUP BY ALL")
            old_hi = first - spans["recent"]
            if main_lo < old_hi:  # older events: reduced first, joined to the leads after
                parts.append(f"""SELECT l.k, x.d, x.vis, x.code, x.n, x.m FROM (
                    SELECT e.lead_id, {d_sql} AS d, {vis_sql} AS vis,
                           {plan.code_sql('e.event_type')} AS code,
                           CAST(count(*) AS INTEGER) AS n, max(epoch_us(e.ts)) AS m
                    FROM events e WHERE e.ts >= {ts_lit(main_lo)} AND e.ts < {ts_lit(old_hi)}
                      AND coalesce(e.ingested_at, e.ts) <= {hi}
                    GROUP BY ALL) x JOIN {lk} l ON x.lead_id = l.lead_id""")
            main = make("main", " UNION ALL ".join(f"({p})" for p in parts))
            self.main = fetch(con, f"SELECT k, d, vis, code, n FROM {main}")
            # the latest event per (lead, code) by visibility: the recency features
            self.latest = fetch(con, f"SELECT k, code, vis, max(m) AS m FROM {main} "
                                      f"GROUP BY ALL ORDER BY vis")
            self.latest["_at"] = np.searchsorted(self.latest["vis"],
                                                 np.arange(len(self.cuts) + 1))
            drop(main)
        if plan.hours:
            self.hours = fetch(con, f"SELECT k, d, vis, lh, CAST(count(*) AS INTEGER) AS n "
                                     f"FROM {recent} WHERE lh IS NOT NULL GROUP BY ALL")
        self.sess = {}
        for gap in plan.gaps:
            g_us = gap * US_PER_MIN
            src = f"SELECT k, t, vis, d FROM {recent} WHERE t >= {first - spans['sessions']}"
            cand = make(f"cand{gap}", f"""SELECT k, t, vis, d,
                    p_t IS NULL OR p_t < t - {g_us} AS fresh
                FROM (SELECT k, t, vis, d, lag(t) OVER w AS p_t, lag(vis) OVER w AS p_vis
                      FROM ({src}) WINDOW w AS (PARTITION BY k ORDER BY t, vis))
                WHERE (p_t IS NULL OR p_t < t)
                  AND (p_t IS NULL OR p_t < t - {g_us} OR p_vis > vis)""")
            starts = f"SELECT k, d, vis, {len(self.cuts)} AS w FROM {cand} WHERE fresh"
            if con.execute(f"SELECT count(*) FROM {cand} WHERE NOT fresh").fetchall()[0][0]:
                starts += f""" UNION ALL SELECT r.k, r.d, r.vis, f.w FROM {cand} r JOIN (
                    SELECT r.k, r.t, min(s.vis) AS w FROM {cand} r JOIN ({src}) s
                      ON s.k = r.k AND s.t >= r.t - {g_us} AND s.t < r.t
                    WHERE NOT r.fresh GROUP BY r.k, r.t) f ON f.k = r.k AND f.t = r.t
                    WHERE NOT r.fresh AND f.w > r.vis"""
            self.sess[gap] = fetch(con, f"SELECT k, d, vis, w, CAST(count(*) AS INTEGER) AS n "
                                         f"FROM ({starts}) GROUP BY ALL")
            drop(cand)
        if plan.model_feats:  # models numbered 1.. (in name order)
            names = make("models", f"SELECT model, CAST(row_number() OVER (ORDER BY model) "
                                   f"AS INTEGER) AS mc FROM (SELECT DISTINCT model FROM "
                                   f"{recent} WHERE model IS NOT NULL)")
            self.n_models = con.execute(f"SELECT count(*) FROM {names}").fetchall()[0][0] + 1
            wins = {grid.window(plan.days(f.window_days)) for f in plan.model_feats}
            self.models_dense = self.n_models * self.n * len(wins) <= _DENSE_MODELS
            sql = f"""SELECT x.k, x.d, x.vis, m.mc, x.n
                FROM (SELECT k, d, vis, model, CAST(count(*) AS INTEGER) AS n
                      FROM {recent} WHERE model IS NOT NULL GROUP BY ALL) x
                JOIN {names} m ON x.model = m.model"""
            if self.models_dense:
                self.model = fetch(con, sql)
            else:  # sorted, read by runs of (lead, model)
                self.model = fetch(con, sql + " ORDER BY x.k, m.mc", ("k", "mc"))
                self.model["_lead_starts"] = runs(self.model["_k"])
        if recent is not None:
            drop(recent)

    # ------------------------------------------------------------------ one cutoff

    def at(self, i: int, only_open: bool, order: np.ndarray | None = None) -> pa.Table:
        """The output rows at cutoff ``i``: every lead created by then, in lead_id order
        (``k`` order unless ``order``, the leads' ``k`` in lead_id order, says otherwise)."""
        plan, grid, a = self.plan, self.grid, self.cuts[i]
        if i != self._done + 1:
            raise ValueError("cutoffs are computed in order, each once")
        self._done = i
        D = grid.bucket(a)
        created = self.leads.column("created_us").to_numpy()
        keep = np.flatnonzero(created <= a) if order is None else order[created[order] <= a]
        is_open = ~(self.vs_close <= a)
        if only_open:
            keep = keep[is_open[keep]]
        out: dict[str, np.ndarray] = {}
        if plan.main:
            out.update(self._main_at(i, D, a))
        if plan.hours:
            out.update(self._hours_at(i, D, out))
        for gap in plan.gaps:
            out.update(self._sessions_at(gap, i, D))
        if plan.model_feats:
            out.update(self._models_at(i, D))
        if plan.contacts:
            out.update(self._contacts_at(a))
        if plan.history:
            out.update(self._history_at(i, D, a))
        cols = {
            "lead_id": self.leads.column("lead_id").take(keep),
            "dealer_id": self.leads.column("dealer_id").take(keep),
            "as_of": pa.array(np.full(len(keep), a, dtype="datetime64[us]"),
                              type=pa.timestamp("us", tz="UTC")),
            "is_open": pa.array(is_open[keep]),
            "is_owner": pa.array((self.vs_order <= a)[keep]),
        }
        for f in plan.features:
            if isinstance(f, cat.LeadColumn):
                if f.name in self.leads.column_names:
                    cols[f.name] = self.leads.column(f.name).take(keep)
                else:  # kept rollups' leads without the column: missing, as in SQL
                    cols[f.name] = pa.nulls(len(keep), pa.float64() if f.dtype == "float"
                                            else pa.string())
                continue
            if isinstance(f, cat.Static):
                if f.column == "lead_age_days":
                    v = (a - created) / US_PER_DAY
                elif f.column == "days_since_order":
                    v = np.where(self.vs_order <= a, (a - self.vs_order) / US_PER_DAY, np.nan)
                else:
                    col = self.leads.column(f.column).take(keep)
                    cols[f.name] = col if f.dtype == "category" else col.cast(pa.float64())
                    continue
            else:
                v = out[f.name]
            # a copy: the arrays may be views of state that the next cutoff updates
            v = np.array(v, dtype=np.float64) if order is None and len(keep) == len(v) else \
                np.asarray(v, dtype=np.float64)[keep]
            cols[f.name] = pa.array(v, from_pandas=True)
        return pa.table(cols)

    @staticmethod
    def _window_sums(rows: dict, sel: np.ndarray, D: int, windows: list[int]) -> np.ndarray:
        """Sums of ``n`` over the selected rows of each run (see :func:`fetch`) within each
        window (buckets, ascending): [runs x windows]."""
        nw, n_runs = len(windows), len(rows["_starts"])
        cls = np.searchsorted(np.asarray(windows), D - rows["d"], side="left")
        np.minimum(cls, nw - 1, out=cls)  # rows beyond the last window are not selected
        sums = np.bincount(rows["_run"].astype(np.int64) * nw + cls,
                           weights=np.where(sel, rows["n"], 0), minlength=n_runs * nw)
        return sums.reshape(n_runs, nw).cumsum(axis=1)

    def _slots(self) -> tuple[np.ndarray, int]:
        """Row of each event code in the per-lead matrices."""
        slot = np.zeros(256, dtype=np.int64)
        for i, c in enumerate(self.plan.code.values()):
            slot[c] = i + 1
        slot[_OTHER_CODE] = len(self.plan.code) + 1
        return slot, len(self.plan.code) + 2

    def _slide(self, name: str, rows: dict, slot: np.ndarray, n_slots: int, wins: list[int],
               i: int, D: int, key: str) -> np.ndarray:
        """Sums of ``n`` per (window, slot, lead) over the rows visible at cutoff ``i`` within
        each window (buckets), kept up to date from one cutoff to the next: the rows that
        became visible are added, the rows that left a window taken away."""
        n, nw, size = self.n, len(wins), n_slots * self.n
        if len(self.cuts) == 1:  # every row is visible at the one cutoff: nothing to keep
            cls = np.searchsorted(np.asarray(wins), D - rows["d"], side="left")
            keep = cls < nw
            flat = (cls[keep] * size + slot[rows[key][keep]] * n + rows["k"][keep])
            add = np.bincount(flat, weights=rows["n"][keep], minlength=nw * size)
            add = add.reshape(nw, size)
            for j in range(1, nw):  # windows are nested (in place: cheaper than cumsum)
                add[j] += add[j - 1]
            return add.reshape(nw, n_slots, n)
        st = self._state.get(name)
        if st is None:  # the rows in order of visibility and of bucket, once
            vis = rows["vis"]
            by_vis = np.argsort(vis.astype(np.int16 if len(self.cuts) < 2**15 else np.int32),
                                kind="stable").astype(np.int32)
            by_d = np.argsort(rows["d"], kind="stable").astype(np.int32)
            st = {"by_vis": by_vis,
                  "vis_at": np.searchsorted(vis[by_vis], np.arange(len(self.cuts) + 1)),
                  "by_d": by_d, "d_sorted": rows["d"][by_d],
                  "acc": np.zeros((nw, size), dtype=np.int32)}
            self._state[name] = st
        acc = st["acc"]
        new = st["by_vis"][st["vis_at"][i]:st["vis_at"][i + 1]]  # visible from this cutoff
        d_new = rows["d"][new]
        flat = slot[rows[key][new]] * n + rows["k"][new]
        n_new = rows["n"][new]
        if i == 0:  # the first cutoff: everything at once, windows nested
            cls = np.searchsorted(np.asarray(wins), D - d_new, side="left")
            keep = cls < nw
            add = np.bincount(cls[keep] * size + flat[keep], weights=n_new[keep],
                              minlength=nw * size).reshape(nw, size)
            acc += np.cumsum(add, axis=0).astype(np.int32)
            return acc.reshape(nw, n_slots, n)
        prev = self.grid.bucket(self.cuts[i - 1])
        for j, w in enumerate(wins):
            inside = d_new >= D - w
            # rows that were in the window at the previous cutoff and are not any more
            lo, hi = np.searchsorted(st["d_sorted"], [prev - w, D - w], side="left")
            old = st["by_d"][lo:hi]
            old = old[rows["vis"][old] <= i - 1]
            idx = np.concatenate([flat[inside], slot[rows[key][old]] * n + rows["k"][old]])
            wts = np.concatenate([n_new[inside], -rows["n"][old]])
            if len(idx):
                acc[j] += np.bincount(idx, weights=wts, minlength=size).astype(np.int32)
        return acc.reshape(nw, n_slots, n)

    def _latest(self, i: int, slot: np.ndarray, n_slots: int) -> np.ndarray:
        """The latest visible event per (slot, lead) at cutoff ``i``."""
        if "latest" not in self._state:
            self._state["latest"] = np.full(n_slots * self.n, -1, dtype=np.int64)
        mx = self._state["latest"]
        lt = self.latest
        part = slice(lt["_at"][i], lt["_at"][i + 1])  # one row per (lead, code) here
        flat = slot[lt["code"][part]] * self.n + lt["k"][part]
        np.maximum.at(mx, flat, lt["m"][part])  # event codes may share a slot
        return mx.reshape(n_slots, self.n)

    def _main_at(self, i: int, D: int, a: int) -> dict[str, np.ndarray]:
        plan, grid = self.plan, self.grid
        wins = sorted({grid.window(plan.days(w)) for w in self._main_windows()})
        col = {w: j for j, w in enumerate(wins)}
        slot, n_slots = self._slots()
        per = self._slide("main", self.main, slot, n_slots, wins, i, D, "code")
        latest = self._latest(i, slot, n_slots)
        total = per.sum(axis=1)  # [window, lead]
        out: dict[str, np.ndarray] = {}
        lookback_us = plan.lookback * US_PER_DAY
        for f in plan.features:
            if isinstance(f, cat.Count):
                w = col[grid.window(plan.days(f.window_days))]
                if f.other:  # n_slots - 1: _OTHER_CODE's slot
                    out[f.name] = per[w, [n_slots - 1, *(slot[c] for c in
                                                         plan.other_codes[1:])]].sum(axis=0)
                elif f.events is None:
                    out[f.name] = total[w]
                else:
                    out[f.name] = per[w, [slot[plan.code[e]] for e in f.events]].sum(axis=0)
            elif isinstance(f, cat.DaysSince):
                rows = (slice(None) if f.events is None
                        else [slot[plan.code[e]] for e in f.events])
                m = latest[rows].max(axis=0)
                # the latest visible event, if it lies within the lookback
                out[f.name] = np.where((m >= 0) & (a - m <= lookback_us),
                                       (a - m) / US_PER_DAY, np.nan)
            elif isinstance(f, cat.Trend):
                s = total[col[grid.window(plan.days(f.short_days))]]
                lg = total[col[grid.window(plan.days(f.long_days))]]
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[f.name] = np.where(lg > 0, (s * f.long_days / f.short_days) / lg, np.nan)
        self._total = {w: total[j] for w, j in col.items()}
        return out

    def _main_windows(self) -> list[int]:
        ws = [self.plan.lookback]
        for f in self.plan.features:
            if isinstance(f, cat.Count | cat.NightShare):
                ws.append(f.window_days)
            elif isinstance(f, cat.Trend):
                ws += [f.short_days, f.long_days]
        return ws

    def _hours_at(self, i: int, D: int, out: dict) -> dict[str, np.ndarray]:
        plan, grid = self.plan, self.grid
        wins = sorted({grid.window(plan.days(f.window_days)) for f in plan.features
                       if isinstance(f, cat.NightShare)})
        per = self._slide("hours", self.hours, np.arange(24, dtype=np.int64), 24, wins, i, D,
                          "lh")
        hours = np.arange(24)
        res = {}
        for f in plan.features:
            if not isinstance(f, cat.NightShare):
                continue
            w = grid.window(plan.days(f.window_days))
            start, end = f.local_hours
            inside = ((hours >= start) | (hours < end)) if start > end else \
                ((hours >= start) & (hours < end))
            num = per[wins.index(w)][inside].sum(axis=0)
            den = self._total[w]
            with np.errstate(divide="ignore", invalid="ignore"):
                res[f.name] = np.where(den > 0, num / den, np.nan)
        return res

    def _sessions_at(self, gap: int, i: int, D: int) -> dict[str, np.ndarray]:
        plan, grid, g = self.plan, self.grid, self.sess[gap]
        feats = [f for f in plan.features if isinstance(f, cat.Sessions) and f.gap_minutes == gap]
        full = max(grid.window(plan.days(f.window_days)) for f in feats)
        sel = (g["vis"] <= i) & (g["w"] > i) & (g["d"] >= D - full)
        k, age, nn = g["k"][sel], D - g["d"][sel], g["n"][sel]
        return {f.name: np.bincount(k, weights=np.where(
            age <= grid.window(plan.days(f.window_days)), nn, 0), minlength=self.n)
            for f in feats}

    def _models_at(self, i: int, D: int) -> dict[str, np.ndarray]:
        plan, grid, g = self.plan, self.grid, self.model
        n = self.n
        wins = sorted({grid.window(plan.days(f.window_days)) for f in plan.model_feats})
        if self.models_dense:  # a [window, model, lead] matrix kept up to date
            per = self._slide("models", g, np.arange(self.n_models, dtype=np.int64),
                              self.n_models, wins, i, D, "mc")
            res = {}
            for f in plan.model_feats:
                m = per[wins.index(grid.window(plan.days(f.window_days)))]
                if isinstance(f, cat.DistinctModels):
                    res[f.name] = (m > 0).sum(axis=0)
                else:
                    tot = m.sum(axis=0)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        res[f.name] = np.where(tot > 0, m.max(axis=0) / tot, np.nan)
            return res
        sel = (g["vis"] <= i) & (g["d"] >= D - max(wins))
        sums = self._window_sums(g, sel, D, wins)
        rk = g["_k"].astype(np.int64)
        lead_starts = g["_lead_starts"]  # runs are sorted by lead
        res = {}
        for f in plan.model_feats:
            s = sums[:, wins.index(grid.window(plan.days(f.window_days)))]
            if isinstance(f, cat.DistinctModels):
                res[f.name] = np.bincount(rk, weights=(s > 0), minlength=n)
            else:
                top = np.zeros(n)
                if len(lead_starts):
                    top[rk[lead_starts]] = np.maximum.reduceat(s, lead_starts)
                tot = np.bincount(rk, weights=s, minlength=n)
                with np.errstate(divide="ignore", invalid="ignore"):
                    res[f.name] = np.where(tot > 0, top / tot, np.nan)
        return res

    def _history_groups(self) -> list[dict]:
        """Per history group: the indices of its reduced rows in order of visibility (``at``:
        where each cutoff's start), its active (lead, day) keys by the first cutoff that sees
        them, and whole-history totals kept up to date from one cutoff to the next.

        The rows are sorted by visibility once for every group, and each group holds only
        indices into them: a night (one cutoff) over a whole history stays a few passes over
        the rows, not a sort and a copy of every column per group."""
        plan, h, n = self.plan, self.hist, self.n
        nc = len(self.cuts)
        vis, code = h["vis"], h["code"]
        by_vis = np.argsort(vis, kind="stable")
        # one int64 per (lead, day), sorted once with the visibility as the last key: the
        # first row of a (lead, day) run in a group is where that day becomes active
        day0 = int(h["day"].min()) if len(h["day"]) else 0
        span = int(h["day"].max()) - day0 + 1 if len(h["day"]) else 1
        lead_day = h["k"].astype(np.int64) * span + (h["day"].astype(np.int64) - day0)
        by_day = np.argsort(lead_day * (nc + 1) + vis, kind="stable")
        member = np.zeros(int(code.max()) + 1 if len(code) else 1, dtype=bool)
        groups = []
        for types in plan.hgroups:
            if types is None:
                idx, o = by_vis, by_day
            else:
                member[:] = False
                member[[c for c in (plan.code[t] for t in types) if c < len(member)]] = True
                idx, o = by_vis[member[code[by_vis]]], by_day[member[code[by_day]]]
            ld = lead_day[o]
            first = o[np.flatnonzero(np.r_[True, ld[1:] != ld[:-1]])] if len(o) else o
            first = first[np.argsort(vis[first], kind="stable")]  # in visibility order
            groups.append({
                "idx": idx, "at": np.searchsorted(vis[idx], np.arange(nc + 1)),
                "days_k": h["k"][first],
                "days_at": np.searchsorted(vis[first], np.arange(nc + 1)),
                "count": np.zeros(n), "vsum": np.zeros(n), "vn": np.zeros(n),
                "days": np.zeros(n), "first": np.full(n, _NEVER, dtype=np.int64),
                "last": np.full(n, -_NEVER, dtype=np.int64)})
        return groups

    def _history_at(self, i: int, D: int, a: int) -> dict[str, np.ndarray]:
        """The History features at cutoff ``i`` (bucket ``D``, instant ``a``): whole-history
        totals gain the rows that became visible; windowed sums are taken afresh."""
        if len(self.cuts) == 1:
            return self._history_once(D, a)
        plan, grid, n, h = self.plan, self.grid, self.n, self.hist
        if "hist" not in self._state:
            self._state["hist"] = self._history_groups()
        out: dict[str, np.ndarray] = {}
        ops = _NpOps(a)
        sums = (("count", "n"), ("vsum", "vsum"), ("vn", "vn"))
        for types, g in zip(plan.hgroups, self._state["hist"], strict=True):
            lo, hi = g["at"][i:i + 2]
            new = g["idx"][lo:hi]
            k = h["k"][new]
            for c, col in sums:
                g[c] += np.bincount(k, weights=h[col][new], minlength=n)
            np.minimum.at(g["first"], k, h["tmin"][new])
            np.maximum.at(g["last"], k, h["tmax"][new])
            g["days"] += np.bincount(g["days_k"][g["days_at"][i]:g["days_at"][i + 1]],
                                     minlength=n)
            first = np.where(g["first"] == _NEVER, np.nan, g["first"].astype(np.float64))
            last = np.where(g["last"] == -_NEVER, np.nan, g["last"].astype(np.float64))
            seen = g["idx"][:hi]
            d_seen = h["d"][seen]
            windowed: dict[int, dict[str, np.ndarray]] = {}
            for w in plan.hwindows:
                inside = seen[d_seen >= D - grid.window(w)]
                kw = h["k"][inside]
                windowed[w] = {c: np.bincount(kw, weights=h[col][inside], minlength=n)
                               for c, col in sums}

            def agg(kind: str, w: int | None = None, g=g, first=first, last=last,
                    windowed=windowed):
                if kind == "first":
                    return first
                if kind == "last":
                    return last
                return g[kind] if w is None else windowed[w][kind]

            for f in plan.history:
                if f.events == types:
                    out[f.name] = history_value(f, agg, ops)
        return out

    def _history_once(self, D: int, a: int) -> dict[str, np.ndarray]:
        """The History features of a single cutoff (a night): the same aggregates as
        :meth:`_history_at`, from per (lead, event code) sums that every group then adds up,
        so each column is one pass over the rows whatever the number of groups. Distinct
        active days take one sort by (lead, day), cheap when the rows come in sorted runs
        (the kept rollups store them so)."""
        plan, grid, n, h = self.plan, self.grid, self.n, self.hist
        sel = h["vis"] <= 0
        every = bool(sel.all())
        col = (lambda c: h[c]) if every else (lambda c: h[c][sel])
        k, raw = col("k"), col("code")
        # the codes present, numbered densely (the "other" code is 255)
        present = np.flatnonzero(np.bincount(raw)) if len(raw) else np.zeros(1, np.int64)
        dense = np.zeros(int(present[-1]) + 1, dtype=np.uint8)
        dense[present] = np.arange(len(present))
        code = dense[raw]
        ncode = len(present)
        key = np.multiply(k, ncode, dtype=np.int64)  # a whole history's rows: no temporaries
        key += code
        size = n * ncode
        sums = (("count", "n"), ("vsum", "vsum"), ("vn", "vn"))

        def per_code(rows: np.ndarray | None) -> dict[str, np.ndarray]:
            kk = key if rows is None else key[rows]
            return {c: np.bincount(kk, weights=col(v) if rows is None else col(v)[rows],
                                   minlength=size).reshape(n, ncode) for c, v in sums}

        total = per_code(None)
        windowed: dict[int, dict[str, np.ndarray]] = {}
        d = col("d")
        oldest = int(d.min()) if len(d) else D
        for w in plan.hwindows:  # a window holding every row is the whole history
            lo = D - grid.window(w)
            windowed[w] = total if oldest >= lo else per_code(np.flatnonzero(d >= lo))
        first = np.full(size, _NEVER, dtype=np.int64)
        last = np.full(size, -_NEVER, dtype=np.int64)
        np.minimum.at(first, key, col("tmin"))
        np.maximum.at(last, key, col("tmax"))
        first, last = first.reshape(n, ncode), last.reshape(n, ncode)
        members = []
        for types in plan.hgroups:
            members.append(np.ones(ncode, dtype=bool) if types is None else
                           np.isin(present, [plan.code[t] for t in types]))
        needs_days = {f.events for f in plan.history
                      if f.stat in ("active_days", "typical_gap", "overdue")}
        days = self._history_days(k, code, col("day"), [
            m if types in needs_days else None
            for types, m in zip(plan.hgroups, members, strict=True)])
        out: dict[str, np.ndarray] = {}
        ops = _NpOps(a)
        # (lead, code) sums → (lead, group) sums: one product per sum and window
        member = np.stack(members, axis=1).astype(np.float64)
        grouped = {None: {c: v @ member for c, v in total.items()}}
        for w, part in windowed.items():
            grouped[w] = grouped[None] if part is total else \
                {c: v @ member for c, v in part.items()}
        for gi, (types, m) in enumerate(zip(plan.hgroups, members, strict=True)):
            f0 = first[:, m].min(axis=1) if m.any() else np.full(n, _NEVER)
            l0 = last[:, m].max(axis=1) if m.any() else np.full(n, -_NEVER)
            fst = np.where(f0 == _NEVER, np.nan, f0.astype(np.float64))
            lst = np.where(l0 == -_NEVER, np.nan, l0.astype(np.float64))

            def agg(kind: str, w: int | None = None, fst=fst, lst=lst, gi=gi):
                if kind == "first":
                    return fst
                if kind == "last":
                    return lst
                if kind == "days":
                    return days[gi]
                return grouped[w][kind][:, gi]

            for f in plan.history:
                if f.events == types:
                    out[f.name] = history_value(f, agg, ops)
        return out

    def _history_days(self, k: np.ndarray, code: np.ndarray, day: np.ndarray,
                      members: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """Per history group (``None``: not needed), each lead's distinct active days (UTC
        days with an event of the group's codes). A (lead, day) grid when it is small: each
        cell ORs the group bits of its rows' codes (eight groups per scatter); else one sort
        by (lead, day) and a pass over its runs."""
        n = self.n
        if not len(k):
            return [None if m is None else np.zeros(n) for m in members]
        day0 = int(day.min())
        span = int(day.max()) - day0 + 1
        lead_day = np.multiply(k, span, dtype=np.int64)
        lead_day += day
        lead_day -= day0
        out: list[np.ndarray | None] = []
        if n * span <= _DAYS_GRID:
            wanted = [i for i, m in enumerate(members) if m is not None]
            days: dict[int, np.ndarray] = {}
            grid = np.zeros(n * span, dtype=np.uint8)
            for c0 in range(0, len(wanted), 8):
                chunk = wanted[c0:c0 + 8]
                bits = np.zeros(len(members[chunk[0]]), dtype=np.uint8)
                for j, i in enumerate(chunk):
                    bits[members[i]] |= np.uint8(1 << j)
                grid[:] = 0
                np.bitwise_or.at(grid, lead_day, bits[code])
                cells = grid.reshape(n, span)
                for j, i in enumerate(chunk):
                    days[i] = ((cells >> j) & 1).sum(axis=1, dtype=np.float64)
            return [days.get(i) for i in range(len(members))]
        o = np.argsort(lead_day, kind="stable")
        lead_day, k, code = lead_day[o], k[o], code[o]
        starts = np.flatnonzero(np.r_[True, lead_day[1:] != lead_day[:-1]])
        k_run = k[starts]
        for m in members:
            if m is None:
                out.append(None)
            elif m.all():
                out.append(np.bincount(k_run, minlength=n).astype(np.float64))
            else:
                hit = np.maximum.reduceat(m[code].view(np.uint8), starts)
                out.append(np.bincount(k_run, weights=hit, minlength=n))
        return out

    def _contacts_at(self, a: int) -> dict[str, np.ndarray]:
        return contact_stats(self.ct, self.n, a, self.plan.contacts,
                             self.leads.column("created_us").to_numpy())


def contact_stats(c: dict, n: int, a: int, feats: Sequence[cat.ContactStat],
                  created_us: np.ndarray) -> dict[str, np.ndarray]:
    """The contact features at cutoff ``a`` from attempt rows (k, t, resp, replied, phone, msg)
    in any order. The unanswered streak is the attempts after the last answer in the lead's
    log ordered by (ts, answered): those stamped after it, as an attempt at the same instant
    sorts before the answer — so no sort is needed."""
    sel = c["t"] < a
    k = c["k"][sel].astype(np.int64)
    t = c["t"][sel]
    resp, replied = c["resp"][sel], c["replied"][sel]
    phone, msg = c["phone"][sel], c["msg"][sel]
    low, high = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    attempts = np.bincount(k, minlength=n).astype(np.float64)
    responses = np.bincount(k, weights=resp, minlength=n)
    last_resp_t = np.full(n, low, dtype=np.int64)
    np.maximum.at(last_resp_t, k[resp], t[resp])
    first = np.full(n, high, dtype=np.int64)
    last = np.full(n, low, dtype=np.int64)
    np.minimum.at(first, k, t)
    np.maximum.at(last, k, t)
    seen = attempts > 0
    answered = last_resp_t > low
    res = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for f in feats:
            if f.stat == "attempts":
                v = attempts
            elif f.stat == "responses":
                v = responses
            elif f.stat == "replies":
                v = np.bincount(k, weights=replied, minlength=n)
            elif f.stat == "response_rate":
                v = np.where(seen, responses / attempts, np.nan)
            elif f.stat in ("phone_attempts", "message_attempts"):
                v = np.bincount(k, weights=phone if f.stat == "phone_attempts" else msg,
                                minlength=n)
            elif f.stat in ("phone_response_rate", "message_response_rate"):
                ch = phone if f.stat == "phone_response_rate" else msg
                tries = np.bincount(k, weights=ch, minlength=n)
                ok = np.bincount(k, weights=ch & resp, minlength=n)
                v = np.where(tries > 0, ok / tries, np.nan)
            elif f.stat == "days_since":
                v = np.where(seen, (a - last) / US_PER_DAY, np.nan)
            elif f.stat == "days_since_response":
                v = np.where(answered, (a - last_resp_t) / US_PER_DAY, np.nan)
            elif f.stat == "unanswered_streak":
                v = np.bincount(k, weights=t > last_resp_t[k], minlength=n)
            else:  # uncontacted_hours
                v = np.maximum(np.where(seen, first, a) - created_us, 0) / US_PER_HOUR
            res[f.name] = v
    return res


def compute(
    con: duckdb.DuckDBPyConnection,
    as_of: Sequence[pd.Timestamp],
    features: Sequence[cat.Feature] = cat.CATALOG,
    *,
    only_open: bool = False,
) -> pa.Table:
    """Features for every lead created by each cutoff, as an Arrow table ordered by
    (as_of, lead_id); a cutoff given twice is computed once.

    ``only_open`` keeps leads with no visible order or lost event (the entities the lead models
    score). Output columns: lead_id, dealer_id, as_of, is_open, is_owner, then the features.
    DuckDB reduces the events once for all cutoffs to per-(lead, bucket, visibility) tables
    (see the module docstring); each cutoff is then a few vectorised passes over those.
    """
    cuts = sorted(set(_cutoffs_table(con, as_of)))
    plan = Plan(features, cat.LOOKBACK_DAYS)
    grid = Grid.for_cutoffs(cuts, plan.spans()["all"])
    reduced = Reduced(con, plan, grid, cuts)
    return pa.concat_tables([reduced.at(i, only_open) for i in range(len(cuts))])


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
    return con.sql(build_sql(features, per_lead=True, leads_columns=leads_columns(con))
                   ).to_arrow_table()


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
