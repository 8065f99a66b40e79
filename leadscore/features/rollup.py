"""Feature rollups kept between nights: a night's features from what each load of rows reduced
to, instead of every event of the lookback again.

Why: once the intake kept validated rows (:mod:`leadscore.nightly.intake`), the feature job was
two thirds of a nightly rescoring: each night it read and grouped 90 days of events per lead
to add one day. Here each bucket keeps, per validated load, its rows reduced by (lead, day of
``ts``, day from which the row is visible, event type | local hour | model), which a cutoff
then only filters and sums (numpy, no SQL over the events). A night reduces its own load and
the rollups of the earlier loads stay as they were, because those sums are additive.

The one thing that is not additive is where sessions start: an event that arrives late can
join two sessions into one. So the recent events themselves are kept, sorted by (lead, time),
with when each one's session start stops counting; a night inserts its events and recomputes
that only for the events within the session gap after one of them.

Exactness. Days are UTC days: an event is visible at cutoff ``c`` iff ``vs <= c`` (``vs`` as
in :mod:`leadscore.features.job`), which for a cutoff at midnight of day ``D`` is
``ceil(vs / day) <= D``; its windows hold whole days. So for a midnight cutoff the rollups give
exactly what :func:`job.compute` gives (the tests compare them over several nights, late
rows included). Days older than any cutoff from ``SLACK_DAYS`` before the latest night needs
are not kept (so a night's cost does not grow with the years of history): earlier cutoffs,
and any cutoff that is not a midnight, are computed from the events (:func:`features` says
None). The one exception is the whole-history reduction (``hist``: per lead, event type, day
of ``ts`` and visible day; ``job.history_rows_sql``), kept for every day however old: it
grows with a lead's active days, not with its events.

Kept per bucket in ``<cache>/_features/bucket=N/`` (the intake's cache):
- ``leads-<id>.arrow``: the leads, numbered (``lk``) in the order they arrived;
- ``r-<id>/``: one or more loads' reductions (main, hours, models, status, contacts);
- ``s<gap>-<id>/``: the recent events for the sessions of one session gap;
- ``state.json`` (replaced atomically, written last): the loads absorbed, the files that
  hold them, the first day kept. Files it does not list (a killed run's) are deleted before
  an update.

A bucket starts over — reduces every kept load again — when the intake's loads do not extend
the ones absorbed (the intake started over or was re-bucketed). Merged intake loads keep
their history (``covers``), so a merge costs nothing here.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leadscore import atomic, contract
from leadscore.features import catalog as cat
from leadscore.features import job

DAY = job.US_PER_DAY
FORMAT = 2  # 2: the whole-history reduction (hist)
STATE = "state.json"
DIR = "_features"
#: reductions of more loads than this are rewritten as one file
MAX_FILES = 8
#: cutoffs this many days before the latest night's still come from the rollups
SLACK_DAYS = 7
_NEVER = np.iinfo(np.int64).max
_W_NONE = np.iinfo(np.int32).max  # a session start that no earlier event can cancel


def applies(as_of: pd.Timestamp) -> bool:
    """Whether kept rollups can give the features at ``as_of``: a UTC midnight."""
    return pd.Timestamp(as_of).value % (DAY * 1000) == 0


def segment_loads(segment: dict) -> list[str]:
    """The loads an intake segment holds: itself, or the ones it was merged from."""
    return list(segment.get("covers") or [segment["id"]])


def bucket_dir(cache: Path, bucket: int) -> Path:
    return Path(cache) / DIR / f"bucket={bucket}"


def features(cache: Path, bucket: int, segments: Sequence[dict], as_of: pd.Timestamp,
             feature_list: Sequence[cat.Feature] = cat.CATALOG,
             only: Sequence[str] | None = None) -> pa.Table | None:
    """``job.compute(con, [as_of], feature_list)`` for one bucket of the intake in ``cache``
    (whose kept segments are ``segments``), from the kept rollups, brought up to date first.
    None when they cannot give it: a cutoff that is not a UTC midnight, or one more than
    ``SLACK_DAYS`` before the latest night's (see :meth:`_Store._sessions`). ``only``: the
    rows of these lead ids alone, reducing only their rows (the previous night's features of
    the leads whose score rose or fell, :mod:`leadscore.nightly.previous`)."""
    if not applies(as_of):
        return None
    a = _us(as_of)
    store = _Store(bucket_dir(cache, bucket), Path(cache), bucket)
    plan = job.Plan(feature_list, cat.LOOKBACK_DAYS)
    try:
        store.update(segments, _session_days(plan), a)
    except _Unkeyable:
        return None
    return store.features(plan, a, only)


def _us(ts: pd.Timestamp) -> int:
    t = pd.Timestamp(ts)
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).value // 1000


def _session_days(plan: job.Plan) -> dict[int, int]:
    """Per session gap, the longest window its features look back (days)."""
    out: dict[int, int] = {}
    for f in plan.features:
        if isinstance(f, cat.Sessions):
            out[f.gap_minutes] = max(out.get(f.gap_minutes, 0), plan.days(f.window_days))
    return out


# --------------------------------------------------------------------------- the store


class _Unkeyable(Exception):
    """The kept events' (lead, time) do not fit one 64-bit key."""


