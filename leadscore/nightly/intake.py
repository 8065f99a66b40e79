"""The nightly job's intake: input rows validated once and kept between nights, by lead bucket.

Why: a nightly rescoring reads months of events of which one day is new. Validating and
bucketing all of them again every night was 60% of the job at 1,000,000 leads (55 of 91 s).
The intake keeps the clean rows in ``<cache>/<table>/bucket=N/`` (Parquet, partitioned by a
hash of ``lead_id``) and each night validates only the files added to the input folders since,
against the rows kept: an event may belong to an earlier lead, a row repeating one kept or
quarantined is an exact duplicate, a lead row for a lead kept conflicts with it (see
:func:`contract.load`).

Kept rows equal what validating every file again would keep, so the intake starts over (one
full validation) whenever that could differ:
- the first time, or after a change of bucket size, cache format or DuckDB (its row hash);
- a kept input file changed or disappeared, or a new file sorts before a kept one of its table
  (the contract keeps the first of two copies in file order), or a table is a single file;
- a kept load quarantined rows as stamped after its clock (by now they may be valid), or the
  new leads make rows quarantined for an unknown lead valid;
- the leads outgrew twice the buckets' planned size (buckets are sized once per start).

Nothing half-written is ever read: each load writes files named after a new segment id and
becomes part of the intake only when ``_intake.json`` (replaced atomically) lists the segment;
files of unlisted segments, left by a killed run, are deleted when the next run opens the
cache. After ``MAX_SEGMENTS`` loads the segments but the newest are merged into one, so a
bucket stays a few files; a merged segment lists the loads it ``covers``, so what was derived
from them (the feature rollups, :mod:`leadscore.features.rollup`) stays valid. A lock file
keeps two jobs out of one cache. Deleting the cache only costs one full validation.

The quarantine the operator reads, ``<data>/quarantine/<table>.parquet``, holds the bad rows of
every load the intake keeps (each load's own are kept under ``<cache>/quarantine/``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from leadscore import atomic, contract

log = logging.getLogger(__name__)

STATE = "_intake.json"
FORMAT = 1
MAX_SEGMENTS = 8
#: a kept load with rows quarantined for one of these is redone: the clock has moved on
_AFTER_CLOCK = ("created_at_after_clock", "ts_after_clock", "ingested_at_after_clock")


class IntakeError(RuntimeError):
    """The cache cannot be used; the message says why and what to do."""


class IntakeBusy(IntakeError):
    """Another job holds the cache's lock."""


def default_cache(data_dir: Path) -> Path:
    return Path(data_dir) / ".leadscore-intake"


def input_files(data_dir: Path) -> dict[str, dict]:
    """Per table: whether it is a single file or a folder, and each file's path (relative to
    ``data_dir``), size and modification time, in path order (as ``make`` decides what is
    new, without reading rows)."""
    out = {}
    for table in contract.TABLES:
        p = contract.find_file(data_dir, table)
        files = [] if p is None else [p] if p.is_file() else sorted(p.rglob("*.parquet"))
        out[table] = {
            "kind": None if p is None else "file" if p.is_file() else "dir",
            "files": [[f.relative_to(data_dir).as_posix(), f.stat().st_size,
                       f.stat().st_mtime_ns] for f in files],
        }
    return out


class BucketSink:
    """A :data:`contract.Sink`: a table's clean rows to Parquet partitioned by lead bucket
    (``<root>/<table>/bucket=N/seg-<segment>-<i>.parquet``). Without a fixed count, the
    buckets follow from the clean leads, which are validated first."""

    def __init__(self, root: Path, segment: str, bucket_leads: int | None = None,
                 n_buckets: int | None = None):
        self.root, self.segment = root, segment
        self.bucket_leads, self.n_buckets = bucket_leads, n_buckets

    def __call__(self, con, table: str, sql: str) -> int:
        if self.n_buckets is None:
            n_leads = con.execute("SELECT count(*) FROM leads").fetchone()[0]
            self.n_buckets = max(1, math.ceil(n_leads / self.bucket_leads))
        (rows,) = con.execute(
            f"COPY (SELECT *, (hash(lead_id) % {self.n_buckets})::INT AS bucket FROM ({sql})) "
            f"TO {contract.lit(str(self.root / table))} (FORMAT parquet, PARTITION_BY (bucket), "
            f"FILENAME_PATTERN 'seg-{self.segment}-{{i}}', OVERWRITE_OR_IGNORE)"
        ).fetchone()
        return int(rows)


