"""Benchmark: nightly rescoring end to end, against bare model calls on ready matrices.

Data: ``--leads`` leads from the simulator, generated in chunks of 50,000 leads (each chunk its
own seed and lead-id prefix) into ``leads/``, ``events/`` and ``contacts/`` folders of Parquet
files, in a child process. Models: conversion, contact and churn trained with their real specs
(early stopping, calibration) on a separate 20,000-lead simulation; ``--with-slot`` adds the
contact-slot model. Every measured run is a fresh child process; its peak memory is the sum of
the RSS of the process and all its descendants (Spark's JVM and Python workers included),
sampled every 50 ms.

The runs are the nightly job as an operator runs it, on the same rows in folders that fill up:
the cutoff ``as_of`` is the last simulated midnight; "yesterday" rescored at ``as_of - 1 day``
with each table's rows that had arrived by then (``0-history-*`` files), validating all of
them into the intake; "tonight" the last day's rows arrive as new ``1-day-*`` files and the
job validates only those (against the rows kept), reduces their events into the feature
rollups kept per bucket, computes every lead's features from those, scores and writes. The
reasons=3 run starts from the same kept intake (a hardlink copy). "Nothing kept" is tonight's
run with an empty intake (every file validated): the first night, or a night after the intake
had to start over. Every "tonight" run compares with yesterday's output (``previous``:
``score_delta``, ``trend``, ``changes``), as the nightly job does.

  (a) tonight's ``rescore`` without reasons (validation of the new files, features from the
      stored events through the kept rollups, scoring, Parquet parts) in rows/s, against
      bare ``Booster.predict`` over a ready feature matrix of the same rows (each model over
      the rows it scores: the lead models over open leads, churn over open leads and
      owners), timed in another child (the median of three calls per model). Goal: >= 50%.
      Also printed: the same with nothing kept, and the scorer's own scoring path
      (:meth:`LeadModel.raw`: the compiled walk of :mod:`leadscore.fast` where verified, else
      LightGBM; ``LEADSCORE_ACCELERATE=0`` turns it off) over the same matrices, its raw
      scores asserted equal to ``Booster.predict``'s: how much of the ratio is the walk and
      how much the rest.
      With ``--with-slot``, the reference adds bare ``Booster.predict`` over the slot search's
      candidate rows (every allowed slot and channel of the next 72 hours per open lead),
      timed on ``SLOT_SAMPLE`` leads and scaled to all of them.
  (b) ``rescore`` with top-3 reasons per score in rows/s, against
      ``shap.TreeExplainer(booster).shap_values(X)`` on the same models and rows (timed on up
      to ``--shap-rows`` rows per model; its values are asserted equal to the contributions
      behind the written reasons, and the written reasons to SHAP's top 3). Goal: >= 3x.
  (c) peak RSS of (a) and (b). Goal: < 4 GB at 1,000,000 leads.

    python benchmarks/rescore.py                       # 1,000,000 leads
    python benchmarks/rescore.py --leads 50000         # quick check
    python benchmarks/rescore.py --engine spark
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 50_000
SIM_DAYS = 150
TRAIN_LEADS = 20_000
LEAD_MODELS = ("conversion", "contact")
PROBA_MODELS = ("conversion", "contact", "churn")
PREDICT_REPEATS = 3


# --------------------------------------------------------------------------- data and models


def generate(out: Path, n_leads: int, days: int = SIM_DAYS) -> dict:
    """Simulated chunks into leads/ events/ contacts/ folders (one Parquet file per chunk)."""
    from leadscore import simulate as sim

    for t in ("leads", "events", "contacts"):
        (out / t).mkdir(parents=True, exist_ok=True)
    n_events = 0
    for c in range(math.ceil(n_leads / CHUNK)):
        n = min(CHUNK, n_leads - c * CHUNK)
        data = sim.simulate(sim.SimConfig(n_leads=max(n, 10), days=days, seed=1000 + c))
        for t in ("leads", "events", "contacts"):
            df = getattr(data, t)
            df["lead_id"] = f"C{c:03d}-" + df["lead_id"].astype(str)
            df.to_parquet(out / t / f"chunk-{c:03d}.parquet", index=False)
        n_events += len(data.events)
        del data
    return {"leads": n_leads, "events": n_events}


def nightly_layout(data: Path, out: Path, cut: str) -> Path:
    """The same rows as an operator's folders on the evening before ``cut``: each table's rows
    that arrived before it in ``0-history-*`` files under ``out``; the rows of the day after it
    (the next drop) staged in ``1-day-*`` files under the returned folder."""
    import duckdb

    staged = out.with_name(out.name + ".day")
    arrival = {"leads": "created_at", "events": "coalesce(ingested_at, ts)", "contacts": "ts"}
    with duckdb.connect() as con:
        for table, col in arrival.items():
            for f in sorted((data / table).glob("*.parquet")):
                for dst, cond in ((out / table / f"0-history-{f.stem}.parquet", "<"),
                                  (staged / table / f"1-day-{f.stem}.parquet", ">=")):
                    rel = f"(SELECT * FROM read_parquet('{f}') WHERE {col} {cond} '{cut}')"
                    if con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]:
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        con.execute(f"COPY {rel} TO '{dst}' (FORMAT parquet)")
    return staged


def train_models(out: Path, with_slot: bool) -> dict[str, str]:
    """The real specs trained on their own simulation; saved as artifacts (no registry)."""
    from leadscore import contract, models
    from leadscore import simulate as sim
    from leadscore.training import dataset
    from leadscore.training.trainer import fit

    base = out / "train_data"
    sim.write(sim.simulate(sim.SimConfig(n_leads=TRAIN_LEADS, days=SIM_DAYS, seed=7)), base)
    ds = contract.load(base)
    trees = {}
    for name in (*PROBA_MODELS, *(("contact-slot",) if with_slot else ())):
        spec = models.get(name)
        fr = fit(spec, dataset.build(ds.con, spec), num_threads=2)
        fr.model.meta["version"] = "bench"  # keeps the drift reference
        fr.model.save(out / "models" / name)
        trees[name] = fr.model.booster.num_trees()
    return trees


def load_scorer(models_dir: Path, num_threads: int = 2):
    from leadscore.artifact import LeadModel
    from leadscore.scoring.contact_policy import RulesFile, rules_path_from_env
    from leadscore.scoring.scorer import Scorer

    return Scorer({d.name: LeadModel.load(d) for d in sorted(models_dir.iterdir())},
                  num_threads=num_threads, rules=RulesFile.load(rules_path_from_env()))


# --------------------------------------------------------------------------- children


def _timed(obj, name: str, acc: dict) -> None:
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[name] += time.perf_counter() - t

    setattr(obj, name, wrapper)


def child_rescore(data: str, out: str, models_dir: str, as_of: str, reasons: int,
                  bucket_leads: int, engine: str, cache: str, previous: str, q) -> None:
    """One ``rescore`` run; ``previous``: the run to compare with ("": none)."""
    from leadscore.features import job, rollup
    from leadscore.nightly import batch, intake
    from leadscore.scoring.scorer import Scorer

    phases: dict[str, float] = defaultdict(float)
    modes = []
    for obj, name in ((intake.Intake, "refresh"), (rollup, "features"), (job, "compute"),
                      (job, "to_pandas"),
                      (Scorer, "score"), (batch, "_write_part")):
        _timed(obj, name, phases)
    real = intake.Intake._plan
    intake.Intake._plan = lambda self, cur: modes.append(r := real(self, cur)) or r
    scorer = load_scorer(Path(models_dir))
    t = time.perf_counter()
    res = batch.rescore(Path(data), pd.Timestamp(as_of), Path(out), reasons=reasons,
                        bucket_leads=bucket_leads, force=True, scorer=scorer, engine=engine,
                        cache=Path(cache), previous=Path(previous) if previous else False)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    why, new = modes[0]
    q.put({"rows": res.rows, "seconds": time.perf_counter() - t, "buckets": res.buckets,
           "phases": dict(phases), "cpu_self": ru.ru_utime + ru.ru_stime,
           "intake": "start" if why else f"append {sum(map(len, new.values()))} files"})


def child_reference(data: str, work: str, models_dir: str, as_of: str, bucket_leads: int,
                    shap_rows: int, scored: str, q) -> None:
    """Bare Booster.predict and shap.TreeExplainer over ready matrices of the same rows."""
    import shap

    from leadscore import contract
    from leadscore.features import catalog, job
    from leadscore.nightly import per_bucket
    from leadscore.scoring.scorer import ALL_MODELS, PROBA_COLUMN

    scorer = load_scorer(Path(models_dir))
    ds = contract.load(Path(data))
    n_leads = ds.con.execute("SELECT count(*) FROM leads").fetchone()[0]
    n_buckets = max(1, math.ceil(n_leads / bucket_leads))
    per_bucket.split_buckets(ds, Path(work), n_buckets)
    ds.con.close()
    frames = []
    for b in range(n_buckets):
        con = per_bucket.bucket_connection(Path(work), b)
        f = job.to_pandas(job.compute(con, [pd.Timestamp(as_of)], scorer.job_features),
                          scorer.job_features)
        frames.append(f[f["is_open"] | f["is_owner"]])
        con.close()
    feats = pd.concat(frames, ignore_index=True)
    del frames
    shutil.rmtree(work)
    out: dict = {"rows": len(feats), "predict": {}, "walk": {}, "shap": {}}
    written = pd.read_parquet(scored, columns=["lead_id", "reasons"]).set_index("lead_id")
    for name, model in scorer.models.items():
        if name not in PROBA_COLUMN:
            continue
        rows = feats[feats["is_open"]] if name in LEAD_MODELS else feats
        X = model.frame(rows)  # the ready matrix: not timed
        timings = []
        for _ in range(PREDICT_REPEATS):  # one call varied by a quarter between runs
            t, c = time.perf_counter(), time.process_time()
            model.booster.predict(X, num_threads=2)
            timings.append((time.perf_counter() - t, time.process_time() - c))
        secs, cpu = sorted(timings)[len(timings) // 2]  # the median call
        out["predict"][name] = {"rows": len(X), "seconds": secs, "cpu": cpu,
                                "all_seconds": [round(x, 3) for x, _ in timings]}
        # the scorer's own tree walk on the same rows: the same raw scores, asserted
        xm = model.matrix(rows)
        timings = []
        for _ in range(PREDICT_REPEATS):
            t, c = time.perf_counter(), time.process_time()
            raw = model.raw(xm, num_threads=2)
            timings.append((time.perf_counter() - t, time.process_time() - c))
        np.testing.assert_allclose(raw, model.booster.predict(X, raw_score=True,
                                                              num_threads=2), rtol=0, atol=1e-9)
        secs, cpu = sorted(timings)[len(timings) // 2]
        out["walk"][name] = {"rows": len(xm), "seconds": secs, "cpu": cpu,
                             "path": model.scoring_path}
        del xm, raw

        sample = rows.iloc[: min(shap_rows, len(rows))]
        Xs = X.iloc[: len(sample)]
        del X
        explainer = shap.TreeExplainer(model.booster)
        t, c = time.perf_counter(), time.process_time()
        sv = np.asarray(explainer.shap_values(Xs))
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        ours = model.contributions(sample, num_threads=2)[:, :-1]
        np.testing.assert_allclose(ours, sv, rtol=1e-9, atol=1e-9)
        # the reasons written by rescore are SHAP's 3 largest in magnitude (ties: the lower
        # feature), leaving out a missing value that says nothing and, in a row, a sentence an
        # earlier model already gave (README, "Reasons")
        checked = 0
        rank = {m: i for i, m in enumerate(ALL_MODELS)}
        for i, (lead, contrib) in enumerate(zip(sample["lead_id"].head(500), sv[:500],
                                                strict=False)):
            every = json.loads(written.at[lead, "reasons"])
            rs = [r for r in every if r["model"] == name]
            said = {r["sentence"] for r in every if rank[r["model"]] < rank[name]}
            row = sample.iloc[i]

            def says(f, row=row):
                v = row[f]
                return catalog.feature(f).sentence(None if pd.isna(v) else v)

            eligible = [j for j in range(len(contrib))
                        if contrib[j] != 0 and says(model.features[j]) is not None]
            top = sorted(eligible, key=lambda j: (-abs(contrib[j]), j))[:3]
            want = [model.features[j] for j in top if says(model.features[j]) not in said]
            assert [r["feature"] for r in rs] == want, (lead, name)
            for r in rs:
                j = model.features.index(r["feature"])
                assert abs(r["contribution"] - contrib[j]) <= 1e-6
            checked += 1
        out["shap"][name] = {"rows": len(Xs), "seconds": secs, "cpu": cpu,
                             "reasons_checked": checked,
                             "max_abs_diff": float(np.max(np.abs(ours - sv)))}
    slot = scorer.models.get("contact-slot")
    if slot is not None:
        out["slot"] = slot_reference(scorer, feats[feats["is_open"]])
    q.put(out)


SLOT_SAMPLE = 2_000


def slot_reference(scorer, open_rows: pd.DataFrame) -> dict:
    """The slot search on a sample of open leads: the scorer's (its candidate rows collected
    on the way) against bare ``Booster.predict`` over those same candidate rows, ready-made.
    The candidates' raw scores are asserted equal; both times are extrapolated to every
    open lead."""
    from leadscore.scoring.scorer import SLOT_MODEL, Scorer

    slot = scorer.models[SLOT_MODEL]
    sample = open_rows.iloc[:SLOT_SAMPLE]
    alone = Scorer({SLOT_MODEL: slot}, num_threads=2, rules=scorer.rules)
    alone.score(sample.iloc[:50], reasons=0)  # warm: grids, kernels
    t, c = time.perf_counter(), time.process_time()
    alone.score(sample, reasons=0)
    ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
    seen = []
    real = type(slot).predict_proba_runs

    def keep(self, lead, vals, vcols, num_threads=1):  # the candidate rows, laid out in full
        p = real(self, lead, vals, vcols, num_threads=num_threads)
        rep = np.repeat(lead, vals.shape[1], axis=0)
        rep[:, vcols] = vals.reshape(len(rep), -1)
        seen.append((rep, p.reshape(-1)))
        return p

    type(slot).predict_proba_runs = keep
    try:
        alone.score(sample, reasons=0)
    finally:
        type(slot).predict_proba_runs = real
    cand = np.concatenate([x for x, _ in seen])
    t, c = time.perf_counter(), time.process_time()
    bare = slot.booster.predict(cand, raw_score=True, num_threads=2)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    np.testing.assert_allclose(slot.calibrator(bare), np.concatenate([p for _, p in seen]),
                               rtol=0, atol=1e-9)
    scale = len(open_rows) / len(sample)
    return {"leads": len(sample), "candidates": len(cand), "scale": scale,
            "predict_seconds": secs * scale, "predict_cpu": cpu * scale,
            "ours_seconds": ours * scale, "ours_cpu": ours_cpu * scale}


def run_child(target, *args) -> tuple[dict, int, float]:
    """Run ``target`` in a fresh process; return its result, the peak RSS of its process tree
    and the CPU seconds the tree used (sampled, so Spark's JVM and workers count too)."""
    import psutil

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    peak = 0
    cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample():
        nonlocal peak
        try:
            root = psutil.Process(p.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for pr in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += pr.memory_info().rss
                        ct = pr.cpu_times()
                        cpu[pr.pid] = ct.user + ct.system
                peak = max(peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    result = None
    while result is None:
        try:
            result = q.get(timeout=1)
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(
                    f"{target.__name__} died with exit code {p.exitcode}") from None
    p.join()
    stop.set()
    th.join()
    cpu[p.pid] = max(cpu.get(p.pid, 0.0), result.get("cpu_self", 0.0))
    return result, peak, sum(cpu.values())


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leads", type=int, default=1_000_000)
    ap.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb")
    ap.add_argument("--bucket-leads", type=int, default=None)
    ap.add_argument("--shap-rows", type=int, default=20_000)
    ap.add_argument("--with-slot", action="store_true", help="also the contact-slot model")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data/models here")
    args = ap.parse_args()

    from leadscore.nightly import per_bucket

    bucket = args.bucket_leads or per_bucket.DEFAULT_BUCKET_LEADS
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-rescore-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"data-{args.leads}"
    print(f"rescore benchmark: {args.leads:,} leads, engine {args.engine}, "
          f"{bucket:,} leads per bucket, {os.cpu_count()} cores, work in {root}")
    t = time.perf_counter()
    if not (data / "leads").is_dir():
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            info = pool.apply(generate, (data, args.leads))
        print(f"  data: {info['leads']:,} leads, {info['events']:,} events "
              f"({time.perf_counter() - t:.0f}s to simulate)")
    models_dir = root / "models"
    if not models_dir.is_dir() or args.with_slot != (models_dir / "contact-slot").is_dir():
        shutil.rmtree(models_dir, ignore_errors=True)
        t = time.perf_counter()
        trees = train_models(root, args.with_slot)
        print(f"  models: {trees} trees ({time.perf_counter() - t:.0f}s to train)")
    import duckdb

    (end,) = duckdb.sql(
        f"SELECT max(ts)::VARCHAR FROM read_parquet('{data}/events/*.parquet')").fetchall()[0]
    as_of = str(pd.Timestamp(end).floor("D"))

    # the nightly job as it runs: yesterday's run kept the validated history; today's drop
    # (the last day's rows) arrives; the run validates it and rescores every open lead
    cut = str(pd.Timestamp(as_of) - pd.Timedelta(days=1))
    nightly, cache, kept = root / f"nightly-{args.leads}", root / "intake", root / "intake-kept"
    for d in (nightly, nightly.with_name(nightly.name + ".day"), cache, kept,
              root / "intake-cold"):
        shutil.rmtree(d, ignore_errors=True)
    staged = nightly_layout(data, nightly, cut)

    def rescore(label: str, out: str, at: str, reasons: int, cache_dir: Path,
                previous: str = "out-yesterday") -> tuple:
        res, peak, cpu = run_child(child_rescore, str(nightly), str(root / out),
                                   str(models_dir), at, reasons, bucket, args.engine,
                                   str(cache_dir), str(root / previous) if previous else "")
        ph = ", ".join(f"{k} {v:.1f}s" for k, v in res["phases"].items())
        # in process only; the next bucket's features overlap the scoring of this one
        ph = f"; in-process phases (overlapping): {ph}" if args.engine == "duckdb" else ""
        print(f"  {label}: {res['rows']:,} rows in {res['seconds']:.1f}s "
              f"({cpu:.0f} CPU-s) = {res['rows'] / res['seconds']:,.0f} rows/s; intake "
              f"{res['intake']}; peak RSS {peak / 1e9:.2f} GB{ph}")
        return res, peak, cpu

    rescore("yesterday (validates all history)", "out-yesterday", cut, 0, cache, "")
    for f in sorted(staged.rglob("*.parquet")):  # today's drop arrives
        os.replace(f, nightly / f.relative_to(staged))
    shutil.copytree(cache, kept, copy_function=os.link)  # segments are never rewritten
    runs = {0: rescore("tonight, reasons=0", "out-r0", as_of, 0, cache)}
    shutil.rmtree(cache)
    shutil.copytree(kept, cache, copy_function=os.link)
    runs[3] = rescore("tonight, reasons=3", "out-r3", as_of, 3, cache)
    cold = rescore("tonight, reasons=0, nothing kept (validates everything)", "out-cold",
                   as_of, 0, root / "intake-cold")
    ref, _, _ = run_child(child_reference, str(data), str(root / "ref-work"), str(models_dir),
                          as_of, bucket, args.shap_rows, str(root / "out-r3"))
    assert ref["rows"] == runs[0][0]["rows"] == runs[3][0]["rows"] == cold[0]["rows"]
    rows = ref["rows"]
    pred = {k: sum(v[k] for v in ref["predict"].values()) for k in ("seconds", "cpu")}
    shap_ = {k: sum(v[k] * ref["predict"][m]["rows"] / v["rows"]  # extrapolated to all rows
                    for m, v in ref["shap"].items()) for k in ("seconds", "cpu")}
    walk = {k: sum(v[k] for v in ref["walk"].values()) for k in ("seconds", "cpu")}
    walk_ratio = pred["seconds"] / walk["seconds"]  # the same models' matrices, no slots
    if "slot" in ref:  # the slot model's bare reference: its candidates through predict
        sl = ref["slot"]
        print(f"  contact-slot: {sl['leads']:,} open leads' {sl['candidates']:,} candidate "
              f"slots through bare Booster.predict in {sl['predict_seconds'] / sl['scale']:.2f}s"
              f", the scorer's slot search {sl['ours_seconds'] / sl['scale']:.2f}s (same "
              f"scores); x{sl['scale']:.0f} for every open lead: {sl['predict_seconds']:.1f}s "
              f"vs {sl['ours_seconds']:.1f}s, counted in the reference below")
        pred = {k: pred[k] + sl[f"predict_{k}"] for k in ("seconds", "cpu")}
    for k, v in ref["predict"].items():
        s, w = ref["shap"][k], ref["walk"][k]
        print(f"  {k:10s} Booster.predict {v['rows']:,} rows in {v['seconds']:.2f}s "
              f"(median of {v['all_seconds']}; {v['cpu']:.1f} CPU-s); "
              f"the scorer's walk ({w['path']}) {w['seconds']:.2f}s ({w['cpu']:.1f} CPU-s, "
              f"same raw scores); "
              f"shap {s['rows']:,} rows in {s['seconds']:.2f}s "
              f"({s['cpu']:.1f} CPU-s; max |diff| vs ours {s['max_abs_diff']:.1e}, "
              f"{s['reasons_checked']} rows' reasons checked)")
    (r0, p0, c0), (r3, p3, c3) = runs[0], runs[3]
    w0, w3 = rows / r0["seconds"], rows / r3["seconds"]
    bare = rows / pred["seconds"]
    print(f"(a) rescore, no reasons: {w0:,.0f} rows/s vs bare Booster.predict "
          f"{bare:,.0f} rows/s = {w0 / bare:.1%} "
          f"(per CPU-second: {pred['cpu'] / c0:.1%}) (goal >= 50%); with nothing kept: "
          f"{rows / cold[0]['seconds']:,.0f} rows/s = {rows / cold[0]['seconds'] / bare:.1%}")
    print(f"    the scorer's tree walk alone over the same ready matrices: "
          f"{rows / walk['seconds']:,.0f} rows/s = {walk_ratio:.2f}x Booster.predict; "
          f"rescore end to end = {walk['seconds'] / r0['seconds']:.1%} of it"
          + (" (the walk without the slot search)" if "slot" in ref else ""))
    print(f"(b) rescore, top-3 reasons: {w3:,.0f} rows/s vs shap.TreeExplainer "
          f"{rows / shap_['seconds']:,.0f} rows/s = {shap_['seconds'] / r3['seconds']:.2f}x "
          f"(per CPU-second: {shap_['cpu'] / c3:.2f}x) (goal >= 3x)")
    print(f"(c) peak RSS incl. children: {max(p0, p3, cold[1]) / 1e9:.2f} GB for "
          f"{args.leads:,} leads "
          f"(goal < 4 GB at 1,000,000)")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