class _Store:
    def __init__(self, root: Path, cache: Path, bucket: int):
        self.root, self.cache, self.bucket = root, cache, bucket
        path = root / STATE
        st = json.loads(path.read_text()) if path.is_file() else None
        same = st and st.get("format") == FORMAT and st.get("lookback") == cat.LOOKBACK_DAYS
        self.state = st if same else None

    # ------------------------------------------------------------------ keeping up to date

    def update(self, segments: Sequence[dict], gaps: dict[int, int], as_of_us: int) -> None:
        """Absorb the intake's loads not yet absorbed, and keep session starts for ``gaps``
        (gap minutes → the days the features look back) exact from ``as_of_us``."""
        absorbed = set(self.state["loads"]) if self.state else set()
        new_segs, restart = [], self.state is None
        for s in segments:
            loads = set(segment_loads(s))
            if loads <= absorbed:
                continue
            if loads & absorbed:  # merged from absorbed and unabsorbed loads
                restart = True
            new_segs.append(s["id"])
        if absorbed - {x for s in segments for x in segment_loads(s)}:
            restart = True  # the intake started over, or was bucketed anew
        if restart:
            self.state, new_segs = None, [s["id"] for s in segments]
        kept = (self.state or {}).get("sessions", {})
        missing = [g for g, days in gaps.items()
                   if str(g) not in kept or kept[str(g)]["days"] < days]
        if not new_segs and not missing:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        today = as_of_us // DAY
        st = self.state or {"format": FORMAT, "lookback": cat.LOOKBACK_DAYS,
                            "loads": [], "leads": None, "n_leads": 0,
                            "event_types": [], "models": [], "files": [], "sessions": {},
                            "from_day": today - cat.LOOKBACK_DAYS - SLACK_DAYS}
        st = json.loads(json.dumps(st))  # a copy: the kept state changes only on commit
        uid = uuid.uuid4().hex[:12]
        written: list[Path] = []
        con = contract.connect(threads=2)
        try:
            self._views(con, segments, new_segs, st)
            if new_segs:
                self._absorb(con, st, uid, written)
                st["loads"] += [x for s in segments if s["id"] in new_segs
                                for x in segment_loads(s)]
            else:
                con.execute("CREATE TABLE lmz AS SELECT lk, lead_id FROM lm")
            for gap in {*gaps, *map(int, st["sessions"])}:
                self._sessions(con, st, gap, gaps.get(gap, 0), bool(new_segs), as_of_us, uid,
                               written)
        finally:
            con.close()
        if len(st["files"]) > MAX_FILES:  # one file, without the days no cutoff needs
            st["from_day"] = max(st["from_day"], today - cat.LOOKBACK_DAYS - SLACK_DAYS)
            parts = [_load(self.root / f) for f in st["files"]]
            rows = {t: _gather([p[t] for p in parts], tuple(parts[0][t])) for t in parts[0]}
            for name in ("main", "hours", "model"):
                keep = rows[name]["d"] >= st["from_day"]
                rows[name] = {c: v[keep] for c, v in rows[name].items()}
            merged = self._path(f"r-{uid}m")
            _save(merged, rows)
            written.append(merged)
            st["files"] = [merged.name]
        self._commit(st)

    def _path(self, name: str) -> Path:
        return self.root / name

    def _sweep(self) -> None:
        keep = {STATE}
        if self.state:
            keep |= {*self.state["files"], *(s["dir"] for s in self.state["sessions"].values())}
            if self.state["leads"]:
                keep.add(self.state["leads"])
        for f in self.root.iterdir():
            if f.name not in keep:
                shutil.rmtree(f) if f.is_dir() else f.unlink()

    def _commit(self, st: dict) -> None:
        atomic.write_text(self.root / STATE, json.dumps(st, indent=1))
        self.state = st
        self._sweep()

    def _views(self, con, segments: Sequence[dict], new_segs: list[str], st: dict) -> None:
        """leads/events/contacts: the bucket's kept rows; new_*: those of the new loads;
        lm: the lead map kept so far."""
        for table, columns in contract.TABLES.items():
            cols = ", ".join(f'"{c.name}"' for c in columns)
            folder = self.cache / table / f"bucket={self.bucket}"
            for name, ids in ((table, [s["id"] for s in segments]), (f"new_{table}", new_segs)):
                files = [f for i in ids for f in sorted(folder.glob(f"seg-{i}-*.parquet"))]
                if files:
                    paths = ", ".join(contract.lit(str(p)) for p in files)
                    con.execute(f"CREATE VIEW {name} AS SELECT {cols} FROM read_parquet("
                                f"[{paths}], hive_partitioning=false)")
                else:
                    con.execute(f"CREATE TABLE {name} AS {contract.empty_sql(table)}")
        if st["leads"]:
            ids = self._leads(st).select(["lead_id"])
            con.register("lm_kept", ids.append_column("lk", pa.array(
                np.arange(ids.num_rows, dtype=np.int32))))
            con.execute("CREATE TABLE lm AS SELECT * FROM lm_kept")
            con.unregister("lm_kept")
        else:
            con.execute("CREATE TABLE lm (lead_id VARCHAR, lk INTEGER)")

    def _absorb(self, con, st: dict, uid: str, written: list) -> None:
        """Number the new leads, reduce the new loads' rows and keep both."""
        n0 = st["n_leads"]
        con.execute(f"""INSERT INTO lm SELECT lead_id,
            CAST({n0} + row_number() OVER (ORDER BY lead_id) - 1 AS INTEGER)
            FROM (SELECT DISTINCT lead_id FROM new_leads WHERE lead_id NOT IN
                  (SELECT lead_id FROM lm))""")
        table = con.sql(f"""SELECT epoch_us(l.created_at) AS created_us, l.*
            FROM lm m JOIN new_leads l ON l.lead_id = m.lead_id WHERE m.lk >= {n0}
            ORDER BY m.lk""").to_arrow_table()
        if st["leads"]:
            old = self._leads(st)
            table = pa.concat_tables([old, table.cast(old.schema)])
        st["n_leads"] = con.execute("SELECT count(*) FROM lm").fetchone()[0]
        if table.num_rows != st["n_leads"]:
            raise RuntimeError(f"{self.root}: {st['n_leads']} leads numbered, "
                               f"{table.num_rows} kept")
        leads = self._path(f"leads-{uid}.arrow")
        tmp = leads.with_name(f".{leads.name}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        os.replace(tmp, leads)
        written.append(leads)
        st["leads"] = leads.name
        zones = [r[0] for r in con.execute(
            "SELECT DISTINCT tz FROM leads WHERE tz IS NOT NULL ORDER BY 1").fetchall()]
        tzi = " ".join(f"WHEN {contract.lit(z)} THEN {i}" for i, z in enumerate(zones))
        tzi = f"CAST(CASE l.tz {tzi} END AS SMALLINT)" if tzi else "CAST(NULL AS SMALLINT)"
        con.execute(f"CREATE TABLE lmz AS SELECT m.lk, m.lead_id, {tzi} AS tzi "
                    f"FROM lm m JOIN leads l ON l.lead_id = m.lead_id")
        # older days: no cutoff the rollups give needs them (the sessions' horizon is later)
        since = _ts(st["from_day"] * DAY)
        lo, hi = con.execute(f"SELECT epoch_us(min(ts)), epoch_us(max(ts)) FROM new_events "
                             f"WHERE ts >= {since}").fetchone()
        hour = "CAST(NULL AS INTEGER)"
        if lo is not None and lo > 0 and zones:
            offsets = job.tz_offsets(con, zones, lo, hi)
            offsets = {i: offsets[z] for i, z in enumerate(zones)}
            hour = job.local_hour_sql(offsets, "e.ts", "epoch_us(e.ts)", "m.tzi")
        types = [r[0] for r in con.execute(
            "SELECT DISTINCT event_type FROM new_events ORDER BY 1").fetchall()]
        st["event_types"] += [t for t in types if t not in set(st["event_types"])]
        if len(st["event_types"]) >= 2**16:
            raise ValueError(f"{self.cache}: more than 65,535 distinct event types")
        _dictionary(con, "et", "event_type", st["event_types"])
        con.execute(f"""CREATE TABLE x AS SELECT m.lk, epoch_us(e.ts) AS t,
            {job.VS} AS vs, CAST(coalesce(t.et, 0) AS USMALLINT) AS et,
            CAST(coalesce({hour}, -1) AS TINYINT) AS lh, e.model
            FROM new_events e JOIN lmz m ON e.lead_id = m.lead_id
            LEFT JOIN et t ON t.event_type = e.event_type WHERE e.ts >= {since}""")
        day = f"CAST(t // {DAY} AS INTEGER)"
        vday = f"CAST((vs + {DAY - 1}) // {DAY} AS INTEGER)"
        models = [r[0] for r in con.execute(
            "SELECT DISTINCT model FROM x WHERE model IS NOT NULL ORDER BY 1").fetchall()]
        st["models"] += [m for m in models if m not in set(st["models"])]
        _dictionary(con, "mc", "model", st["models"])
        rows = {
            "main": job.fetch(con, f"""SELECT lk, {day} AS d, {vday} AS vd, et,
                CAST(count(*) AS INTEGER) AS n, max(t) AS m FROM x GROUP BY ALL"""),
            "hours": job.fetch(con, f"""SELECT lk, {day} AS d, {vday} AS vd, lh,
                CAST(count(*) AS INTEGER) AS n FROM x WHERE lh >= 0 GROUP BY ALL"""),
            "model": job.fetch(con, f"""SELECT x.lk, x.d, x.vd, c.mc, x.n FROM (
                SELECT lk, {day} AS d, {vday} AS vd, model, CAST(count(*) AS INTEGER) AS n
                FROM x WHERE model IS NOT NULL GROUP BY ALL) x JOIN mc c ON c.model = x.model"""),
            # every day: a lead's status looks at its whole history
            "status": job.fetch(con, f"""SELECT k AS lk,
                coalesce(vs_order, {_NEVER}) AS o, vs_close AS c
                FROM ({job.status_sql("new_events", "lmz", key="lk")})"""),
            "ct": job.fetch(con, job.contact_rows_sql("new_contacts", "lmz", key="lk")),
            # every day, however old, by (lead, type, day, visible day): whole-history features
            "hist": job.fetch(con, f"""SELECT k, code, day, vis, n, vsum, vn, tmin, tmax
                FROM ({job.history_rows_sql(
                    "(SELECT e.*, coalesce(t.et, 0) AS et FROM new_events e "
                    "LEFT JOIN et t ON t.event_type = e.event_type)",
                    "lmz", "CAST(e.et AS USMALLINT)", "0",
                    f"CAST(({job.VS} + {DAY - 1}) // {DAY} AS INTEGER)", key="lk")})"""),
        }
        path = self._path(f"r-{uid}")
        _save(path, rows)
        written.append(path)
        st["files"].append(path.name)

    def _sessions(self, con, st: dict, gap: int, days: int, absorbed: bool, as_of_us: int,
                  uid: str, written: list) -> None:
        """The events since a horizon as (lk, t, v: the day from which visible) sorted by
        (lk, t), and per group of equal (lk, t) ``w``, kept on its first row: the first day
        on which an earlier event within the gap is visible. A group's start counts at a
        cutoff from the day its first event is visible until day ``w``.

        A night inserts its events and recomputes ``w`` only for the groups within the gap
        after one of them (a late event can join two sessions into one); the rest stand.
        The horizon is ``SLACK_DAYS`` plus the window plus the gap before the cutoff: the
        rows are exact for cutoffs from ``exact_from`` on, and earlier ones are computed
        from the events (:func:`features` returns None)."""
        old = st["sessions"].get(str(gap))
        every = old is None or old["days"] < days
        if not every and not absorbed:
            return
        days = max(days, old["days"] if old else 0)
        gap_us = gap * job.US_PER_MIN
        since = as_of_us - (days + SLACK_DAYS) * DAY - gap_us
        if not every:
            since = max(since, old["since"])
        vis = f"CAST(({job.VS} + {DAY - 1}) // {DAY} AS INTEGER)"
        if every:
            ev = job.fetch(con, f"""SELECT m.lk AS k, epoch_us(e.ts) AS t, {vis} AS v
                FROM events e JOIN lmz m ON e.lead_id = m.lead_id
                WHERE e.ts >= {job.ts_lit(since)} ORDER BY k, t""")
            ev["w"] = np.full(len(ev["k"]), _W_NONE, dtype=np.int32)
            new = ev
        else:
            ev = _load(self.root / old["dir"])["s"]
            inside = ev["t"] >= since
            ev = {c: v[inside] for c, v in ev.items()}
            new = job.fetch(con, f"""SELECT lk AS k, t,
                CAST((vs + {DAY - 1}) // {DAY} AS INTEGER) AS v FROM x
                WHERE t >= {since} ORDER BY k, t""")
        span = max([0, *(int(x["t"].max()) - since for x in (ev, new) if len(x["t"]))])
        shift = max(int(span).bit_length(), 1)
        if shift + max(st["n_leads"], 1).bit_length() > 62:  # keys do not fit: start over
            raise _Unkeyable
        key_new = (new["k"].astype(np.int64) << shift) | (new["t"] - since)
        if not every:
            key_old = (ev["k"].astype(np.int64) << shift) | (ev["t"] - since)
            pos = np.searchsorted(key_old, key_new, side="right")
            ev = {c: np.insert(ev[c], pos, new[c] if c != "w" else _W_NONE) for c in ev}
            key = np.insert(key_old, pos, key_new)
        else:
            key = key_new
        starts = job.runs(key)
        gkey = key[starts]
        lead0 = (gkey >> shift) << shift  # where each group's lead begins
        lo = np.maximum(gkey - gap_us, lead0)
        # groups with a new event at or within the gap before them
        todo = np.flatnonzero(np.searchsorted(key_new, gkey, side="right")
                              > np.searchsorted(key_new, lo, side="left"))
        first = starts[todo]
        lo_rows = np.searchsorted(key, lo[todo], side="left")
        ln = first - lo_rows
        w = np.full(len(todo), _W_NONE, dtype=np.int32)
        has = np.flatnonzero(ln > 0)
        if len(has):  # min of v over each group's earlier rows within the gap
            lengths = ln[has]
            seg = np.cumsum(lengths) - lengths
            rows = np.repeat(lo_rows[has] - seg, lengths) + np.arange(int(lengths.sum()))
            w[has] = np.minimum.reduceat(ev["v"][rows], seg)
        ev["w"][first] = w
        path = self._path(f"s{gap}-{uid}")
        _save(path, {"s": ev})
        written.append(path)
        st["sessions"][str(gap)] = {"dir": path.name, "days": days, "since": int(since),
                               "exact_from": int(since + days * DAY + gap_us)}

    # ------------------------------------------------------------------ one cutoff

    def features(self, plan: job.Plan, a: int, only: Sequence[str] | None = None
                 ) -> pa.Table | None:
        D = a // DAY
        grid = job.Grid.for_cutoffs([a], plan.spans()["all"])
        base = grid.base // DAY  # grid buckets are days: d - base
        st = self.state
        if st["from_day"] + cat.LOOKBACK_DAYS > D or any(
                a < st["sessions"][str(g)]["exact_from"] for g in plan.gaps):
            return None  # earlier than the days kept
        parts = [_load(self.root / f, mmap=True) for f in st["files"]]
        leads = self._leads(st)
        n = leads.num_rows
        order = pc.sort_indices(leads.column("lead_id")).to_numpy()  # lk in lead_id order
        vs_order = np.full(n, _NEVER, dtype=np.int64)
        vs_close = np.full(n, _NEVER, dtype=np.int64)
        for p in parts:
            np.minimum.at(vs_order, p["status"]["lk"], p["status"]["o"])
            np.minimum.at(vs_close, p["status"]["lk"], p["status"]["c"])
        rows: dict = {}

        def visible(table: str, cols: Sequence[str], vis: str = "vd") -> dict:
            """The rows of ``table`` visible at the cutoff (the job drops those outside its
            windows), ``lk`` as ``k`` and ``d`` in grid buckets."""
            out = _gather([p[table] for p in parts], ("lk", "d", *cols), vis, D)
            out["k"] = out.pop("lk")
            out["d"] = out["d"] - base
            out["vis"] = np.zeros(len(out["k"]), dtype=np.int32)
            return out

        if plan.main:
            code = np.array([0, *map(plan.code_of, st["event_types"])],
                            dtype=np.uint8)  # kept code → the plan's
            main = visible("main", ("et", "n", "m"))
            main["code"] = code[main.pop("et")]
            rows["latest"] = {"k": main["k"], "code": main["code"], "vis": main["vis"],
                              "m": main.pop("m")}
            rows["main"] = main
        if plan.hours:
            rows["hours"] = visible("hours", ("lh", "n"))
        if plan.gaps:
            rows["sess"] = {}
            for gap in plan.gaps:
                ev = _load(self.root / st["sessions"][str(gap)]["dir"])["s"]
                starts = job.runs(ev["k"], ev["t"])
                v = np.minimum.reduceat(ev["v"], starts) if len(starts) else ev["v"][:0]
                t = ev["t"][starts]
                d = (t // DAY).astype(np.int32)
                sel = (v <= D) & (ev["w"][starts] > D) & (d >= D - _session_days(plan)[gap])
                m = int(sel.sum())
                rows["sess"][gap] = {"k": ev["k"][starts][sel], "d": d[sel] - base,
                                     "vis": np.zeros(m, dtype=np.int32),
                                     "w": np.ones(m, dtype=np.int32),
                                     "n": np.ones(m, dtype=np.int32)}
        if plan.model_feats:
            rows["model"] = visible("model", ("mc", "n"))
            rows["n_models"] = len(st["models"]) + 1
        if plan.contacts:
            rows["ct"] = _gather([p["ct"] for p in parts], tuple(parts[0]["ct"]))
        if plan.history:  # never trimmed: the whole history, one row per (lead, type, day)
            hist = _gather([p["hist"] for p in parts],
                           ("k", "code", "day", "n", "vsum", "vn", "tmin", "tmax"), "vis", D)
            hist["code"] = np.array([0, *map(plan.code_of, st["event_types"])],
                                    dtype=np.uint8)[hist["code"]]
            hist["d"] = hist["day"] - base
            hist["vis"] = np.zeros(len(hist["k"]), dtype=np.int32)
            rows["hist"] = hist
        if only is not None:  # those leads alone, numbered anew: the others' rows left out
            keep = np.asarray(pc.is_in(leads.column("lead_id"), value_set=pa.array(
                list(only), leads.column("lead_id").type)).to_numpy(zero_copy_only=False), bool)
            rows = _rows_of(rows, keep)
            leads, vs_order, vs_close = leads.filter(pa.array(keep)), vs_order[keep], \
                vs_close[keep]
            order = pc.sort_indices(leads.column("lead_id")).to_numpy()
        reduced = job.Reduced.of_rows(plan, grid, [a], leads, vs_order, vs_close, rows)
        return reduced.at(0, only_open=False, order=order)

    def _leads(self, st: dict) -> pa.Table:
        """The bucket's leads in ``lk`` order (memory-mapped: read without a copy)."""
        with pa.memory_map(str(self.root / st["leads"])) as src:
            return pa.ipc.open_file(src).read_all()


# --------------------------------------------------------------------------- files


def _rows_of(rows: dict, keep: np.ndarray) -> dict:
    """``rows`` (name → columns keyed by the lead index ``k``/``lk``, sessions by gap) with
    only the rows of the leads ``keep`` marks, their index renumbered among those leads."""
    renumber = (np.cumsum(keep) - 1).astype(np.int64)

    def sub(d: dict) -> dict:
        name = "k" if "k" in d else "lk"
        key = d[name]
        sel = keep[key]
        out = {c: (v[sel] if isinstance(v, np.ndarray) and len(v) == len(key) else v)
               for c, v in d.items()}
        out[name] = renumber[key[sel]].astype(key.dtype, copy=False)
        return out

    out = {}
    for name, d in rows.items():
        if name == "sess":
            out[name] = {g: sub(x) for g, x in d.items()}
        elif isinstance(d, dict):
            out[name] = sub(d)
        else:
            out[name] = d
    return out


def _ts(us: int) -> str:
    return job.ts_lit(int(us))


def _dictionary(con, table: str, column: str, names: list[str]) -> None:
    """A table numbering ``names`` from 1 (codes kept in the rollups)."""
    con.execute(f"CREATE TABLE {table} ({column} VARCHAR, {table} INTEGER)")
    if names:
        con.executemany(f"INSERT INTO {table} VALUES (?, ?)",
                        [[n, i + 1] for i, n in enumerate(names)])


def _save(path: Path, rows: dict[str, dict[str, np.ndarray]]) -> None:
    """A folder of ``<table>.<column>.npy`` (read back without parsing or checksums), written
    under a hidden name and renamed whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for t, cols in rows.items():
        for c, v in cols.items():
            np.save(tmp / f"{t}.{c}.npy", np.ascontiguousarray(v), allow_pickle=False)
    os.replace(tmp, path)


def _load(path: Path, mmap: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """``mmap``: read-only views of the page cache, no copy (the cutoff's reads)."""
    out: dict[str, dict] = {}
    for f in sorted(path.glob("*.npy")):
        t, c = f.name[:-4].split(".", 1)
        out.setdefault(t, {})[c] = np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None)
    return out


def _gather(parts: list[dict], cols: Sequence[str], vis: str | None = None,
            day: int = 0) -> dict[str, np.ndarray]:
    """``cols`` of the loads' rows (those with ``vis <= day`` when ``vis`` is given), in one
    array each. One load's rows all visible are its memory-mapped arrays as they are; else
    each column is copied once (filtered and joined in one step): these are a whole
    history's rows, and a night reads them in a fresh process, where copies cost page
    faults as much as bytes."""
    sels = []
    for p in parts:
        sel = None if vis is None else p[vis] <= day
        sels.append(None if sel is None or sel.all() else sel)
    if len(parts) == 1 and sels[0] is None:
        return {c: parts[0][c] for c in cols}
    out = {}
    for c in cols:
        pieces = [p[c] if s is None else p[c][s] for p, s in zip(parts, sels, strict=True)]
        out[c] = np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])
    return out
