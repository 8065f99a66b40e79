"""The Spark engine: the functions of :mod:`leadscore.nightly.per_bucket`, run by Spark tasks.

Nothing here computes a feature or a score. The driver validates the inputs and splits them into
buckets of leads (hash of ``lead_id``) exactly as the embedded engine does
(:mod:`leadscore.nightly.batch`); then each bucket is one Spark task that opens the bucket's
Parquet files with DuckDB (:func:`~leadscore.nightly.per_bucket.bucket_connection`) and runs
the very same :func:`~leadscore.nightly.per_bucket.bucket_features` (feature SQL of
:mod:`leadscore.features.job`, then :meth:`Scorer.score`) or :func:`job.compute`. So the two
engines agree by construction; the parity tests prove it.

How it runs:

- **one session per process** (:func:`session`), ``local[*]`` unless ``LEADSCORE_SPARK_MASTER``
  says otherwise; the UI is off, shuffle partitions few, driver memory modest (the driver only
  writes parts), Arrow on, and the Python workers run this interpreter;
- **models shipped once**: the driver broadcasts the boosters (LightGBM's text format) with
  their metadata and the contact rules; a worker rebuilds the :class:`Scorer` the first time it
  needs it and keeps it in a module variable, so a reused worker loads the models once;
- **results streamed, memory bounded**: each bucket is its own small Spark job
  (``mapInArrow`` over a one-row frame holding the bucket number, output schema = the part
  schema of ``OUTPUT_COLUMNS``); at most ``defaultParallelism`` jobs run at once and a new one
  starts only when the driver has taken a finished bucket, which it hands to the same atomic
  part writer and manifest as the embedded engine. Killing the driver loses at most the buckets
  in flight; a rerun resumes from the manifest.

The bucket files must be readable by the executors: automatic with a ``local`` master; on a
cluster put the output folder on storage every node mounts, and install ``leadscore`` on the
executors (otherwise the package is shipped as a zip).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

MASTER_ENV = "LEADSCORE_SPARK_MASTER"
DRIVER_MEMORY_ENV = "LEADSCORE_SPARK_DRIVER_MEMORY"
DEFAULT_MASTER = "local[*]"
DEFAULT_DRIVER_MEMORY = "1g"
#: rows per Arrow batch a task hands back to Spark
BATCH_ROWS = 10_000

_session = None
_session_lock = threading.Lock()


# --------------------------------------------------------------------------- the session


def _package_root() -> Path:
    import leadscore

    return Path(leadscore.__file__).resolve().parents[1]


def _ship_package(sc) -> None:
    """For a cluster master: send the leadscore package to the executors as a zip."""
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-pkg-"))
    archive = shutil.make_archive(str(tmp / "leadscore"), "zip", root_dir=_package_root(),
                                  base_dir="leadscore")
    sc.addPyFile(archive)


def session():
    """The process's SparkSession, created on first use with leadscore's settings."""
    global _session
    with _session_lock:
        if _session is not None and _session.sparkContext._jsc is not None:
            return _session
        from pyspark.sql import SparkSession

        # pyspark warns about pandas 3 on every Arrow UDF; this engine hands Spark Arrow only
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)
        logging.getLogger("py4j").setLevel(logging.WARNING)
        master = os.environ.get(MASTER_ENV, DEFAULT_MASTER)
        local = master.startswith("local")
        # the workers must run this interpreter (same pandas, lightgbm, duckdb); a cluster may
        # name its own through PYSPARK_PYTHON
        if local or not os.environ.get("PYSPARK_PYTHON"):
            os.environ["PYSPARK_PYTHON"] = sys.executable
        if local:  # stay on the loopback interface: no network lookups, no exposed ports
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        cores = os.cpu_count() or 2
        py_path = os.pathsep.join(
            p for p in (str(_package_root()), os.environ.get("PYTHONPATH", "")) if p
        )
        builder = (
            SparkSession.builder.master(master)
            .appName("leadscore")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(min(8, max(2, cores))))
            .config("spark.driver.memory",
                    os.environ.get(DRIVER_MEMORY_ENV, DEFAULT_DRIVER_MEMORY))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.python.worker.reuse", "true")
            .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
            .config("spark.executorEnv.PYTHONPATH", py_path)
            .config("spark.executorEnv.PYSPARK_PYTHON", os.environ["PYSPARK_PYTHON"])
        )
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        if not local:
            _ship_package(_session.sparkContext)
        log.info("spark: session on %s, parallelism %d", master,
                 _session.sparkContext.defaultParallelism)
        return _session


def stop() -> None:
    """Stop the process's session (tests, long-lived processes done with Spark)."""
    global _session
    with _session_lock:
        if _session is not None:
            _session.stop()
            _session = None


# --------------------------------------------------------------------------- models on workers

