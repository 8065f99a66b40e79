"""One bucket of leads, the unit both nightly engines work in: its tables (split once, read
through one DuckDB connection), its features and scores, and the one schema of every part.

The embedded engine (:mod:`leadscore.nightly.batch`) and the Spark engine
(:mod:`leadscore.nightly.spark`) both run these per bucket, so either engine's rows are the
same; the orchestration (intake, parts, manifest, resume) stays in ``batch``.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from leadscore import contract
from leadscore.features import catalog as cat
from leadscore.features import job
from leadscore.nightly import intake
from leadscore.scoring.scorer import ALL_MODELS, OUTPUT_COLUMNS, SLOT_MODEL, Scorer

#: leads featurised and scored at a time (the CLI's default too). Memory follows it; the time
#: per bucket has a fixed part (files, connections, frames), so with features from kept
#: rollups bigger buckets pay, up to the memory they take (`benchmarks/rescore.py
#: --bucket-leads` measures both).
DEFAULT_BUCKET_LEADS = 100_000
#: the models that score open leads; owners get the rest (churn)
LEAD_MODELS = ("conversion", "order-7d", "order-15d", "order-90d", "contact", SLOT_MODEL)


def bucket_features(con, as_of: pd.Timestamp,
                    features: Sequence[cat.Feature] = cat.CATALOG) -> pd.DataFrame:
    """The features of the open leads and owners in ``con``'s leads/events/contacts tables
    (``features``: the catalogue, or a scorer's ``job_features`` with its models'
    vocabulary)."""
    return entities(job.compute(con, [as_of], features), features)


def entities(table, features: Sequence[cat.Feature] = cat.CATALOG) -> pd.DataFrame:
    """The rows the job scores from a feature table: open leads and owners."""
    feats = job.to_pandas(table, features)
    return feats[feats["is_open"] | feats["is_owner"]].reset_index(drop=True)


def score_features(feats: pd.DataFrame, scorer: Scorer, reasons: int,
                   lang: str | None = None) -> pd.DataFrame:
    """Output rows for :func:`bucket_features`: open leads get every model, owners churn;
    reasons in ``lang`` (None: the scorer's)."""
    if feats.empty:
        return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    open_rows = feats[feats["is_open"]]
    owners = feats[~feats["is_open"]]
    parts = []
    if len(open_rows):
        parts.append(scorer.score(open_rows, reasons=reasons, lang=lang))
    if len(owners):
        parts.append(scorer.score(owners, reasons=reasons,
                                  only=set(ALL_MODELS) - set(LEAD_MODELS), lang=lang))
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return out.sort_values("lead_id", kind="stable").reset_index(drop=True)


def fmt_types(df: pd.DataFrame) -> pd.DataFrame:
    """Stable column types so every part has one schema (null columns included), whichever
    engine produced the rows: timestamps are pinned to microseconds (DuckDB's unit), so an
    all-null column does not fall back to nanoseconds in one part and not in another."""
    df = df.copy()
    for c in ("p_convert", "p_order_7d", "p_order_15d", "p_order_30d", "p_order_90d",
              "p_inquiry", "p_response", "p_churn"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("lead_score", "score_delta"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("lead_id", "dealer_id", "intent_grade", "trend", "changes", "contact_urgency",
              "best_slot_local", "best_channel", "reasons", "model_versions"):
        df[c] = df[c].astype("string")
    for c in ("as_of", "best_slot_start"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    return df[list(OUTPUT_COLUMNS)]


@functools.cache
def pandas_part_schema():
    """What :func:`fmt_types` makes of an empty frame, as Arrow, with its pandas metadata
    (so pandas reads every part back with the same dtypes)."""
    import pyarrow as pa

    empty = fmt_types(pd.DataFrame({c: [] for c in OUTPUT_COLUMNS}))
    return pa.Schema.from_pandas(empty, preserve_index=False)


def part_schema():
    """The Arrow schema of every part."""
    return pandas_part_schema().remove_metadata()


def split_buckets(ds: contract.Dataset, work: Path, n_buckets: int) -> None:
    """Write a loaded dataset's tables to Parquet partitioned by lead bucket."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    sink = intake.BucketSink(work, "0", n_buckets=n_buckets)
    for table in ("leads", "events", "contacts"):
        sink(ds.con, table, f"SELECT * FROM {table}")


def bucket_connection(work: Path, bucket: int, threads: int = 2):
    """A DuckDB connection whose leads/events/contacts are one bucket of the split tables.

    The biggest file of a table comes first: DuckDB estimates a scan of several files as the
    first one's rows times their number, and a night's small file first made that estimate
    fall a hundredfold short, so the feature job's joins were planned the wrong way round."""
    con = contract.connect(threads=threads)
    for table, columns in contract.TABLES.items():
        files = sorted((work / table / f"bucket={bucket}").glob("*.parquet"),
                       key=lambda p: (-p.stat().st_size, p.name))
        if files:
            paths = ", ".join(contract.lit(str(p)) for p in files)
            cols = ", ".join(f'"{c.name}"' for c in columns)
            scan = f"read_parquet([{paths}], hive_partitioning=false)"
            if table == "leads":  # the CRM fields the loads carried (loads may differ)
                scan = f"read_parquet([{paths}], hive_partitioning=false, union_by_name=true)"
                have = [d[0] for d in con.sql(f"SELECT * FROM {scan} LIMIT 0").description]
                cols += "".join(', "' + c.replace('"', '""') + '"'
                                for c in contract.extra_lead_columns(have))
            con.execute(f"CREATE VIEW {table} AS SELECT {cols} FROM {scan}")
        else:
            contract.empty_table(con, table)
    return con
