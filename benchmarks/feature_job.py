"""Benchmark: the point-in-time feature job against a minimal hand-written DuckDB count query.

Generates synthetic leads/events/contacts (numpy, vectorised) into Parquet files in a temporary
folder -- in a child process, so that the generator's arrays do not count towards the measured
peak memory -- or takes ``--data DIR`` (e.g. the output of ``leadscore simulate``). Then, in this
process:

  load  ``contract.load`` of the folder (validation, quarantine), timed on its own;
  (a)   the feature job at ONE cutoff over the whole catalogue;
  (b)   the feature job at 12 weekly cutoffs in one call;
  (c)   a minimal hand-written DuckDB query computing the same event counts (every ``Count``
        feature: per type x window, browse, high_intent, events, other) at the cutoff of (a).

Throughput is events in the loaded ``events`` table per second of wall time. Goals:
(a) >= 80% of (c)'s throughput; cost(b) <= 4x cost(a); peak RSS < 6 GB at 20M events.

    python benchmarks/feature_job.py                    # 20M events
    python benchmarks/feature_job.py --events 1000000   # quick check
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leadscore import contract
from leadscore.features import catalog as cat
from leadscore.features import job
from leadscore.schema import STANDARD_EVENT_TYPES

US_PER_DAY = 86_400_000_000
US_PER_MIN = 60_000_000
START = pd.Timestamp("2025-01-01", tz="UTC")

EVENT_MIX = {
    "page_view": 0.50, "config_view": 0.20, "finance_calc": 0.05, "price_inquiry": 0.03,
    "test_drive_booked": 0.015, "test_drive_done": 0.01, "store_visit": 0.02,
    "call_inbound": 0.02, "wechat_reply": 0.06, "order": 0.004, "delivery": 0.003,
    "service_visit": 0.01, "lost": 0.006, "brochure_download": 0.02, "share": 0.052,
}
TZ_MIX = {None: 0.15, "Asia/Shanghai": 0.55, "Europe/Berlin": 0.10, "America/New_York": 0.05,
          "Asia/Kolkata": 0.05, "Asia/Tokyo": 0.10}
MODELS = [f"M{i:02d}" for i in range(24)]
SOURCES = ["website", "autohome", "dongchedi", "douyin", "showroom", "referral"]


# --------------------------------------------------------------------------- synthetic data


def _dict_array(codes: np.ndarray, values: list, mask: np.ndarray | None = None):
    idx = pa.array(codes.astype(np.int32), mask=mask)
    return pa.DictionaryArray.from_arrays(idx, pa.array(values, pa.string()))


def _ts_array(us: np.ndarray, mask: np.ndarray | None = None):
    return pa.array(us.astype("int64"), pa.int64(), mask=mask).cast(pa.timestamp("us", "UTC"))


def generate(out: Path, n_events: int, days: int, seed: int = 0) -> None:
    """Leads (``n_events / 50``), sessions of a few events each, ~3% late ingestion."""
    rng = np.random.default_rng(seed)
    n_leads = max(100, n_events // 50)
    span = days * US_PER_DAY
    t0 = int(START.value // 1000)
    # leads -----------------------------------------------------------------------------
    created = t0 + rng.integers(0, span, n_leads)
    lead_ids = [f"L{i:07d}" for i in range(n_leads)]
    tz_names = list(TZ_MIX)
    tz_code = rng.choice(len(tz_names), n_leads, p=list(TZ_MIX.values()))
    tz_values = [t or "" for t in tz_names]
    leads = pa.table({
        "lead_id": pa.array(lead_ids),
        "dealer_id": _dict_array(rng.integers(0, 50, n_leads), [f"D{i:03d}" for i in range(50)]),
        "created_at": _ts_array(created),
        "source": _dict_array(rng.integers(0, len(SOURCES), n_leads), SOURCES),
        "intended_model": _dict_array(rng.integers(0, len(MODELS), n_leads), MODELS,
                                      mask=rng.random(n_leads) < 0.3),
        "city": _dict_array(rng.integers(0, 30, n_leads), [f"city{i}" for i in range(30)]),
        "budget": pa.array(np.round(rng.lognormal(12, 0.4, n_leads), -3),
                           mask=rng.random(n_leads) < 0.4),
        "tz": _dict_array(tz_code, tz_values, mask=tz_code == 0),
    })
    pq.write_table(leads, out / "leads.parquet")
    # events: sessions of ~4 events, session starts spread over the lead's active period --
    n_sessions = max(1, n_events // 4)
    activity = rng.lognormal(0, 1.0, n_leads)
    s_lead = rng.choice(n_leads, n_sessions, p=activity / activity.sum())
    remaining = t0 + span - created[s_lead]
    # activity decays after creation: most sessions in the first weeks
    delay = np.minimum(rng.exponential(20 * US_PER_DAY, n_sessions), remaining - 1)
    s_start = created[s_lead] + delay.astype(np.int64)
    # local evening bias: shift a third of sessions towards 20:00-02:00 China time
    evening = rng.random(n_sessions) < 0.33
    s_start[evening] = (s_start[evening] // US_PER_DAY) * US_PER_DAY + (
        rng.integers(12 * 60, 18 * 60, evening.sum()) * US_PER_MIN)
    s_start = np.clip(s_start, created[s_lead], t0 + span - 1)
    e_session = np.sort(rng.integers(0, n_sessions, n_events))
    ts = s_start[e_session] + (rng.exponential(6, n_events) * US_PER_MIN).astype(np.int64)
    over = ts >= t0 + span  # reflect the few that would run past the end of the history
    ts[over] = 2 * (t0 + span) - 1 - ts[over]
    lead = s_lead[e_session]
    types = list(EVENT_MIX)
    p = np.array(list(EVENT_MIX.values()))
    etype = rng.choice(len(types), n_events, p=p / p.sum())
    has_model = rng.random(n_events) < 0.6
    pref = rng.integers(0, len(MODELS), n_leads)[lead]
    model = np.where(rng.random(n_events) < 0.7, pref, rng.integers(0, len(MODELS), n_events))
    late = rng.random(n_events) < 0.03
    late_lag = (rng.exponential(1.5, n_events) * US_PER_DAY).astype(np.int64) + 3_600_000_000
    lag = np.where(late, late_lag, rng.integers(0, 120_000_000, n_events))
    ingested = ts + lag
    no_ing = (~late) & (rng.random(n_events) < 0.2)
    value = np.where(etype == types.index("finance_calc"), rng.lognormal(11.5, 0.5, n_events),
                     np.nan)
    order = np.argsort(ts, kind="stable")  # files are written in arrival-ish order
    events = pa.table({
        "lead_id": _dict_array(lead[order], lead_ids),
        "ts": _ts_array(ts[order]),
        "event_type": _dict_array(etype[order], types),
        "model": _dict_array(model[order], MODELS, mask=~has_model[order]),
        "value": pa.array(value[order], mask=np.isnan(value[order])),
        "ingested_at": _ts_array(ingested[order], mask=no_ing[order]),
    })
    pq.write_table(events, out / "events.parquet", row_group_size=1_000_000)
    del events, ts, lead, etype, model, ingested
    # contacts: ~2 per lead ------------------------------------------------------------
    n_ct = 2 * n_leads
    c_lead = rng.integers(0, n_leads, n_ct)
    c_ts = np.minimum(created[c_lead] + (rng.exponential(3, n_ct) * US_PER_DAY).astype(np.int64),
                      t0 + span - 1)
    chans = ["phone", "wechat", "sms"]
    outs = ["connected", "replied", "no_answer", "ignored", "refused"]
    contacts = pa.table({
        "lead_id": _dict_array(c_lead, lead_ids),
        "ts": _ts_array(c_ts),
        "channel": _dict_array(rng.choice(3, n_ct, p=[0.5, 0.4, 0.1]), chans),
        "outcome": _dict_array(rng.choice(5, n_ct, p=[0.3, 0.2, 0.3, 0.15, 0.05]), outs),
    })
    pq.write_table(contacts, out / "contacts.parquet")


# --------------------------------------------------------------------------- measurement


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux), so that each phase
    reports its own peak."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def hand_written_counts(con, as_of: pd.Timestamp) -> pa.Table:
    """(c): every Count feature of the catalogue, written by hand as one filtered aggregate
    per feature over the point-in-time visible events, at one cutoff."""
    counts = [f for f in cat.CATALOG if isinstance(f, cat.Count)]
    std = ", ".join(f"'{t}'" for t in STANDARD_EVENT_TYPES)
    aggs = []
    for f in counts:
        cond = [f"ts >= TIMESTAMPTZ '{as_of.isoformat()}' - INTERVAL {f.window_days} DAY"]
        if f.other:
            cond.append(f"event_type NOT IN ({std})")
        elif f.events is not None:
            cond.append("event_type IN (" + ", ".join(f"'{t}'" for t in f.events) + ")")
        aggs.append(f'count(*) FILTER (WHERE {" AND ".join(cond)}) AS "{f.name}"')
    a = f"TIMESTAMPTZ '{as_of.isoformat()}'"
    sql = f"""
        SELECT lead_id, {", ".join(aggs)}
        FROM events
        WHERE ts < {a} AND coalesce(ingested_at, ts) <= {a}
          AND ts >= {a} - INTERVAL {cat.LOOKBACK_DAYS} DAY
        GROUP BY lead_id"""
    return con.sql(sql).to_arrow_table()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _same_counts(c: pa.Table, a: pa.Table) -> bool:
    """The hand-written counts equal the feature job's (leads without events: zero)."""
    names = [f.name for f in cat.CATALOG if isinstance(f, cat.Count)]
    fc = c.to_pandas().set_index("lead_id")[names]
    fa = a.select(["lead_id", *names]).to_pandas().set_index("lead_id")
    fc = fc.reindex(fa.index).fillna(0).astype("float64")
    return bool((fc.to_numpy() == fa.to_numpy()).all())