def _glob(table_dir: Path) -> str:
    return contract.lit(f"{table_dir}/*/*.parquet")


def _list(paths) -> str:
    return "[" + ", ".join(contract.lit(str(p)) for p in paths) + "]"


@dataclass
class IntakeResult:
    buckets: int
    quarantined: int
    mode: str  # "start" (every file validated), "append" (new files only) or "unchanged"
    new_files: int
    seconds: float


class Intake:
    """The validated rows of one input folder, kept in ``root`` (see the module's doc)."""

    def __init__(self, data_dir: Path, root: Path, bucket_leads: int, spill: Path,
                 memory_limit: str | None = None, clock: pd.Timestamp | None = None):
        self.data_dir, self.root = Path(data_dir), Path(root)
        self.bucket_leads, self.spill, self.memory_limit = bucket_leads, spill, memory_limit
        #: the run's clock (default: now): rows stamped after it are quarantined
        self.clock = pd.Timestamp.now(tz="UTC") if clock is None else pd.Timestamp(clock)
        self.state: dict | None = None

    # ------------------------------------------------------------------ opening, the lock

    @contextlib.contextmanager
    def opened(self) -> Iterator[Intake]:
        """Hold the cache's lock, read its state and delete what a killed run left."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / "_lock", "w")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise IntakeError(f"{self.root}: cannot keep validated rows there ({e.strerror}); "
                              f"pass --cache with a writable folder") from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IntakeBusy(
                    f"{self.root} is in use by another rescore of {self.data_dir}") from None
            path = self.root / STATE
            self.state = json.loads(path.read_text()) if path.is_file() else None
            self._sweep()
            try:
                yield self
            finally:
                self.state = None

    def _kept_ids(self) -> set[str]:
        return {s["id"] for s in self.state["segments"]} if self.state else set()

    def _sweep(self) -> None:
        """Delete the files of segments the state does not list (a killed run's)."""
        keep = self._kept_ids()
        for f in [*self.root.glob("*/bucket=*/seg-*.parquet"),
                  *self.root.glob("quarantine/*/seg-*.parquet")]:
            if f.name.split("-")[1].split(".")[0] not in keep:
                f.unlink()
        for d in self.root.glob(".q-*"):
            shutil.rmtree(d, ignore_errors=True)
        for d in self.root.glob("*/bucket=*"):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def _commit(self, state: dict) -> None:
        atomic.write_text(self.root / STATE, json.dumps(state, indent=1))
        self.state = state
        self._sweep()

    # ------------------------------------------------------------------ the nightly step

    def refresh(self) -> IntakeResult:
        """Bring the kept rows up to the input folder: nothing, the new files, or all."""
        t0 = time.perf_counter()
        current = input_files(self.data_dir)
        why, new = self._plan(current)
        mode = "unchanged"
        if why is None and new:
            seg, con = self._load(current, new)
            try:
                why = self._restart_reason(seg, con)
            finally:
                con.close()
            if why is None:
                self._commit({**self.state, "files": current,
                              "segments": [*self.state["segments"], seg]})
                mode = "append"
                if len(self.state["segments"]) > MAX_SEGMENTS:
                    self._merge()
            else:
                self._sweep()  # drop the load just made
        if why is not None:
            log.info("intake: validating every input file (%s)", why)
            seg, con = self._load(current, None)
            con.close()
            self._commit({"format": FORMAT, "duckdb": duckdb.__version__,
                          "bucket_leads": self.bucket_leads, "buckets": seg.pop("buckets"),
                          "files": current, "segments": [seg]})
            mode = "start"
        self._publish_quarantine()  # every run: a run killed after its commit left it stale
        n_new = sum(len(v) for v in new.values()) if mode == "append" else 0
        log.info("intake: %s, %d new file(s), %d bucket(s)", mode, n_new, self.buckets)
        return IntakeResult(self.buckets, self.quarantined, mode, n_new,
                            time.perf_counter() - t0)

    @property
    def buckets(self) -> int:
        return self.state["buckets"]

    @property
    def quarantined(self) -> int:
        return sum(sum(c["quarantined"].values()) for s in self.state["segments"]
                   for c in s["counts"].values())

    def _plan(self, current: dict) -> tuple[str | None, dict[str, list[Path]]]:
        """(why everything must be validated again, or None; the new files per table)."""
        st = self.state
        if st is None:
            return "no validated rows kept yet", {}
        if st.get("format") != FORMAT or st.get("duckdb") != duckdb.__version__:
            return "kept by another version", {}
        if st.get("bucket_leads") != self.bucket_leads:
            return f"bucket size changed from {st.get('bucket_leads')}", {}
        due = [s["valid_from"] for s in st["segments"] if s.get("valid_from")]
        if due and pd.Timestamp(min(due, key=pd.Timestamp)) <= self.clock:
            return "rows quarantined as later than an earlier clock are valid by now", {}
        new: dict[str, list[Path]] = {}
        for table, cur in current.items():
            kept = {f[0]: f for f in st["files"][table]["files"]}
            now = {f[0]: f for f in cur["files"]}
            changed = [k for k, f in kept.items() if now.get(k) != f]
            if changed:
                return f"{table}: {changed[0]} changed or removed", {}
            added = sorted(set(now) - set(kept))
            if not added:
                continue
            if cur["kind"] != "dir":
                return f"{table}: {added[0]} is a new file", {}
            if kept and added[0] <= max(kept):
                return f"{table}: new file {added[0]} sorts before kept ones", {}
            new[table] = [self.data_dir / a for a in added]
        return None, new

    def _load(self, current: dict, new: dict[str, list[Path]] | None):
        """Validate the new files (or all) into a segment not yet listed in the state.
        Returns the segment's record and the validation connection (holding the new leads)."""
        seg_id = uuid.uuid4().hex[:12]
        qdir = self.root / f".q-{seg_id}"
        prior = None
        if new is not None:
            prior = {}
            for t in contract.TABLES:
                if any((self.root / t).glob("*/*.parquet")):
                    prior[t] = (f"SELECT * FROM read_parquet({_glob(self.root / t)}, "
                                f"hive_partitioning=true, union_by_name=true)")
                bad = sorted((self.root / "quarantine" / t).glob("seg-*.parquet"))
                if bad:
                    prior[f"bad_{t}"] = (f"SELECT * FROM read_parquet({_list(bad)}, "
                                         f"union_by_name=true)")
        sink = BucketSink(self.root, seg_id, bucket_leads=self.bucket_leads,
                          n_buckets=None if new is None else self.state["buckets"])
        self.spill.mkdir(parents=True, exist_ok=True)
        con = contract.connect(memory_limit=self.memory_limit)
        con.execute(f"SET temp_directory={contract.lit(str(self.spill))}")
        try:
            ds = contract.load(self.data_dir, clock=self.clock, quarantine_dir=qdir, con=con,
                               sink=sink, row_hash=True, files=new, prior=prior)
        except BaseException:  # a file wrong as a whole: its segment is swept at next open
            con.close()
            raise
        counts = {}
        for table, rep in ds.reports.items():
            counts[table] = {"read": rep.rows_read, "ok": rep.rows_ok,
                             "duplicates": rep.duplicates, "quarantined": rep.quarantined}
            q = qdir / f"{table}.parquet"
            if q.is_file():
                (self.root / "quarantine" / table).mkdir(parents=True, exist_ok=True)
                os.replace(q, self.root / "quarantine" / table / f"seg-{seg_id}.parquet")
        shutil.rmtree(qdir, ignore_errors=True)
        seg = {"id": seg_id, "counts": counts, "valid_from": self._valid_from(seg_id, counts)}
        if new is None:
            seg["buckets"] = sink.n_buckets or max(
                1, math.ceil(counts["leads"]["ok"] / self.bucket_leads))
        return seg, con

    def _valid_from(self, seg_id: str, counts: dict) -> str | None:
        """When the earliest of the load's rows quarantined for being stamped after the clock
        stops being so (its latest stamp): from then on, a full validation would keep it."""
        stamps = {"leads": ["created_at"], "events": ["ts", "ingested_at"], "contacts": ["ts"]}
        found = []
        for table, cols in stamps.items():
            if not any(r in _AFTER_CLOCK for r in counts[table]["quarantined"]):
                continue
            q = self.root / "quarantine" / table / f"seg-{seg_id}.parquet"
            latest = ", ".join(f"TRY_CAST(NULLIF(trim({c}), '') AS TIMESTAMPTZ)" for c in cols)
            reasons = ", ".join(f"'{r}'" for r in _AFTER_CLOCK)
            with contract.connect() as con:
                (t,) = con.execute(
                    f"SELECT min(greatest({latest})) FROM read_parquet({contract.lit(str(q))}) "
                    f"WHERE _reason IN ({reasons})").fetchone()
            if t is not None:
                found.append(pd.Timestamp(t).tz_convert("UTC"))
        return str(min(found)) if found else None

    def _restart_reason(self, seg: dict, con) -> str | None:
        """Whether an appended load must give way to a full validation (see the module doc)."""
        leads = sum(s["counts"]["leads"]["ok"] for s in [*self.state["segments"], seg])
        if leads > 2 * self.buckets * self.bucket_leads:
            return f"{leads:,} leads outgrew {self.buckets} buckets"
        kept_q = [self.root / "quarantine" / t / f"seg-{s['id']}.parquet"
                  for s in self.state["segments"] for t in ("events", "contacts")
                  if s["counts"][t]["quarantined"].get("unknown_lead")]
        if kept_q:
            (n,) = con.execute(
                f"SELECT count(*) FROM read_parquet({_list(kept_q)}, union_by_name=true) "
                f"WHERE _reason = 'unknown_lead' AND trim(lead_id) IN (SELECT lead_id FROM leads)"
            ).fetchone()
            if n:
                return f"{n:,} rows quarantined for an unknown lead have their lead now"
        return None

    def _merge(self) -> None:
        """Rewrite the kept segments but the newest as one, so each bucket stays a few files.
        The newest stays apart: what is derived from each load (the feature rollups) has not
        seen it yet, and could not take it out of a merged segment."""
        old, newest = self.state["segments"][:-1], self.state["segments"][-1]
        seg_id = uuid.uuid4().hex[:12]
        con = contract.connect(memory_limit=self.memory_limit)
        con.execute(f"SET temp_directory={contract.lit(str(self.spill))}")
        try:
            for table in contract.TABLES:
                files = [f for s in old
                         for f in sorted((self.root / table).glob(f"bucket=*/seg-{s['id']}-*"))]
                if not files:
                    continue
                con.execute(
                    f"COPY (SELECT * FROM read_parquet({_list(files)}, hive_partitioning=true, "
                    f"union_by_name=true)) TO {contract.lit(str(self.root / table))} "
                    f"(FORMAT parquet, PARTITION_BY (bucket), "
                    f"FILENAME_PATTERN 'seg-{seg_id}-{{i}}', OVERWRITE_OR_IGNORE)"
                )
            for table in contract.TABLES:
                q = [f for s in old for f in
                     (self.root / "quarantine" / table).glob(f"seg-{s['id']}.parquet")]
                if q:
                    dst = self.root / "quarantine" / table / f"seg-{seg_id}.parquet"
                    con.execute(f"COPY (SELECT * FROM read_parquet({_list(q)}, union_by_name=true) "
                                f"ORDER BY _file, _row) TO {contract.lit(str(dst))} "
                                f"(FORMAT parquet)")
        finally:
            con.close()
        counts: dict = {}
        due = [s["valid_from"] for s in old if s.get("valid_from")]
        for s in old:
            for table, c in s["counts"].items():
                m = counts.setdefault(table, {"read": 0, "ok": 0, "duplicates": 0,
                                              "quarantined": {}})
                for k in ("read", "ok", "duplicates"):
                    m[k] += c[k]
                for r, n in c["quarantined"].items():
                    m["quarantined"][r] = m["quarantined"].get(r, 0) + n
        first_due = min(due, key=pd.Timestamp, default=None)
        covers = [x for s in old for x in s.get("covers") or [s["id"]]]
        self._commit({**self.state, "segments": [
            {"id": seg_id, "counts": counts, "valid_from": first_due, "covers": covers},
            newest]})
        log.info("intake: merged the %d earlier loads into one", len(covers))

    def _publish_quarantine(self) -> None:
        """``<data>/quarantine/<table>.parquet``: every kept load's bad rows, in file order."""
        out_dir = self.data_dir / "quarantine"
        for table in contract.TABLES:
            q = sorted((self.root / "quarantine" / table).glob("seg-*.parquet"))
            dst = out_dir / f"{table}.parquet"
            if not q:
                dst.unlink(missing_ok=True)
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".{table}.parquet.tmp"
            with duckdb.connect() as con:
                con.execute(f"COPY (SELECT * EXCLUDE (_h) FROM read_parquet({_list(q)}, "
                            f"union_by_name=true) ORDER BY _file, _row) "
                            f"TO {contract.lit(str(tmp))} (FORMAT parquet)")
            os.replace(tmp, dst)
