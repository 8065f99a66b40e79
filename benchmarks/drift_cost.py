"""Benchmark: what the nightly drift counts cost, as CPU time of the same night with and
without them (alternating runs in one process, reasons off).

Data and models as :mod:`benchmarks.rescore` makes them (``--workdir`` shares its
``data-N`` and ``models`` folders: ``python benchmarks/rescore.py --leads 50000 --workdir
DIR`` creates them, or this script does). "Without" is the same scorer with the drift
reference taken out of each model's metadata, so :class:`leadscore.nightly.watch.Watch`
counts nothing. The intake is validated once before the timed runs; each timed run redoes
every bucket (``force``) from the kept intake. Goal: with / without <= 1.10. Also printed:
the CPU time spent inside the drift code itself (counting, saving, the report), which a
busy machine blurs less than the difference of two runs.

    python benchmarks/drift_cost.py --leads 50000 --workdir /tmp/drift50k --pairs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leads", type=int, default=50_000)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--bucket-leads", type=int, default=None)
    args = ap.parse_args()

    from benchmarks.rescore import generate, load_scorer, train_models
    from leadscore.drift import REFERENCE_KEY
    from leadscore.nightly import batch, per_bucket
    from leadscore.scoring.scorer import Scorer

    root = args.workdir
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"data-{args.leads}"
    if not (data / "leads").is_dir():
        with mp.get_context("spawn").Pool(1) as pool:
            pool.apply(generate, (data, args.leads))
    if not (root / "models").is_dir():
        train_models(root, with_slot=False)
    import duckdb

    (end,) = duckdb.sql(
        f"SELECT max(ts)::VARCHAR FROM read_parquet('{data}/events/*.parquet')").fetchall()[0]
    as_of = pd.Timestamp(end).floor("D")
    with_drift = load_scorer(root / "models")
    lacking = [n for n, m in with_drift.models.items() if REFERENCE_KEY not in m.meta]
    if lacking:
        raise SystemExit(f"models without a drift reference: {lacking} (retrain: delete "
                         f"{root / 'models'})")
    without = Scorer({n: dataclasses.replace(m, meta={k: v for k, v in m.meta.items()
                                                      if k != REFERENCE_KEY})
                      for n, m in with_drift.models.items()},
                     num_threads=2, rules=with_drift.rules)
    import logging

    from leadscore.nightly import watch

    logging.getLogger(watch.__name__).setLevel(logging.ERROR)  # the simulator's alerts

    spent = {"count": 0.0, "save": 0.0, "report": 0.0}
    for name in spent:  # the CPU time of the drift code itself (all on the calling thread)
        real = getattr(watch.Watch, name)

        def timed(*a, _real=real, _name=name, **kw):
            c = time.thread_time()
            try:
                return _real(*a, **kw)
            finally:
                spent[_name] += time.thread_time() - c

        setattr(watch.Watch, name, timed)
    bucket = args.bucket_leads or per_bucket.DEFAULT_BUCKET_LEADS
    cache = root / "drift-intake"

    def night(scorer, label: str) -> tuple[float, float]:
        for k in spent:
            spent[k] = 0.0
        c, t = time.process_time(), time.perf_counter()
        res = batch.rescore(data, as_of, root / f"drift-out-{label}", reasons=0,
                            bucket_leads=bucket, force=True, scorer=scorer, cache=cache)
        cpu, wall = time.process_time() - c, time.perf_counter() - t
        alerts = sum(map(len, res.drift_alerts.values()))
        print(f"  {label:8s} {res.rows:,} rows: {cpu:.2f} CPU-s, {wall:.2f} s; drift code "
              + ", ".join(f"{k} {v:.3f}" for k, v in spent.items())
              + f" CPU-s; {alerts} alerts", flush=True)
        if label == "with":
            inside.append(sum(spent.values()))
        return cpu, wall

    inside: list[float] = []
    night(with_drift, "warm-up")  # validates the intake once
    runs: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    for i in range(args.pairs):
        order = ("without", "with") if i % 2 == 0 else ("with", "without")
        for label in order:
            runs[label].append(night(with_drift if label == "with" else without, label))
    cpu = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in runs.items()}
    print(f"median CPU: with {cpu['with']:.2f} s, without {cpu['without']:.2f} s = "
          f"{cpu['with'] / cpu['without']:.3f}x (goal <= 1.10); wall {wall['with']:.2f} s vs "
          f"{wall['without']:.2f} s = {wall['with'] / wall['without']:.3f}x; the drift code "
          f"itself {statistics.median(inside):.3f} CPU-s = "
          f"{statistics.median(inside) / cpu['without']:.1%} of the night without it")


if __name__ == "__main__":
    main()
