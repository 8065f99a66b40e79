"""Nightly rescoring: every open lead (and owner, for churn) through the champion models.

How it keeps its promises:
- **bounded memory**: the inputs are validated straight into Parquet partitioned by a hash of
  ``lead_id`` (bad rows to quarantine, clean rows to their bucket), kept between nights so a
  night validates only its new files (:mod:`leadscore.nightly.intake`) and reduces only
  their events into the feature rollups kept beside them (:mod:`leadscore.features.rollup`);
  each bucket is featurised and scored alone, so memory follows the bucket size, not the
  number of leads;
- **nothing lost, nothing doubled**: each bucket's result is written to a hidden temp file and
  renamed to ``part-NNNNN.parquet`` (atomic on POSIX), then recorded in ``_manifest.json``
  (itself replaced atomically). Readers ignore ``_``/``.`` files, so they see whole parts only.
  A rerun after a crash skips the buckets the manifest holds and redoes the rest; a bucket
  written but not yet recorded is simply rewritten under the same name;
- **idempotent**: a finished run with the same inputs (each file's path, size and modification
  time), cutoff, models and settings is a no-op unless ``force``, decided before reading any
  rows; different inputs into the same folder need ``force`` (which clears it). A rerun after a
  crash finds the inputs already validated in the intake;
- **drift, every night**: each bucket's bin counts of the models' features and scores are
  saved beside its part before the part is recorded, and ``_drift.json`` is written from
  their sums at the end (:mod:`leadscore.nightly.watch`), a resumed run included.
- **what changed**: each bucket's conversion features are kept beside its part too, for the
  next night's changes (:mod:`leadscore.nightly.previous`; embedded engine only).

The functions of :mod:`leadscore.nightly.per_bucket` are what both engines run, the Spark
engine (:mod:`leadscore.nightly.spark`) per partition: both hand their buckets' results
to the same part writer here, so parts, manifest, resume and no-op rerun behave the same
whichever engine ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leadscore import atomic, contract, drift
from leadscore import lang as language
from leadscore.features import catalog as cat
from leadscore.features import job, rollup
from leadscore.nightly import intake, per_bucket, watch
from leadscore.nightly import previous as last_run
from leadscore.scoring import changes
from leadscore.scoring.contact_policy import RulesFile
from leadscore.scoring.intent import IntentRules
from leadscore.scoring.scorer import ALL_MODELS, OUTPUT_COLUMNS, Scorer, iso_utc_column

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
#: buckets whose features are computed ahead of the one being scored
AHEAD = 2
ENGINES = ("duckdb", "spark")
LOAD_MEMORY_ENV = "LEADSCORE_DUCKDB_MEMORY"
DEFAULT_LOAD_MEMORY = "2GB"
_TMP_SUFFIX = ".tmp"


@dataclass
class RescoreResult:
    out: Path
    rows: int
    buckets: int
    skipped_buckets: int
    seconds: float
    noop: bool
    quarantined: int
    model_versions: dict[str, str]
    #: ``_drift.json``'s content: per model, PSI of the score and features, and the alerts
    drift: dict | None = None

    @property
    def drift_alerts(self) -> dict[str, list[str]]:
        return watch.alerts(self.drift or {})


def _write_part(out: Path, bucket: int, scored: pd.DataFrame) -> int:
    """Write one bucket's rows as ``part-NNNNN.parquet``: to a hidden temp file first, then
    renamed (atomic on POSIX), so a reader never sees half a part. Returns the row count.

    Straight to the parts' Arrow schema: the same file as
    ``per_bucket.fmt_types(scored).to_parquet`` (schema, metadata and values; tested), without
    converting every column in pandas first (about half the time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = out / f"part-{bucket:05d}.parquet"
    tmp = out / f".{part.name}{_TMP_SUFFIX}"
    schema = per_bucket.pandas_part_schema()
    table = pa.Table.from_pandas(scored[list(OUTPUT_COLUMNS)], schema=schema,
                                 preserve_index=False, safe=False)
    pq.write_table(table.replace_schema_metadata(schema.metadata), tmp)
    os.replace(tmp, part)
    return len(scored)


def _bucket_features(work: Path, bucket: int, as_of: pd.Timestamp,
                     segments: Sequence[dict] | None = None,
                     features: Sequence[cat.Feature] = cat.CATALOG,
                     only: Sequence[str] | None = None) -> pd.DataFrame:
    """A bucket's features: from the intake's kept rollups when they can give them (a UTC
    midnight cutoff; :mod:`leadscore.features.rollup`), else from its events. The rollups
    keep every event type by name, so vocabulary features come from them too. ``only``: the
    rows of these lead ids (the rollups then reduce only theirs)."""
    table = (rollup.features(work, bucket, segments, as_of, features, only)
             if segments is not None else None)
    lead_cols = [f for f in features if isinstance(f, cat.LeadColumn)]
    if table is not None and lead_cols:
        table = _with_lead_columns(work, bucket, table, lead_cols)
    if table is None:
        con = per_bucket.bucket_connection(work, bucket)
        try:
            table = job.compute(con, [as_of], features)
        finally:
            con.close()
    if only is not None:
        table = table.filter(pc.is_in(table.column("lead_id"), value_set=pa.array(
            list(only), table.column("lead_id").type)))
    return per_bucket.entities(table, features)


def _with_lead_columns(work: Path, bucket: int, table: pa.Table,
                       feats: Sequence[cat.LeadColumn]) -> pa.Table:
    """The rollups' features with the lead-column ones read from the bucket's leads (the
    rollups keep events, not CRM fields), by the job's own SQL for them."""
    con = per_bucket.bucket_connection(work, bucket)
    try:
        have = job.leads_columns(con)
        sel = ", ".join(f'{job.lead_column_sql(f, f.column in have)} AS "{f.name}"'
                        for f in feats)
        got = con.sql(f"SELECT lead_id, {sel} FROM leads").to_arrow_table()
    finally:
        con.close()
    at = pd.Index(got.column("lead_id").to_pandas()).get_indexer(
        table.column("lead_id").to_pandas())
    take = pa.array(at, mask=at < 0)  # a lead without a row: missing
    for f in feats:
        i = table.column_names.index(f.name)
        table = table.set_column(i, f.name, got.column(f.name).take(take))
    return table


def _score_embedded(work: Path, buckets: Sequence[int], as_of: pd.Timestamp, scorer: Scorer,
                    reasons: int, segments: Sequence[dict] | None = None,
                    prev: last_run.Previous | None = None, lang: str | None = None,
                    counted=None):
    """The embedded engine: buckets one after another in this process, the features of the
    next ``AHEAD`` buckets computed on threads of their own while this one is scored and
    written. DuckDB, numpy and the tree walks release the GIL, so each phase's
    single-threaded stretches (pandas, Parquet) leave a core to the other; at most ``AHEAD``
    buckets' features wait, so memory stays bounded. ``counted(bucket, features, rows)``:
    called with each bucket's features and scored rows before it is handed on (the drift
    counts, the features kept for tomorrow's changes)."""
    if not buckets:
        return
    if segments is not None and not rollup.applies(as_of):
        log.info("rescore: features from the events (the kept rollups give UTC midnights, "
                 "not %s)", as_of)
    with ThreadPoolExecutor(AHEAD, thread_name_prefix="leadscore-features") as pool:
        ahead = [pool.submit(_bucket_features, work, b, as_of, segments, scorer.job_features)
                 for b in buckets[:AHEAD]]
        for i, b in enumerate(buckets):
            feats = ahead.pop(0).result()
            if i + AHEAD < len(buckets):
                ahead.append(pool.submit(_bucket_features, work, buckets[i + AHEAD], as_of,
                                         segments, scorer.job_features))
            scored = per_bucket.score_features(feats, scorer, reasons, lang)
            if counted is not None:
                counted(b, feats, scored)
            yield b, _compared(work, b, scored, feats, prev, scorer, segments, lang)


def _compared(work: Path, bucket: int, scored: pd.DataFrame, feats: pd.DataFrame | None,
              prev: last_run.Previous | None, scorer: Scorer,
              segments: Sequence[dict] | None, lang: str | None) -> pd.DataFrame:
    """A bucket's rows with what changed since ``prev`` (:mod:`leadscore.nightly.previous`);
    the features at the previous cutoff come the way tonight's do (:func:`_bucket_features`),
    for the leads whose score rose or fell only. Runs after the bucket's features are computed,
    so its kept rollups are touched by one thread at a time."""
    if scored.empty:
        return scored
    return last_run.annotate(
        scored, feats, prev, scorer,
        lambda t, fs, ids: _bucket_features(work, bucket, t, segments, fs, ids),
        lang or scorer.lang)


def _spark_compared(results, work: Path, prev, scorer: Scorer, segments, lang: str | None):
    """The Spark engine's buckets with what changed (features recomputed here, as the
    workers' are not sent back); closing this closes the Spark jobs."""
    try:
        for b, scored in results:
            yield b, _compared(work, b, scored, None, prev, scorer, segments, lang)
    finally:
        results.close()


def _run_key(data_dir: Path, as_of: pd.Timestamp, versions: dict, bucket_leads: int,
             reasons: int, lang: str = language.EN, prev: dict | None = None) -> str:
    """Each input file's path, size and modification time (as ``make`` decides), the cutoff,
    models, settings and the previous run compared with: a finished run is recognised
    without reading any rows. English and no previous run add nothing, so the runs written
    before those existed keep their key."""
    files = [[t, f["files"]] for t, f in intake.input_files(data_dir).items()]
    settings = [bucket_leads, reasons] + ([lang] if lang != language.EN else [])
    settings += [prev] if prev is not None else []
    blob = json.dumps([files, str(as_of), versions, *settings])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Progress:
    """tqdm on a terminal; a plain log line per bucket with rate and ETA otherwise."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.rows, self.t0 = total, done, 0, time.perf_counter()
        self.resumed = done  # finished by an earlier run: not part of this run's rate
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="bucket", desc="rescore")

    def step(self, rows: int) -> None:
        self.done += 1
        self.rows += rows
        if self.bar is not None:
            self.bar.set_postfix(rows=self.rows)
            self.bar.update(1)
            return
        el = time.perf_counter() - self.t0
        rate = self.rows / el if el > 0 else 0.0
        left = self.total - self.done
        eta = el / max(self.done - self.resumed, 1) * left
        # INFO: the rescore command shows this logger's progress without --verbose, and a
        # nightly job's log does not fill with warnings that are not
        log.info("rescore: bucket %d/%d, %d rows, %.0f rows/s, ETA %.0fs",
                 self.done, self.total, self.rows, rate, eta)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def rescore(
    data_dir: Path,
    as_of: pd.Timestamp,
    out: Path,
    *,
    models: Sequence[str] = ALL_MODELS,
    reasons: int = 3,
    bucket_leads: int = per_bucket.DEFAULT_BUCKET_LEADS,
    force: bool = False,
    scorer: Scorer | None = None,
    engine: str = "duckdb",
    cache: Path | None = None,
    rules: RulesFile | None = None,
    intent: IntentRules | None = None,
    lang: str | None = None,
    previous: Path | bool | None = None,
    drift_alert: float = drift.DEFAULT_ALERT,
) -> RescoreResult:
    """Score every open lead (and owner, for churn) at ``as_of`` into the Parquet folder ``out``.

    Without ``scorer``, the registry's champions score with the contact ``rules`` given (the
    defaults when None; the CLI passes the file named by ``LEADSCORE_CONTACT_RULES``) and the
    intent-grade thresholds ``intent`` (the models' own when None; ``LEADSCORE_INTENT_GRADES``).
    ``lang``: the language of the reasons (None: the scorer's; the CLI passes ``--lang``,
    else ``LEADSCORE_LANG``).

    The inputs are validated into ``cache`` (default ``<data_dir>/.leadscore-intake``; see
    :mod:`leadscore.nightly.intake`), which keeps them between runs: a night validates only the
    files added since. Validation runs in a DuckDB capped at ``LEADSCORE_DUCKDB_MEMORY``
    (default ``DEFAULT_LOAD_MEMORY``) that spills to a hidden folder next to ``out``, so
    memory stays bounded whatever the size of the inputs.

    ``previous``: the earlier run to compare with (``score_delta``, ``trend``, ``changes``);
    None finds it beside ``out`` (:func:`leadscore.nightly.previous.resolve`), False: none.
    ``lang`` also writes the change sentences. (The HTTP service's copy of a complete run's
    scores, deltas and changes is written by the CLI: :mod:`leadscore.serving.last_night`.)

    Each model's features and score are compared with the training reference its artifact
    carries; ``_drift.json`` in ``out`` holds the result, a feature or score whose PSI is at
    least ``drift_alert`` an alert (:mod:`leadscore.nightly.watch`; also on a no-op rerun,
    from the saved counts, so a new threshold applies).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    out = Path(out)
    spill = out.parent / f".{out.name}.duckdb-tmp"
    shutil.rmtree(spill, ignore_errors=True)
    try:
        res = _rescore(data_dir, as_of, out, models=models, reasons=reasons,
                       bucket_leads=bucket_leads, force=force, scorer=scorer, engine=engine,
                       spill=spill, cache=cache, rules=rules, intent=intent, lang=lang,
                       previous=previous, drift_alert=drift_alert)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return res


def _rescore(
    data_dir: Path,
    as_of: pd.Timestamp,
    out: Path,
    *,
    models: Sequence[str] = ALL_MODELS,
    reasons: int = 3,
    bucket_leads: int = per_bucket.DEFAULT_BUCKET_LEADS,
    force: bool = False,
    scorer: Scorer | None = None,
    engine: str = "duckdb",
    spill: Path,
    cache: Path | None = None,
    rules: RulesFile | None = None,
    intent: IntentRules | None = None,
    lang: str | None = None,
    previous: Path | bool | None = None,
    drift_alert: float = drift.DEFAULT_ALERT,
) -> RescoreResult:
    t0 = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out)
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    if not data_dir.is_dir():
        raise contract.ContractError(f"{data_dir}: not a folder")
    if scorer is None:
        scorer = Scorer.from_registry(models, num_threads=2, rules=rules, intent=intent)
    lang = scorer.lang if lang is None else language.check(lang, "lang")
    log.info("rescore: models %s, scoring %s", scorer.versions, scorer.scoring_paths)
    prev = last_run.resolve(out, as_of, previous)
    compared = prev.describe() if prev is not None else None
    if prev is not None and prev.models.get("conversion") != scorer.versions.get("conversion"):
        compared["model_changed"] = True
        log.warning("rescore: the conversion model changed since %s (%s → %s): the changes "
                    "explain tonight's model's view of both nights", prev.path,
                    prev.models.get("conversion"), scorer.versions.get("conversion"))
    key = _run_key(data_dir, as_of, scorer.versions, bucket_leads, reasons, lang, compared)
    watched = watch.Watch(scorer.models)

    manifest_path = out / MANIFEST
    manifest = None
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("run_key") != key:
            if not force:
                raise FileExistsError(
                    f"{out} holds a rescoring of other inputs/cutoff/models "
                    f"(run {manifest.get('run_key')}); use --force to replace it"
                )
            manifest = None
        elif force:
            manifest = None
        elif manifest.get("complete"):
            log.warning("rescore: %s is already complete for these inputs: nothing to do", out)
            report = watched.report(out, map(int, manifest["parts"]), drift_alert)
            return RescoreResult(out, manifest["rows"], manifest["buckets"],
                                 manifest["buckets"], time.perf_counter() - t0, True,
                                 manifest.get("quarantined", 0), scorer.versions, report)
    if manifest is None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        manifest = {"run_key": key, "as_of": str(as_of), "models": scorer.versions,
                    "previous": compared, "parts": {}, "complete": False}
        atomic.write_text(manifest_path, json.dumps(manifest, indent=1))

    done = {int(b) for b in manifest["parts"]}
    for stale in out.glob(f".part-*{_TMP_SUFFIX}"):  # left by a run that was killed mid-write
        stale.unlink()
    cache = Path(cache) if cache is not None else intake.default_cache(data_dir)
    memory = os.environ.get(LOAD_MEMORY_ENV, DEFAULT_LOAD_MEMORY)
    with intake.Intake(data_dir, cache, bucket_leads, spill, memory).opened() as kept:
        if "buckets" in manifest and len(done) >= manifest["buckets"]:
            n_buckets, quarantined = manifest["buckets"], manifest["quarantined"]
        else:
            got = kept.refresh()
            n_buckets, quarantined = got.buckets, got.quarantined
            if manifest.get("buckets") != n_buckets:
                if done:  # the intake started over with another bucketing since the crash:
                    # the parts written split the leads another way, so they are redone
                    log.warning("rescore: the validated inputs are bucketed anew (%s → %d "
                                "buckets): the %d parts written before are redone",
                                manifest["buckets"], n_buckets, len(done))
                    for part in out.glob("part-*.parquet"):
                        part.unlink()
                    shutil.rmtree(out / watch.COUNTS_DIR, ignore_errors=True)
                    shutil.rmtree(out / last_run.FEATURES_DIR, ignore_errors=True)
                    manifest["parts"], done = {}, set()
                manifest.update(buckets=n_buckets, quarantined=quarantined)
                atomic.write_text(manifest_path, json.dumps(manifest, indent=1))
        todo = [b for b in range(n_buckets) if b not in done]
        if engine == "spark":
            from leadscore.nightly import spark

            results = _spark_compared(
                spark.rescore_buckets(cache, todo, as_of, scorer, reasons, lang,
                                      counts_out=out if watched.references else None),
                cache, prev, scorer, kept.state["segments"], lang)
        else:
            keep = last_run.needed_features(scorer)

            def counted(b: int, feats: pd.DataFrame, scored: pd.DataFrame) -> None:
                if watched.references:
                    watched.save(out, b, watched.count(feats, scored))
                if keep:  # for tomorrow's changes
                    last_run.save_features(out, b, feats, keep)

            results = _score_embedded(cache, todo, as_of, scorer, reasons,
                                      kept.state["segments"], prev, lang, counted)
        progress = _Progress(n_buckets, len(done))
        try:
            for b, scored in results:  # in completion order; Spark runs several at once
                n = _write_part(out, b, scored)
                manifest["parts"][str(b)] = {"file": f"part-{b:05d}.parquet", "rows": n}
                atomic.write_text(manifest_path, json.dumps(manifest, indent=1))
                progress.step(n)
        finally:
            results.close()  # stops the Spark jobs still running if writing failed
            progress.close()
    rows = sum(p["rows"] for p in manifest["parts"].values())
    report = watched.report(out, map(int, manifest["parts"]), drift_alert)
    manifest.update({"complete": True, "rows": rows})
    atomic.write_text(manifest_path, json.dumps(manifest, indent=1))
    return RescoreResult(out, rows, n_buckets, len(done), time.perf_counter() - t0, False,
                         quarantined, scorer.versions, report)