def _timed(fn):
    """(result, wall seconds, CPU seconds of the process incl. DuckDB's threads, peak RSS)."""
    gc.collect()
    _reset_peak()
    t, c = time.perf_counter(), _cpu()
    out = fn()
    return out, time.perf_counter() - t, _cpu() - c, _peak_rss_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000_000, help="synthetic events")
    ap.add_argument("--days", type=int, default=180, help="days of synthetic history")
    ap.add_argument("--data", type=Path, help="use this folder instead of synthetic data")
    ap.add_argument("--as-of", help="cutoff of (a) and (c) and the last of (b) "
                                     "(default: midnight after the last event)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory_limit, e.g. 4GB")
    ap.add_argument("--temp-dir", default=None, help="DuckDB temp_directory (spilling)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each query; best is kept")
    ap.add_argument("--out", type=Path, help="write the synthetic data here and keep it")
    ap.add_argument("--phases", default="abc", help="which of a, b, c to run (default abc)")
    ap.add_argument("--uncompressed", action="store_true",
                    help="rewrite the loaded tables uncompressed (contract.load compresses them "
                         "with a checkpoint) before measuring")
    args = ap.parse_args(argv)

    tmp = None
    if args.data is None:
        if args.out is None:
            tmp = tempfile.TemporaryDirectory(prefix="leadscore-bench-")
        data = Path(tmp.name) if tmp is not None else args.out
        data.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        proc = mp.get_context("spawn").Process(target=generate, args=(data, args.events, args.days))
        proc.start()
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"data generation failed ({proc.exitcode})")
        say(f"generated {args.events:,} events in {time.perf_counter() - t:.1f}s "
            f"(child process) -> {data}")
    else:
        data = args.data
    try:
        return run(args, data)
    finally:
        if tmp is not None:
            tmp.cleanup()