_worker_scorer: tuple[str, object] | None = None  # (payload key, Scorer), per worker process
_worker_watch: tuple[str, object] | None = None  # (payload key, Watch), per worker process


def _payload(scorer) -> tuple[str, bytes]:
    """The scorer as plain data: boosters as LightGBM text, metadata, the contact rules and
    the intent-grade thresholds."""
    models = {}
    for name, m in scorer.models.items():
        booster, meta = m.to_text()  # the artifact's own serialisation, nothing left out
        # the driver's choice (LEADSCORE_ACCELERATE, the kernels' check): workers follow it,
        # checking the kernels again in their own process
        models[name] = {"booster": booster, "meta": meta,
                        "accelerate": m.scoring_path == "accelerated"}
    blob = pickle.dumps({"models": models, "rules": scorer.rules, "intent": scorer.intent})
    return hashlib.sha256(blob).hexdigest()[:16], blob


def _scorer_on_worker(key: str, payload) -> object:
    """The broadcast scorer, rebuilt once per worker process (and per distinct payload)."""
    global _worker_scorer
    if _worker_scorer is None or _worker_scorer[0] != key:
        from leadscore.artifact import LeadModel
        from leadscore.scoring.scorer import Scorer

        data = pickle.loads(payload.value)
        models = {name: LeadModel.from_text(d["booster"], d["meta"])
                  for name, d in data["models"].items()}
        for name, m in models.items():
            m.accelerate(data["models"][name]["accelerate"])
        scorer = Scorer(models, num_threads=1, rules=data["rules"], intent=data["intent"])
        _worker_scorer = (key, scorer)
    return _worker_scorer[1]


# --------------------------------------------------------------------------- bucket tasks


def _buckets_of(batches) -> Iterator[int]:
    for rb in batches:
        for b in rb.column(0).to_pylist():
            yield int(b)


def _score_task(batches, *, work: str, as_of: str, key: str, payload, reasons: int,
                schema: pa.Schema, lang: str | None = None, counts_out: str | None = None):
    """Runs in a Spark Python worker: score whole buckets, yield their rows as Arrow.
    ``counts_out``: the output folder the bucket's drift counts are saved in, before its
    rows go back to the driver (which records the part after)."""
    global _worker_watch
    from leadscore.nightly import per_bucket, watch

    scorer = _scorer_on_worker(key, payload)
    if counts_out is not None and (_worker_watch is None or _worker_watch[0] != key):
        _worker_watch = (key, watch.Watch(scorer.models))
    for b in _buckets_of(batches):
        con = per_bucket.bucket_connection(Path(work), b, threads=1)
        try:
            feats = per_bucket.bucket_features(con, pd.Timestamp(as_of), scorer.job_features)
        finally:
            con.close()
        scored = per_bucket.score_features(feats, scorer, reasons, lang)
        if counts_out is not None:
            w = _worker_watch[1]
            w.save(Path(counts_out), b, w.count(feats, scored))
        table = pa.Table.from_pandas(per_bucket.fmt_types(scored), schema=schema,
                                     preserve_index=False)
        yield from table.to_batches(max_chunksize=BATCH_ROWS)


def _features_task(batches, *, work: str, cutoffs: list[str], only_open: bool,
                   schema: pa.Schema, vocabulary: Sequence[str] = ()):
    """Runs in a Spark Python worker: the feature job over whole buckets (the catalogue and
    the ``vocabulary`` event types' features)."""
    from leadscore.features import catalog, job
    from leadscore.nightly import per_bucket

    feats = [*catalog.CATALOG, *catalog.vocabulary_features(vocabulary)]
    for b in _buckets_of(batches):
        con = per_bucket.bucket_connection(Path(work), b, threads=1)
        try:
            table = job.compute(con, [pd.Timestamp(t) for t in cutoffs], feats,
                                only_open=only_open)
        finally:
            con.close()
        yield from table.cast(schema).to_batches(max_chunksize=BATCH_ROWS)


def _spark_compatible(schema: pa.Schema) -> pa.Schema:
    """The Arrow types Spark hands back for ``schema`` (plain strings, µs UTC timestamps)."""
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        elif pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC")
        fields.append(pa.field(f.name, t, nullable=True))
    return pa.schema(fields)


def _run_buckets(buckets: Sequence[int], task: Callable, schema: pa.Schema,
                 what: str) -> Iterator[tuple[int, pa.Table]]:
    """Run ``task`` over each bucket as its own Spark job; yield (bucket, Arrow table) as
    they finish. At most ``defaultParallelism`` jobs are in flight, and a new one starts only
    once the caller has taken a finished bucket, so the driver holds a bounded number of
    results whatever the number of buckets."""
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.util import inheritable_thread_target

    spark = session()
    sc = spark.sparkContext
    spark_schema = from_arrow_schema(schema)
    group = f"leadscore-{what}-{uuid.uuid4().hex[:8]}"

    def one(b: int) -> tuple[int, pa.Table]:
        sc.setJobGroup(group, f"leadscore {what} bucket {b}", interruptOnCancel=True)
        frame = spark.range(b, b + 1, 1, numPartitions=1)
        return b, frame.mapInArrow(task, spark_schema).toArrow()

    todo = list(buckets)
    if not todo:
        return
    width = max(1, min(sc.defaultParallelism, len(todo)))
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="leadscore-spark")
    running: set[Future] = set()
    target = inheritable_thread_target(spark)(one)
    try:
        while todo or running:
            while todo and len(running) < width:
                running.add(pool.submit(target, todo.pop(0)))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
    finally:
        if running:
            sc.cancelJobGroup(group)
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- engine entry points


