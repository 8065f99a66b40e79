"""Loading and validating the input data contract (leads, events, contacts).

Validation runs inside DuckDB so that a 20-million-row events file is checked without pulling
it into pandas. Every input row ends in exactly one place: the clean table, the quarantine file
(with the reason and the row number in its source file), or the count of exact duplicates. A
file that is wrong as a whole (a missing column, a column of the wrong type) stops the job with
a :class:`ContractError` that names the file and the column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from leadscore.schema import CHANNELS, DEFAULT_TZ, OUTCOMES

log = logging.getLogger(__name__)

#: When more than this share of a column's non-empty values cannot be parsed, the column (and
#: so the file) is wrong as a whole rather than a few rows being bad.
WHOLE_COLUMN_BAD_SHARE = 0.5
EXAMPLES_PER_REASON = 3


class ContractError(ValueError):
    """A file breaks the contract as a whole; the message names the file and the column."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str", "ts", "float"
    required: bool = True  # the column must exist in the file
    not_null: bool = False  # a row with an empty value is quarantined


TABLES: dict[str, tuple[Column, ...]] = {
    "leads": (
        Column("lead_id", "str", not_null=True),
        Column("dealer_id", "str", not_null=True),
        Column("created_at", "ts", not_null=True),
        Column("source", "str"),
        Column("intended_model", "str", required=False),
        Column("city", "str", required=False),
        Column("budget", "float", required=False),
        Column("tz", "str", required=False),
    ),
    "events": (
        Column("lead_id", "str", not_null=True),
        Column("ts", "ts", not_null=True),
        Column("event_type", "str", not_null=True),
        Column("model", "str", required=False),
        Column("value", "float", required=False),
        Column("ingested_at", "ts", required=False),
    ),
    "contacts": (
        Column("lead_id", "str", not_null=True),
        Column("ts", "ts", not_null=True),
        Column("channel", "str", not_null=True),
        Column("outcome", "str", not_null=True),
    ),
}
OPTIONAL_TABLES = {"contacts"}

