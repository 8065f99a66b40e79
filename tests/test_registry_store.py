"""The MLflow store: two processes that touch a brand-new SQLite store at once both work."""

from __future__ import annotations

import multiprocessing as mp

ROUNDS = 2  # the cold start (round 0) is where the race shows


def _worker(uris: list[str], barrier, results, who: int) -> None:
    """Meet the other process at the barrier, then configure and create an experiment on a
    store neither has used yet."""
    import os

    from leadscore import registry

    for i, uri in enumerate(uris):
        os.environ["MLFLOW_TRACKING_URI"] = uri
        barrier.wait(timeout=120)
        try:
            registry.client().create_experiment(f"race-{who}-{i}")
            results.put((who, i, "ok"))
        except Exception as e:  # reported to the parent, which asserts on it
            results.put((who, i, f"{type(e).__name__}: {e}"))


def test_two_processes_create_a_new_sqlite_store_at_once(tmp_path):
    uris = [f"sqlite:///{tmp_path / f'round{i}' / 'mlruns.db'}" for i in range(ROUNDS)]
    for i in range(ROUNDS):
        (tmp_path / f"round{i}").mkdir()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(uris, barrier, results, w)) for w in (0, 1)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in range(2 * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
    failed = sorted(r for r in got if r[2] != "ok")
    assert not failed, failed