def rescore_buckets(work: Path, buckets: Sequence[int], as_of: pd.Timestamp, scorer,
                    reasons: int, lang: str | None = None, counts_out: Path | None = None,
                    ) -> Iterator[tuple[int, pd.DataFrame]]:
    """Score the given buckets of ``work`` on Spark; yield (bucket, rows) as each finishes.
    ``counts_out``: where the tasks save each bucket's drift counts
    (:mod:`leadscore.nightly.watch`; a folder every executor can write).

    The rows are the ones :func:`per_bucket.score_features` gives, typed as the parts are;
    the caller (:func:`batch.rescore`) writes them with the same atomic part writer as the
    embedded engine and records them in the manifest.
    """
    from leadscore.nightly import per_bucket

    spark = session()
    key, blob = _payload(scorer)
    payload = spark.sparkContext.broadcast(blob)
    schema = _spark_compatible(per_bucket.part_schema())
    task = functools.partial(_score_task, work=str(Path(work).resolve()),
                             as_of=pd.Timestamp(as_of).isoformat(), key=key,
                             payload=payload, reasons=int(reasons), schema=schema,
                             lang=lang,
                             counts_out=None if counts_out is None
                             else str(Path(counts_out).resolve()))
    try:
        for b, table in _run_buckets(buckets, task, schema, "rescore"):
            yield b, table.to_pandas()
    finally:
        payload.destroy()


def compute_features(ds, cutoffs: Sequence[pd.Timestamp], out: Path, *, only_open: bool = False,
                     bucket_leads: int | None = None,
                     vocabulary: Sequence[str] = ()) -> tuple[int, int]:
    """``leadscore features --engine spark``: the feature job per bucket of leads on Spark,
    concatenated into one Parquet file ordered like the embedded engine's (as_of, lead_id).

    ``ds`` is the validated :class:`~leadscore.contract.Dataset`. Returns (rows, columns).
    """
    import math

    import duckdb
    import pyarrow.parquet as pq

    from leadscore import contract
    from leadscore.features import catalog, job
    from leadscore.nightly import per_bucket

    feats = [*catalog.CATALOG, *catalog.vocabulary_features(vocabulary)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bucket_leads = bucket_leads or per_bucket.DEFAULT_BUCKET_LEADS
    n_leads = ds.con.execute("SELECT count(*) FROM leads").fetchone()[0]
    n_buckets = max(1, math.ceil(n_leads / bucket_leads))
    cut = [pd.Timestamp(t) for t in cutoffs]
    # the output schema: the feature SQL over empty tables
    probe = contract.connect(threads=1)
    try:
        for table in contract.TABLES:
            contract.empty_table(probe, table)
        schema = job.compute(probe, cut, feats, only_open=only_open).schema
    finally:
        probe.close()
    wire = _spark_compatible(schema)

    work = out.parent / f".{out.name}.spark-{uuid.uuid4().hex[:8]}"
    try:
        per_bucket.split_buckets(ds, work / "in", n_buckets)
        parts = work / "parts"
        parts.mkdir()
        task = functools.partial(_features_task, work=str((work / "in").resolve()),
                                 cutoffs=[t.isoformat() for t in cut], only_open=only_open,
                                 schema=wire, vocabulary=list(vocabulary))
        files = []
        for b, table in _run_buckets(range(n_buckets), task, wire, "features"):
            f = parts / f"bucket-{b:05d}.parquet"
            pq.write_table(table.cast(schema), f)
            files.append(str(f))
        rows = 0
        tmp = out.with_name(f".{out.name}.tmp")
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone='UTC'")
            if files:
                paths = ", ".join(contract.lit(f) for f in sorted(files))
                reader = con.sql(
                    f"SELECT * FROM read_parquet([{paths}]) ORDER BY as_of, lead_id"
                ).fetch_record_batch(BATCH_ROWS * 10)
            else:
                reader = pa.RecordBatchReader.from_batches(schema, [])
            with pq.ParquetWriter(tmp, schema) as writer:
                for rb in reader:
                    writer.write_table(pa.Table.from_batches([rb]).cast(schema))
                    rows += rb.num_rows
        finally:
            con.close()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, len(schema)