def say(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace, data: Path) -> int:
    con = contract.connect(threads=args.threads, memory_limit=args.memory_limit)
    if args.temp_dir:
        con.execute(f"SET temp_directory='{args.temp_dir}'")
    peaks: dict[str, int] = {}
    ds, t_load, _, peaks["load"] = _timed(
        lambda: contract.load(data, clock=pd.Timestamp("2100-01-01", tz="UTC"), con=con))
    n_ev = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    n_leads = con.execute("SELECT count(*) FROM leads").fetchall()[0][0]
    if args.as_of:
        as_of = pd.Timestamp(args.as_of)
        as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of
    else:
        last = con.execute("SELECT epoch_us(max(ts)) FROM events").fetchall()[0][0]
        as_of = pd.Timestamp(last, unit="us", tz="UTC").floor("D") + pd.Timedelta(days=1)
    weekly = [as_of - pd.Timedelta(weeks=k) for k in range(11, -1, -1)]
    say(f"contract.load: {n_ev:,} events, {n_leads:,} leads in {t_load:.1f}s "
        f"({n_ev / t_load:,.0f} events/s; not part of the ratios), peak {_gb(peaks['load'])}")
    for line in ds.summary().splitlines():
        say("  " + line)
    if args.uncompressed:
        for t in ("leads", "events", "contacts"):
            con.execute(f"CREATE TABLE _u AS SELECT * FROM {t}")
            con.execute(f"DROP TABLE {t}")
            con.execute(f"ALTER TABLE _u RENAME TO {t}")
    mem = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory() "
                      "WHERE tag = 'IN_MEMORY_TABLE'").fetchall()[0][0] or 0
    say(f"tables in DuckDB: {_gb(mem)} ({'uncompressed' if args.uncompressed else 'compressed'})")
    n_counts = sum(isinstance(f, cat.Count) for f in cat.CATALOG)
    say(f"threads={args.threads}; as_of {as_of.isoformat()}; catalogue: {len(cat.CATALOG)} "
        f"features ({n_counts} counts); weekly cutoffs {weekly[0].date()}..{weekly[-1].date()}")

    phases = {
        "c": ("(c) hand-written counts, 1 cut ", lambda: hand_written_counts(con, as_of)),
        "a": ("(a) feature job, 1 cutoff      ", lambda: job.compute(con, [as_of])),
        "b": ("(b) feature job, 12 cutoffs    ", lambda: job.compute(con, weekly)),
    }
    secs: dict[str, float] = {}
    cpus: dict[str, float] = {}
    last: dict[str, pa.Table] = {}
    same = None
    for _ in range(args.repeat):  # interleaved, so that load from other processes hits all
        for key in [k for k in "cab" if k in args.phases]:
            label, fn = phases[key]
            out, dt, cpu, pk = _timed(fn)
            rows = out.num_rows
            if key != "b" and _ == args.repeat - 1:  # the check, outside the timings
                last[key] = out
                if len(last) == 2:
                    same = _same_counts(last["c"], last["a"])
                    last.clear()
            del out
            secs[key] = min(secs.get(key, dt), dt)
            cpus[key] = min(cpus.get(key, cpu), cpu)
            peaks[key] = max(peaks.get(key, 0), pk)
            if _ == args.repeat - 1:
                say(f"{label}: {secs[key]:7.2f}s  {n_ev / secs[key]:13,.0f} events/s  "
                    f"(cpu {cpus[key]:6.2f}s)  {rows:,} rows  peak {_gb(peaks[key])}")
    last.clear()
    if same is not None:
        say(f"(c) counts == (a) counts: {same}")
    ok = {}
    if "a" in secs and "c" in secs:
        r = secs["c"] / secs["a"]
        ok["a"] = r >= 0.8
        say(f"throughput (a)/(c)             : {r:.2f}   (goal >= 0.80) "
            f"{'OK' if ok['a'] else 'MISSED'}   [by CPU time: {cpus['c'] / cpus['a']:.2f}]")
    if "a" in secs and "b" in secs:
        r = secs["b"] / secs["a"]
        ok["b"] = r <= 4.0
        say(f"cost (b)/(a)                   : {r:.2f}   (goal <= 4.00) "
            f"{'OK' if ok['b'] else 'MISSED'}   [by CPU time: {cpus['b'] / cpus['a']:.2f}]")
    peak = max(peaks.values())
    ok["mem"] = peak < 6e9
    say(f"peak RSS (process incl. DuckDB): {_gb(peak)} over load + queries (goal < 6 GB) "
        f"{'OK' if ok['mem'] else 'MISSED'}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