_SQL_TYPE = {"str": "VARCHAR", "ts": "TIMESTAMPTZ", "float": "DOUBLE"}
_OK_FAMILIES = {
    "str": ("VARCHAR",),
    "ts": ("TIMESTAMP", "DATE", "VARCHAR"),
    "float": ("DOUBLE", "FLOAT", "DECIMAL", "INTEGER", "BIGINT", "SMALLINT", "TINYINT",
              "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "NULL"),
}


@dataclass
class TableReport:
    table: str
    file: str | None
    rows_read: int = 0
    rows_ok: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def n_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def lines(self) -> list[str]:
        out = [
            f"{self.table}: {self.rows_read:,} rows read from {self.file or '(absent)'}, "
            f"{self.rows_ok:,} ok, {self.duplicates:,} exact duplicates dropped, "
            f"{self.n_quarantined:,} quarantined"
        ]
        for reason, n in sorted(self.quarantined.items(), key=lambda kv: -kv[1]):
            ex = "; ".join(
                f"row {e['row']}" + (f" {e['field']}={e['value']!r}" if e.get("field") else "")
                for e in self.examples.get(reason, [])
            )
            out.append(f"  - {reason}: {n:,} (e.g. {ex})")
        return out


@dataclass
class Dataset:
    """Clean tables ``leads``, ``events`` and ``contacts`` inside a DuckDB connection."""

    con: duckdb.DuckDBPyConnection
    reports: dict[str, TableReport]
    quarantine_dir: Path | None

    def summary(self) -> str:
        return "\n".join(line for r in self.reports.values() for line in r.lines())

    def frame(self, table: str) -> pd.DataFrame:
        return self.con.table(table).df()


def connect(threads: int | None = None, memory_limit: str | None = None):
    """A DuckDB connection with UTC as its session zone (the contract stores UTC)."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit='{memory_limit}'")
    return con


def find_file(data_dir: Path, table: str) -> Path | None:
    """``<table>.parquet``, ``<table>.csv`` or a ``<table>/`` folder of Parquet files."""
    for cand in (data_dir / f"{table}.parquet", data_dir / f"{table}.csv"):
        if cand.is_file():
            return cand
    folder = data_dir / table
    if folder.is_dir() and any(folder.rglob("*.parquet")):
        return folder
    return None


def _scan_sql(path: Path) -> str:
    p = str(path).replace("'", "''")
    if path.is_dir():
        return f"read_parquet('{p}/**/*.parquet', file_row_number=true)"
    if path.suffix == ".csv":
        return (
            f"(SELECT *, row_number() OVER () - 1 AS file_row_number FROM "
            f"read_csv('{p}', all_varchar=true, header=true))"
        )
    return f"read_parquet('{p}', file_row_number=true)"


def _family(duck_type: str) -> str:
    t = duck_type.upper()
    if t.startswith("TIMESTAMP"):
        return "TIMESTAMP"
    if t.startswith("DECIMAL"):
        return "DECIMAL"
    return t.split("(")[0]


def _cast(col: Column, present: bool, duck_type: str) -> str:
    if not present:
        return f"CAST(NULL AS {_SQL_TYPE[col.kind]})"
    q = f'"{col.name}"'
    if col.kind == "str":
        return f"NULLIF(trim(CAST({q} AS VARCHAR)), '')"
    if col.kind == "ts":
        if _family(duck_type) == "VARCHAR":
            return f"TRY_CAST(NULLIF(trim({q}), '') AS TIMESTAMPTZ)"
        return f"CAST({q} AS TIMESTAMPTZ)"  # naive timestamps are UTC by contract
    if _family(duck_type) == "VARCHAR":
        return f"TRY_CAST(NULLIF(trim({q}), '') AS DOUBLE)"
    return f"CAST({q} AS DOUBLE)"


def _raw_present(col: Column, present: bool) -> str:
    if not present:
        return "FALSE"
    return f"(\"{col.name}\" IS NOT NULL AND trim(CAST(\"{col.name}\" AS VARCHAR)) <> '')"


def _check_columns(con, table: str, path: Path, scan: str) -> dict[str, str]:
    desc = con.sql(f"SELECT * FROM {scan} LIMIT 0").description
    types = {d[0]: str(d[1]) for d in desc}
    for col in TABLES[table]:
        if col.required and col.name not in types:
            raise ContractError(
                f"{path}: missing column '{col.name}' (required by the {table} contract; "
                f"found: {', '.join(k for k in types if k != 'file_row_number')})"
            )
        if col.name in types and _family(types[col.name]) not in _OK_FAMILIES[col.kind]:
            raise ContractError(
                f"{path}: column '{col.name}' has type {types[col.name]}, expected "
                f"{_SQL_TYPE[col.kind]}"
            )
    return types


def _check_parse_rates(con, table: str, path: Path) -> None:
    """A column whose values mostly fail to parse is a wrong file, not a few bad rows."""
    for col in TABLES[table]:
        if col.kind == "str":
            continue
        n_raw, n_bad = con.sql(
            f"SELECT count(*) FILTER (WHERE _raw_{col.name}), "
            f"count(*) FILTER (WHERE _raw_{col.name} AND \"{col.name}\" IS NULL) "
            f"FROM _typed_{table}"
        ).fetchone()
        if n_raw >= 10 and n_bad > WHOLE_COLUMN_BAD_SHARE * n_raw:
            ex = con.sql(
                f"SELECT _orig_{col.name} FROM _typed_{table} WHERE _raw_{col.name} "
                f"AND \"{col.name}\" IS NULL LIMIT 1"
            ).fetchone()[0]
            raise ContractError(
                f"{path}: column '{col.name}' is not of type {_SQL_TYPE[col.kind]}: "
                f"{n_bad:,} of {n_raw:,} values cannot be parsed (e.g. {ex!r})"
            )


def _reasons(table: str, clock_sql: str) -> list[tuple[str, str, str | None]]:
    """(reason, SQL condition on the typed row, offending field) in priority order."""
    rules: list[tuple[str, str, str | None]] = []
    for col in TABLES[table]:
        if col.not_null:
            rules.append((f"missing_{col.name}", f"NOT _raw_{col.name}", col.name))
        if col.kind != "str":
            rules.append(
                (f"unparseable_{col.name}", f"_raw_{col.name} AND \"{col.name}\" IS NULL",
                 col.name)
            )
    if table == "leads":
        rules += [
            ("created_at_after_clock", f"created_at > {clock_sql}", "created_at"),
            ("unknown_tz", "tz IS NOT NULL AND tz NOT IN (SELECT name FROM _tz_names)", "tz"),
            ("conflicting_lead_id", "_dup_rank > 1", "lead_id"),
        ]
    elif table == "events":
        rules += [
            ("unknown_lead", "lead_id NOT IN (SELECT lead_id FROM leads)", "lead_id"),
            ("ts_after_ingested_at", "ingested_at IS NOT NULL AND ts > ingested_at", "ts"),
            ("ts_after_clock", f"ts > {clock_sql}", "ts"),
            ("ingested_at_after_clock", f"ingested_at > {clock_sql}", "ingested_at"),
        ]
    else:
        chans = ", ".join(f"'{c}'" for c in CHANNELS)
        outs = ", ".join(f"'{o}'" for o in OUTCOMES)
        rules += [
            ("unknown_lead", "lead_id NOT IN (SELECT lead_id FROM leads)", "lead_id"),
            ("unknown_channel", f"lower(channel) NOT IN ({chans})", "channel"),
            ("unknown_outcome", f"lower(outcome) NOT IN ({outs})", "outcome"),
            ("ts_after_clock", f"ts > {clock_sql}", "ts"),
        ]
    return rules


def _empty_table(con, table: str) -> None:
    cols = ", ".join(f'CAST(NULL AS {_SQL_TYPE[c.kind]}) AS "{c.name}"' for c in TABLES[table])
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {cols} LIMIT 0")


def _load_table(con, table: str, path: Path | None, clock_sql: str,
                quarantine_dir: Path | None) -> TableReport:
    rep = TableReport(table=table, file=str(path) if path else None)
    if path is None:
        if table not in OPTIONAL_TABLES:
            raise ContractError(f"no {table}.parquet, {table}.csv or {table}/ folder found")
        _empty_table(con, table)
        return rep
    scan = _scan_sql(path)
    types = _check_columns(con, table, path, scan)
    cols = TABLES[table]
    present = {c.name: c.name in types for c in cols}
    raw_cols = [c.name for c in cols if present[c.name]]
    # 1. exact duplicates over the contract's columns: keep the first occurrence.
    dedup_key = ", ".join(f'"{c}"' for c in raw_cols)
    typed = ",\n  ".join(
        [f'{_cast(c, present[c.name], types.get(c.name, ""))} AS "{c.name}"' for c in cols]
        + [f"{_raw_present(c, present[c.name])} AS _raw_{c.name}" for c in cols]
        + [
            (f'CAST("{c.name}" AS VARCHAR) AS _orig_{c.name}' if present[c.name]
             else f"CAST(NULL AS VARCHAR) AS _orig_{c.name}")
            for c in cols
        ]
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _typed_{table} AS
        SELECT {typed}, file_row_number AS _row,
               row_number() OVER (PARTITION BY {dedup_key} ORDER BY file_row_number) AS _copy
        FROM {scan}"""
    )
    _check_parse_rates(con, table, path)
    rep.rows_read = con.sql(f"SELECT count(*) FROM _typed_{table}").fetchone()[0]
    rep.duplicates = con.sql(
        f"SELECT count(*) FROM _typed_{table} WHERE _copy > 1"
    ).fetchone()[0]
    if table == "leads":
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _typed_leads AS SELECT *, "
            "row_number() OVER (PARTITION BY lead_id ORDER BY _copy > 1, _row) AS _dup_rank "
            "FROM _typed_leads"
        )
    rules = _reasons(table, clock_sql)
    case = "CASE " + " ".join(f"WHEN {cond} THEN '{name}'" for name, cond, _ in rules) + " END"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _checked_{table} AS
        SELECT *, {case} AS _reason FROM _typed_{table} WHERE _copy = 1"""
    )
    keep = ", ".join(f'"{c.name}"' for c in cols)
    norm = {"channel": "lower(channel) AS channel", "outcome": "lower(outcome) AS outcome"}
    keep_sel = ", ".join(norm.get(c.name, f'"{c.name}"') for c in cols)
    con.execute(
        f"CREATE OR REPLACE TABLE {table} AS SELECT {keep_sel} FROM _checked_{table} "
        f"WHERE _reason IS NULL ORDER BY _row"
    )
    rep.rows_ok = con.sql(f"SELECT count(*) FROM {table}").fetchone()[0]
    field_of = {name: fld for name, _, fld in rules}
    for reason, n in con.sql(
        f"SELECT _reason, count(*) FROM _checked_{table} WHERE _reason IS NOT NULL "
        f"GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall():
        rep.quarantined[reason] = n
        fld = field_of.get(reason)
        val = f"_orig_{fld}" if fld else "NULL"
        rep.examples[reason] = [
            {"row": int(r), "field": fld, "value": v}
            for r, v in con.sql(
                f"SELECT _row, {val} FROM _checked_{table} WHERE _reason = '{reason}' "
                f"ORDER BY _row LIMIT {EXAMPLES_PER_REASON}"
            ).fetchall()
        ]
    if rep.n_quarantined and quarantine_dir is not None:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        origs = ", ".join(f'_orig_{c.name} AS "{c.name}"' for c in cols)
        qfile = quarantine_dir / f"{table}.parquet"
        src = str(path).replace("'", "''")
        con.execute(
            f"COPY (SELECT {origs}, '{src}' AS _file, _row, _reason FROM _checked_{table} "
            f"WHERE _reason IS NOT NULL ORDER BY _row) TO '{qfile}' (FORMAT parquet)"
        )
    for tmp in ("_typed_", "_checked_"):
        con.execute(f"DROP TABLE IF EXISTS {tmp}{table}")
    return rep


def load(
    data_dir: Path | str,
    *,
    clock: pd.Timestamp | None = None,
    quarantine_dir: Path | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> Dataset:
    """Validate the folder's files into clean DuckDB tables ``leads``, ``events``, ``contacts``.

    ``clock`` is the run's clock (default: now); rows stamped after it are quarantined because
    they cannot have happened yet. Bad rows go to ``quarantine_dir/<table>.parquet``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError(f"{data_dir}: not a folder")
    con = con or connect()
    clock = pd.Timestamp.now(tz="UTC") if clock is None else pd.Timestamp(clock)
    if clock.tzinfo is None:
        clock = clock.tz_localize("UTC")
    clock_sql = f"TIMESTAMPTZ '{clock.tz_convert('UTC').isoformat()}'"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _tz_names AS SELECT name FROM pg_timezone_names()"
    )
    reports: dict[str, TableReport] = {}
    for table in TABLES:  # leads first: events and contacts check their lead exists
        reports[table] = _load_table(
            con, table, find_file(data_dir, table), clock_sql, quarantine_dir
        )
    con.execute(f"UPDATE leads SET tz = '{DEFAULT_TZ}' WHERE tz IS NULL")
    for rep in reports.values():
        for line in rep.lines():
            log.info(line)
    return Dataset(con=con, reports=reports, quarantine_dir=quarantine_dir)


def register_frames(
    con: duckdb.DuckDBPyConnection,
    leads: pd.DataFrame,
    events: pd.DataFrame,
    contacts: pd.DataFrame | None = None,
) -> None:
    """Register already-valid in-memory frames as the clean tables (serving, tests, Spark
    partitions). Missing optional columns are added as nulls so the feature SQL always finds
    them."""
    frames = {"leads": leads, "events": events, "contacts": contacts}
    for table, df in frames.items():
        if df is None or not len(df.columns):
            _empty_table(con, table)
            continue
        sel = []
        for col in TABLES[table]:
            if col.name in df.columns:
                expr = f'CAST("{col.name}" AS {_SQL_TYPE[col.kind]})'
            else:
                expr = f"CAST(NULL AS {_SQL_TYPE[col.kind]})"
            sel.append(f'{expr} AS "{col.name}"')
        con.register(f"_in_{table}", df)
        con.execute(
            f"CREATE OR REPLACE TABLE {table} AS SELECT {', '.join(sel)} FROM _in_{table}"
        )
        con.unregister(f"_in_{table}")
    con.execute(f"UPDATE leads SET tz = '{DEFAULT_TZ}' WHERE tz IS NULL")