def reasons_as_sentences(reasons_json: str | None, lang: str = language.EN) -> str:
    """``reasons`` JSON → "[model +] sentence; [model -] sentence" for CRMs that import CSV:
    each labelled with its model (named in ``lang``) and the sign of its contribution."""
    if not reasons_json:
        return ""
    return "; ".join(f"[{language.label(r['model'], lang)} {r['sign']}] {r['sentence']}"
                     for r in json.loads(reasons_json))


def export_csv(parquet_dir: Path, csv_path: Path, lang: str = language.EN) -> int:
    """The same columns as Parquet, UTF-8, reasons and changes as readable sentence lists
    (reasons labelled with their model in ``lang``, the language the run wrote its sentences
    in), times as the API writes them: UTC with ``Z`` and ``best_slot_local`` with the lead's
    offset."""
    lang = language.check(lang, "lang")
    df = pd.read_parquet(parquet_dir)
    df["reasons"] = df["reasons"].map(lambda text: reasons_as_sentences(text, lang))
    df["changes"] = df["changes"].map(changes.as_sentences, na_action="ignore")
    for c in ("as_of", "best_slot_start"):
        df[c] = iso_utc_column(df[c])
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    df.sort_values("lead_id").to_csv(tmp, index=False, encoding="utf-8")
    os.replace(tmp, csv_path)
    return len(df)
