"""Loading and validating the input data contract (leads, events, contacts).

Validation runs inside DuckDB so that a 20-million-row events file is checked without pulling
it into pandas. Every input row ends in exactly one place: the clean table, the quarantine file
(with the reason and the row number in its source file), or the count of exact duplicates. A
file that is wrong as a whole (a missing column, a column of the wrong type) stops the job with
a :class:`ContractError` that names the file and the column.

Pre-lead history: an event or contact stamped before its lead's ``created_at`` is a valid row
(CRMs often log the first call before the lead record). It is kept like any other, here, in the
nightly intake and in inline HTTP rows, and features count it at every cutoff after it; but a
lead exists only from ``created_at`` on, so it has features, a score or a training row only at
cutoffs at or after it (:func:`lead_exists_sql`, the one place this is decided).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
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


class UnreadableFile(ContractError):
    """A file that cannot be read at all (a truncated Parquet file, text in an encoding this
    reader does not know); the one-line message names the file and what is wrong."""


#: the encodings a CSV file is read in, the first the whole file decodes in: UTF-8 (with or
#: without a byte order mark), then GB18030, the superset of GBK and GB2312 that Chinese CRMs
#: export in by default (DuckDB reads UTF-8 only: such a file is converted on the way in); a
#: file starting with a UTF-16 byte order mark is UTF-16
CSV_ENCODINGS = ("utf-8", "gb18030")
_CHUNK = 1 << 24


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

#: DuckDB type of each column kind (also the importer's target types)
SQL_TYPE = {"str": "VARCHAR", "ts": "TIMESTAMPTZ", "float": "DOUBLE"}
#: Source types accepted per kind. Text is parsed row by row (a row that does not parse is
#: quarantined); "NULL" is the type of an all-empty Parquet column.
_OK_FAMILIES = {
    "str": ("VARCHAR", "NULL"),
    "ts": ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "VARCHAR", "NULL"),
    "float": ("DOUBLE", "FLOAT", "DECIMAL", "INTEGER", "BIGINT", "SMALLINT", "TINYINT",
              "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "VARCHAR", "NULL"),
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
    encoding: str | None = None  # a CSV file's text encoding
    #: leads only: the file's columns beyond the contract's, kept in the clean table as read
    #: (CRM fields a model may use: :mod:`leadscore.training.vocabulary`)
    extra_columns: list[str] = field(default_factory=list)

    @property
    def n_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def lines(self) -> list[str]:
        enc = (f" ({self.encoding.upper()} text)" if self.encoding not in (None, "utf-8")
               else "")
        out = [
            f"{self.table}: {self.rows_read:,} rows read from {self.file or '(absent)'}{enc}, "
            f"{self.rows_ok:,} ok, {self.duplicates:,} exact duplicates dropped, "
            f"{self.n_quarantined:,} quarantined"
        ]
        for reason, n in sorted(self.quarantined.items(), key=lambda kv: -kv[1]):
            ex = "; ".join(
                f"row {e['row']}" + (f" {e['field']}={e['value']!r}" if e.get("field") else "")
                for e in self.examples.get(reason, [])
            )
            out.append(f"  - {reason}: {n:,} (e.g. {ex})")
        if self.extra_columns:
            out.append(f"  - extra columns kept: {', '.join(self.extra_columns)}")
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


@functools.cache
def time_zones() -> frozenset[str]:
    """The zone names a lead's ``tz`` may take: DuckDB's, since local hours are computed in
    DuckDB (a row with another is quarantined as ``unknown_tz``)."""
    con = duckdb.connect()
    try:
        return frozenset(
            r[0] for r in con.execute("SELECT name FROM pg_timezone_names()").fetchall())
    finally:
        con.close()


def lead_exists_sql(created_at: str, as_of: str) -> str:
    """SQL: the lead (created at ``created_at``) exists at cutoff ``as_of``. Rows stamped
    before it are its pre-lead history (see the module's docstring), never a reason to
    quarantine; a cutoff before it gives the lead no feature row and no training row."""
    return f"{created_at} <= {as_of}"


def connect(threads: int | None = None, memory_limit: str | None = None):
    """A DuckDB connection with UTC as its session zone (the contract stores UTC)."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    # give freed memory back to the system in the background (DuckDB's jemalloc otherwise
    # keeps it, and a feature job's peak then adds up with the next step's)
    con.execute("SET allocator_background_threads=true")
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


def lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def open_bytes(path: Path):
    """A text file's bytes, a gzip-compressed one (``.gz``) decompressed on the way."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def csv_encoding(path: Path) -> str:
    """The first of :data:`CSV_ENCODINGS` the whole file decodes in (one read per encoding
    tried, in large chunks; a ``.gz`` file's content); :class:`UnreadableFile` when none
    does."""
    bad = None
    with open_bytes(path) as fh:
        utf16 = fh.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    for enc in ("utf-16",) if utf16 else CSV_ENCODINGS:
        dec, pos = codecs.getincrementaldecoder(enc)(), 0
        try:
            with open_bytes(path) as fh:
                for chunk in iter(lambda fh=fh: fh.read(_CHUNK), b""):
                    dec.decode(chunk)
                    pos += len(chunk)
                dec.decode(b"", final=True)
            return enc
        except UnicodeDecodeError as e:
            if bad is None:  # where UTF-8 fails: the place to look at
                at = max(0, pos - len(dec.getstate()[0]) + e.start)
                bad = (at, e.object[e.start:e.start + 1].hex())
    at, byte = bad
    with open_bytes(path) as fh:
        line = fh.read(at).count(b"\n") + 1
    what = "UTF-16 text with a byte order mark" if utf16 else "UTF-8 text"
    also = "" if utf16 else ", nor GB18030/GBK"
    raise UnreadableFile(
        f"{path}: not {what} (byte 0x{byte} on line {line:,}){also}; convert it to UTF-8 "
        f"and put that in its place: iconv -f ENCODING -t UTF-8 {path.name} > "
        f"{path.stem}.utf8.csv, ENCODING being what it was exported in (BIG5, SHIFT_JIS, "
        f"WINDOWS-1252...)")


def to_utf8(path: Path, encoding: str) -> Path:
    """A temporary UTF-8 copy of a text file (or of a ``.gz`` file's content; the caller
    deletes it)."""
    fd, tmp = tempfile.mkstemp(suffix=".csv", prefix="leadscore-utf8-")
    dec = codecs.getincrementaldecoder(encoding)()
    with open_bytes(path) as src, os.fdopen(fd, "w", encoding="utf-8", newline="") as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            dst.write(dec.decode(chunk))
        dst.write(dec.decode(b"", final=True))
    return Path(tmp)


def _scan_sql(path: Path, files: Sequence[Path] | None = None,
              text: Path | None = None) -> str:
    """The file's rows plus ``_file`` (its source file) and ``_row`` (0-based row in that file).
    ``files``: only these Parquet files of the folder ``path``; ``text``: a UTF-8 copy of the
    CSV file ``path`` to read instead."""
    p = lit(str(path))
    if path.is_dir():
        glob = (lit(f"{path}/**/*.parquet") if files is None
                else "[" + ", ".join(lit(str(f)) for f in files) + "]")
        return (
            f"(SELECT * EXCLUDE (filename, file_row_number), filename AS _file, "
            f"file_row_number AS _row FROM read_parquet({glob}, filename=true, "
            f"file_row_number=true, union_by_name=true))"
        )
    if path.suffix == ".csv":
        return (
            f"(SELECT *, {p} AS _file, row_number() OVER () - 1 AS _row "
            f"FROM read_csv({lit(str(text or path))}, all_varchar=true, header=true))"
        )
    return (
        f"(SELECT * EXCLUDE (file_row_number), {p} AS _file, file_row_number AS _row "
        f"FROM read_parquet({p}, file_row_number=true))"
    )


def _family(duck_type: str) -> str:
    t = duck_type.upper().strip('"')
    if t.startswith(("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ")):
        return "TIMESTAMP WITH TIME ZONE"
    if t.startswith("TIMESTAMP"):
        return "TIMESTAMP"
    if t.startswith("DECIMAL"):
        return "DECIMAL"
    return t.split("(")[0]


@dataclass(frozen=True)
class _Col:
    """How one contract column is read from one file: SQL over the raw column ``ref``."""

    col: Column
    family: str | None  # the source's type family; None when the file lacks the column

    @property
    def q(self) -> str:
        return f'"{self.col.name}"'

    @property
    def src(self) -> str:
        """The raw value's name once typed values have taken the contract's names."""
        return f'"_src_{self.col.name}"'

    @property
    def text(self) -> bool:
        return self.family == "VARCHAR"

    @property
    def empty(self) -> bool:
        return self.family in (None, "NULL")

    def typed(self, ref: str | None = None) -> str:
        """The value in the contract's type (NULL when empty or, for text, unparseable)."""
        kind, q = self.col.kind, ref or self.q
        if self.empty:
            return f"CAST(NULL AS {SQL_TYPE[kind]})"
        if kind == "str":
            return f"NULLIF(trim(CAST({q} AS VARCHAR)), '')"
        if self.text:
            return f"TRY_CAST(NULLIF(trim({q}), '') AS {SQL_TYPE[kind]})"
        if kind == "ts" and self.family != "TIMESTAMP WITH TIME ZONE":
            return f"timezone('UTC', CAST({q} AS TIMESTAMP))"  # naive means UTC by contract
        return f"CAST({q} AS {SQL_TYPE[kind]})"

    def present(self, ref: str | None = None) -> str:
        """The raw value is there (not null, not blank)."""
        q = ref or self.q
        if self.empty:
            return "FALSE"
        if self.text:
            return f"(NULLIF(trim({q}), '') IS NOT NULL)"
        return f"({q} IS NOT NULL)"

    def parses(self) -> bool:
        """Whether a present value may fail to parse (text read into a non-text kind)."""
        return self.text and self.col.kind != "str"

    def original(self, ref: str | None = None) -> str:
        """The raw value as text, for the quarantine file and the report's examples."""
        return "CAST(NULL AS VARCHAR)" if self.empty else f"CAST({ref or self.q} AS VARCHAR)"


def _check_columns(con, table: str, path: Path, scan: str) -> dict[str, _Col]:
    desc = con.sql(f"SELECT * FROM {scan} LIMIT 0").description
    types = {d[0]: str(d[1]) for d in desc if d[0] not in ("_file", "_row")}
    out: dict[str, _Col] = {}
    for col in TABLES[table]:
        if col.name not in types:
            if col.required:
                raise ContractError(
                    f"{path}: missing column '{col.name}' (required by the {table} contract; "
                    f"found: {', '.join(types)})"
                )
            out[col.name] = _Col(col, None)
            continue
        fam = _family(types[col.name])
        if fam not in _OK_FAMILIES[col.kind]:
            raise ContractError(
                f"{path}: column '{col.name}' has type {types[col.name]}, expected "
                f"{SQL_TYPE[col.kind]}"
            )
        out[col.name] = _Col(col, fam)
    return out


def extra_lead_columns(names: Sequence[str]) -> list[str]:
    """The columns among ``names`` that a leads file carries beyond the contract's: kept as
    read, never validated. Names starting with ``_`` are the loader's own; a name equal to a
    contract column but for case would be ambiguous in SQL."""
    contract_names = {c.name.lower() for c in TABLES["leads"]}
    return [n for n in names if not n.startswith("_") and n.lower() not in contract_names]


def _extra_sql(con, scan: str, names: Sequence[str]) -> list[str]:
    """SQL of the extra lead columns as the clean table keeps them: text trimmed (blank is
    missing), numbers, booleans and times as the file types them, anything else as text."""
    desc = con.sql(f"SELECT * FROM {scan} LIMIT 0").description
    types = {d[0]: _family(str(d[1])) for d in desc}
    keep = ("VARCHAR", "BOOLEAN", "DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "NULL",
            *_OK_FAMILIES["float"])
    out = []
    for n in names:
        q = '"' + n.replace('"', '""') + '"'
        if types[n] == "VARCHAR":
            out.append(f"NULLIF(trim({q}), '') AS {q}")
        elif types[n] in keep:
            out.append(f"{q} AS {q}")
        else:
            out.append(f"CAST({q} AS VARCHAR) AS {q}")
    return out


def _check_parse_rates(con, path: Path, scan: str, cols: dict[str, _Col]) -> None:
    """A column whose values mostly fail to parse is a wrong file, not a few bad rows."""
    parsed = [c for c in cols.values() if c.parses()]
    if not parsed:
        return
    aggs = []
    for c in parsed:
        bad = f"{c.present()} AND {c.typed()} IS NULL"
        aggs += [f"count(*) FILTER (WHERE {c.present()})", f"count(*) FILTER (WHERE {bad})",
                 f"arg_min({c.q}, _row) FILTER (WHERE {bad})"]
    res = con.execute(f"SELECT {', '.join(aggs)} FROM {scan}").fetchall()[0]
    for i, c in enumerate(parsed):
        n_raw, n_bad, ex = res[3 * i: 3 * i + 3]
        if n_raw >= 10 and n_bad > WHOLE_COLUMN_BAD_SHARE * n_raw:
            raise ContractError(
                f"{path}: column '{c.col.name}' is not of type {SQL_TYPE[c.col.kind]}: "
                f"{n_bad:,} of {n_raw:,} values cannot be parsed (e.g. {ex!r})"
            )


def _reasons(table: str, cols: dict[str, _Col], clock_sql: str,
             prior: bool = False) -> list[tuple[str, str, str]]:
    """(reason, SQL condition, offending field) in priority order, over rows holding the typed
    values under the contract's names and the raw ones as ``_src_<name>``. With ``prior``, the
    leads validated by earlier loads (``_prior_leads``) count as known, and a lead row for one
    of them that is not an exact duplicate conflicts with it (the earlier row wins)."""
    known = ("(SELECT lead_id FROM leads UNION ALL SELECT lead_id FROM _prior_leads)" if prior
             else "(SELECT lead_id FROM leads)")
    rules: list[tuple[str, str, str]] = []
    for name, c in cols.items():
        present = c.present(c.src)
        if c.col.not_null:
            # text is missing exactly when its typed value is NULL: testing that reuses the
            # trimmed value instead of trimming tens of millions of strings a second time
            missing = f'"{name}" IS NULL' if c.col.kind == "str" else f"NOT {present}"
            rules.append((f"missing_{name}", missing, name))
        if c.parses():
            rules.append((f"unparseable_{name}", f'{present} AND "{name}" IS NULL', name))
    if table == "leads":
        rules += [
            ("created_at_after_clock", f"created_at > {clock_sql}", "created_at"),
            ("unknown_tz", "tz IS NOT NULL AND tz NOT IN (SELECT name FROM _tz_names)", "tz"),
        ]
        if prior:
            rules.append(("conflicting_lead_id",
                          "lead_id IN (SELECT lead_id FROM _prior_leads)", "lead_id"))
    elif table == "events":
        rules += [
            ("unknown_lead", f"lead_id NOT IN {known}", "lead_id"),
            ("ts_after_ingested_at", "ingested_at IS NOT NULL AND ts > ingested_at", "ts"),
            ("ts_after_clock", f"ts > {clock_sql}", "ts"),
            ("ingested_at_after_clock", f"ingested_at > {clock_sql}", "ingested_at"),
        ]
    else:
        chans = ", ".join(f"'{c}'" for c in CHANNELS)
        outs = ", ".join(f"'{o}'" for o in OUTCOMES)
        rules += [
            ("unknown_lead", f"lead_id NOT IN {known}", "lead_id"),
            ("unknown_channel", f"lower(channel) NOT IN ({chans})", "channel"),
            ("unknown_outcome", f"lower(outcome) NOT IN ({outs})", "outcome"),
            ("ts_after_clock", f"ts > {clock_sql}", "ts"),
        ]
    return rules


def empty_sql(table: str) -> str:
    """A query for an empty table with the contract's columns (a table with no input files)."""
    cols = ", ".join(f'CAST(NULL AS {SQL_TYPE[c.kind]}) AS "{c.name}"' for c in TABLES[table])
    return f"SELECT {cols} LIMIT 0"


def empty_table(con, table: str) -> None:
    """Create ``table`` empty, in the contract's shape (an optional table with no files)."""
    con.execute(f"CREATE OR REPLACE TABLE {table} AS {empty_sql(table)}")


#: where clean rows go instead of a table: ``sink(con, table, select_sql)`` writes the rows of
#: the query somewhere and returns how many it wrote (see :func:`load`)
Sink = Callable[[duckdb.DuckDBPyConnection, str, str], int]


def _raw_hash_sql(cols: dict[str, _Col]) -> str:
    """The hash of a row's raw values over every contract column (absent ones as NULL): what
    the duplicate rule compares. Kept with the rows a load keeps or quarantines (``_h``), so a
    later load finds exact duplicates of them by one column."""
    return "hash(" + ", ".join("NULL" if c.family is None else c.q for c in cols.values()) + ")"


def _clean_value(table: str, name: str, typed: str) -> str:
    """A typed value as the clean table holds it (see :func:`load`)."""
    if name in ("channel", "outcome"):
        return f"lower({typed})"
    if table == "leads" and name == "tz":
        return f"coalesce({typed}, '{DEFAULT_TZ}')"
    return typed


def _prior_duplicates(con, table: str, scan: str, cols: dict[str, _Col]) -> None:
    """Add to ``_drop_<table>`` the rows that repeat a row an earlier load kept
    (``_prior_<table>``) or quarantined (``_prior_bad_<table>``): the same raw hash, confirmed
    on the cleaned values or on the quarantined text. Only the hash column of the (large)
    earlier data is read unless there are candidates."""
    norm = ", ".join(f'{_clean_value(table, n, c.typed())} AS "{n}"' for n, c in cols.items())
    text = ", ".join(f'{c.original()} AS "_o_{n}"' for n, c in cols.items())
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _new_{table} AS
        SELECT {norm}, {text}, {_raw_hash_sql(cols)} AS _h, _file, _row
        FROM {scan} s ANTI JOIN _drop_{table} USING (_file, _row)"""
    )
    same = {"": " AND ".join(f'n."{n}" IS NOT DISTINCT FROM p."{n}"' for n in cols),
            "bad_": " AND ".join(f'n."_o_{n}" IS NOT DISTINCT FROM p."{n}"' for n in cols)}
    for kind, cond in same.items():
        prior = f"_prior_{kind}{table}"
        hits = con.execute(
            f"SELECT count(*) FROM {prior} WHERE _h IN (SELECT _h FROM _new_{table})"
        ).fetchall()[0][0]
        if hits:
            con.execute(
                f"""INSERT INTO _drop_{table} SELECT DISTINCT n._file, n._row FROM _new_{table} n
                JOIN (SELECT * FROM {prior} WHERE _h IN (SELECT _h FROM _new_{table})) p
                ON n._h = p._h AND {cond}
                ANTI JOIN _drop_{table} d ON d._file = n._file AND d._row = n._row"""
            )


def _load_table(con, table: str, path: Path | None, clock_sql: str,
                quarantine_dir: Path | None, sink: Sink | None = None,
                files: Sequence[Path] | None = None, prior: bool = False,
                row_hash: bool = False) -> TableReport:
    """Validate one file into the clean table ``table`` (or into ``sink``).

    Three passes over the source, none of which materialises more than the clean table plus
    the (small) sets of duplicate and bad rows: (1) exact duplicates, found through a hash of
    the contract's columns and confirmed on the values; (2) bad rows with their reason and raw
    values; (3) the clean table: every row that is neither, in the file's order.

    ``files``: only these files of the folder ``path`` (a later load of files added to it).
    ``prior``: rows kept and quarantined by earlier loads are in ``_prior_<table>`` and
    ``_prior_bad_<table>`` (with their ``_h``): a row repeating one of them is a duplicate, and
    a lead already known conflicts (see :func:`_reasons`). ``row_hash``: clean and quarantined
    rows carry their raw hash as ``_h``.
    """
    rep = TableReport(table=table, file=str(path) if path else None)
    if files is not None:
        rep.file = f"{path} ({len(files)} new file{'s' if len(files) != 1 else ''})"
    qfile = quarantine_dir / f"{table}.parquet" if quarantine_dir is not None else None
    if qfile is not None and qfile.exists():
        qfile.unlink()  # a quarantine file always belongs to the latest load
    if path is None:
        if table not in OPTIONAL_TABLES:
            raise ContractError(f"no {table}.parquet, {table}.csv or {table}/ folder found")
        empty_table(con, table)
        return rep
    # what a whole-file error names: the file itself when one new file is read
    where = path if not files else files[0] if len(files) == 1 else Path(
        f"{path} (new files {', '.join(f.name for f in files)})")
    text = None
    if path.suffix == ".csv":
        rep.encoding = csv_encoding(path)
        if rep.encoding != "utf-8":
            text = to_utf8(path, rep.encoding)
    scan = _scan_sql(path, files, text)
    try:
        cols = _check_columns(con, table, where, scan)
        if path.suffix == ".csv":  # parse the text once; the passes below read it many times
            con.execute(f"CREATE OR REPLACE TEMP TABLE _src_{table} AS SELECT * FROM {scan}")
            scan = f"_src_{table}"
    finally:
        if text is not None:
            text.unlink()
    _check_parse_rates(con, where, scan, cols)
    rep.rows_read = con.execute(f"SELECT count(*) FROM {scan}").fetchall()[0][0]

    # 1. exact duplicates over the contract's columns (as read): keep the first occurrence
    raw = ", ".join(c.q for c in cols.values() if c.family is not None)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _drop_{table} AS
        WITH hashed AS (SELECT hash({raw}) AS _h FROM {scan}),
        suspects AS (SELECT _h FROM hashed GROUP BY _h HAVING count(*) > 1)
        SELECT _file, _row FROM (
            SELECT _file, _row,
                   row_number() OVER (PARTITION BY {raw} ORDER BY _file, _row) AS _copy
            FROM {scan} WHERE hash({raw}) IN (SELECT _h FROM suspects)
        ) WHERE _copy > 1"""
    )
    if prior:
        _prior_duplicates(con, table, scan, cols)
    rep.duplicates = con.execute(f"SELECT count(*) FROM _drop_{table}").fetchall()[0][0]

    # 2. bad rows: the first broken rule names the reason
    rules = _reasons(table, cols, clock_sql, prior)
    case = "CASE " + " ".join(f"WHEN {cond} THEN '{name}'" for name, cond, _ in rules) + " END"
    typed = ", ".join(f'{c.typed()} AS "{n}"' for n, c in cols.items())
    srcs = ", ".join(f"{'NULL' if c.family is None else c.q} AS {c.src}" for c in cols.values())
    h = f", {_raw_hash_sql(cols)} AS _h" if row_hash else ""
    rows = f"""(SELECT {typed}, {srcs}{h}, _file, _row FROM {scan} s
                ANTI JOIN _drop_{table} d USING (_file, _row))"""
    checked = f"SELECT *, {case} AS _reason FROM {rows}"
    if table == "leads":  # a lead_id seen again with other values: the first valid row wins
        checked = f"""SELECT * EXCLUDE (_rank, _reason), coalesce(_reason,
                CASE WHEN _rank > 1 THEN 'conflicting_lead_id' END) AS _reason
            FROM (SELECT *, row_number() OVER (
                    PARTITION BY lead_id ORDER BY _reason IS NOT NULL, _file, _row) AS _rank
                  FROM ({checked}))"""
        rules.append(("conflicting_lead_id", "", "lead_id"))
    originals = ", ".join(f'{c.original(c.src)} AS "{n}"' for n, c in cols.items())
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _bad_{table} AS
        SELECT {originals}, _file, _row, _reason{", _h" if row_hash else ""}
        FROM ({checked}) WHERE _reason IS NOT NULL"""
    )

    # 3. the clean table (a leads file's extra columns kept as read)
    keep = {"channel": "lower(channel) AS channel", "outcome": "lower(outcome) AS outcome"}
    extra = ""
    if table == "leads":
        desc = con.sql(f"SELECT * FROM {scan} LIMIT 0").description
        rep.extra_columns = extra_lead_columns([d[0] for d in desc])
        extra = "".join(", " + e for e in _extra_sql(con, scan, rep.extra_columns))
    sel = ", ".join(keep.get(n, f'"{n}"') for n in cols)
    sel += "".join(", " + '"' + n.replace('"', '""') + '"' for n in rep.extra_columns)
    clean = f"""SELECT {sel}{", _h" if row_hash else ""} FROM (
            SELECT {typed}{extra}{h}, _file, _row FROM {scan}) s
        ANTI JOIN (SELECT _file, _row FROM _drop_{table}
                   UNION ALL SELECT _file, _row FROM _bad_{table}) x USING (_file, _row)"""
    if sink is None:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {clean}")
        rep.rows_ok = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    else:
        rep.rows_ok = sink(con, table, clean)

    field_of = {name: fld for name, _, fld in rules}
    for reason, n in con.execute(
        f"SELECT _reason, count(*) FROM _bad_{table} GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall():
        rep.quarantined[reason] = n
        fld = field_of[reason]
        rep.examples[reason] = [
            {"row": int(r), "field": fld, "value": v}
            for r, v in con.execute(
                f'SELECT _row, "{fld}" FROM _bad_{table} WHERE _reason = ? '
                f"ORDER BY _file, _row LIMIT {EXAMPLES_PER_REASON}", [reason]
            ).fetchall()
        ]
    if rep.n_quarantined and qfile is not None:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        con.execute(
            f"COPY (SELECT * FROM _bad_{table} ORDER BY _file, _row) TO {lit(str(qfile))} "
            f"(FORMAT parquet)"
        )
    for tmp in ("_drop_", "_bad_", "_src_", "_new_"):
        con.execute(f"DROP TABLE IF EXISTS {tmp}{table}")
    if rep.n_quarantined + rep.duplicates + rep.rows_ok != rep.rows_read:  # pragma: no cover
        raise RuntimeError(f"{table}: rows were lost while loading {path}")
    return rep


def load(
    data_dir: Path | str,
    *,
    clock: pd.Timestamp | None = None,
    quarantine_dir: Path | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    sink: Sink | None = None,
    row_hash: bool = False,
    files: dict[str, Sequence[Path]] | None = None,
    prior: dict[str, str] | None = None,
) -> Dataset:
    """Validate the folder's files into clean DuckDB tables ``leads``, ``events``, ``contacts``.

    ``clock`` is the run's clock (default: now); rows stamped after it are quarantined because
    they cannot have happened yet. Bad rows go to ``quarantine_dir/<table>.parquet``.

    ``sink``: the clean events and contacts are handed to it as they are validated instead of
    becoming tables, and the clean leads once complete (they stay a table too: events and
    contacts are checked against them). The nightly job writes them straight to its bucketed
    Parquet this way, rather than building tens of millions of rows into DuckDB only to copy
    them out again; the connection then holds no ``events``/``contacts`` tables of them.

    ``row_hash``: the clean rows (and quarantined ones) carry the hash of their raw values as
    ``_h``, for a later load of added files to compare with. ``files`` and ``prior`` are that
    later load: ``files`` lists the added files per table (an empty list: nothing new), and
    ``prior`` holds, per table, SQL for the rows earlier loads kept (key ``<table>``) and
    quarantined (key ``bad_<table>``), with their ``_h``. Events and contacts may then belong to
    earlier leads, a row repeating an earlier one is an exact duplicate and a lead row for an
    earlier lead conflicts with it: what one load of all the files would decide, as long as the
    added files come after the earlier ones in file order. The clean tables (and what reaches
    ``sink``) hold the new rows only.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError(f"{data_dir}: not a folder")
    con = con or connect()
    con.execute("SET TimeZone='UTC'")  # text without an offset is UTC by contract
    clock = pd.Timestamp.now(tz="UTC") if clock is None else pd.Timestamp(clock)
    if clock.tzinfo is None:
        clock = clock.tz_localize("UTC")
    clock_sql = f"TIMESTAMPTZ '{clock.tz_convert('UTC').isoformat()}'"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _tz_names AS SELECT name FROM pg_timezone_names()"
    )
    if prior is not None:
        for table in TABLES:
            for key in (table, f"bad_{table}"):
                empty = f"SELECT *, NULL::UBIGINT AS _h FROM ({empty_sql(table)})"
                con.execute(f"CREATE OR REPLACE TEMP VIEW _prior_{key} AS "
                            f"{prior.get(key, empty)}")
    reports: dict[str, TableReport] = {}
    for table in TABLES:  # leads first: events and contacts check their lead exists
        path = find_file(data_dir, table)
        new_files = None if files is None else files.get(table, [])
        if new_files is not None and not new_files:
            empty_table(con, table)
            reports[table] = TableReport(table=table, file=f"{path} (no new files)")
            continue
        try:
            reports[table] = _load_table(
                con, table, path, clock_sql, quarantine_dir,
                None if table == "leads" else sink, files=new_files, prior=prior is not None,
                row_hash=row_hash or prior is not None,
            )
        except (duckdb.IOException, duckdb.InvalidInputException) as e:
            raise UnreadableFile(_unreadable(path, e)) from None
    con.execute(f"UPDATE leads SET tz = '{DEFAULT_TZ}' WHERE tz IS NULL")
    if sink is not None:
        sink(con, "leads", "SELECT * FROM leads")
    # an in-memory database compresses its tables at a checkpoint (dictionary, FSST, bit
    # packing): several times less memory for the events, for a little more CPU per scan
    con.execute("CHECKPOINT")
    for rep in reports.values():
        for line in rep.lines():
            log.info(line)
    return Dataset(con=con, reports=reports, quarantine_dir=quarantine_dir)


def _unreadable(path: Path, e: Exception) -> str:
    """One line for a file DuckDB could not read: the file, the format, DuckDB's first line
    (which names the file of a folder that failed; the lines after it may quote row data)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for prefix in ("Invalid Input Error: ", "IO Error: "):
        first = first.removeprefix(prefix)
    kind = "CSV" if path.suffix == ".csv" else "Parquet"
    hint = "; it may be truncated or not Parquet at all: copy or export it again" \
        if kind == "Parquet" else ""
    return f"{path}: cannot be read as {kind}: {first}{hint}"


def register_frames(
    con: duckdb.DuckDBPyConnection,
    leads: pd.DataFrame,
    events: pd.DataFrame,
    contacts: pd.DataFrame | None = None,
    *,
    clock: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Register in-memory frames as the clean tables (serving, tests). Missing optional
    columns are added as nulls so the feature SQL always finds them.

    With ``clock`` (inline HTTP rows), each row is checked by the very rules :func:`load`
    quarantines by (:func:`_reasons`, ``clock`` being the run's clock): a row breaking one
    stays out of its table, and the returned frame lists it (``table``, ``row``: its
    position in the given frame, ``reason``, ``field``). Without ``clock`` the frames are
    taken as already valid and nothing is returned."""
    frames = {"leads": leads, "events": events, "contacts": contacts}
    bad: list[tuple[str, int, str, str]] = []
    if clock is not None:
        clock = pd.Timestamp(clock)
        clock = clock.tz_localize("UTC") if clock.tzinfo is None else clock.tz_convert("UTC")
        clock_sql = f"TIMESTAMPTZ '{clock.isoformat()}'"
        con.execute("CREATE OR REPLACE TEMP TABLE _tz_names AS "
                    "SELECT name FROM pg_timezone_names()")
    for table, df in frames.items():
        if df is None or not len(df.columns):
            empty_table(con, table)
            continue
        if clock is None:
            con.register(f"_in_{table}", df)
            con.execute(f"CREATE OR REPLACE TABLE {table} AS "
                        f"SELECT {_frame_select(table, df)} FROM _in_{table}")
        else:
            con.register(f"_in_{table}", df.assign(_row=range(len(df))))
            bad += _checked_table(con, table, clock_sql)
        con.unregister(f"_in_{table}")
    con.execute(f"UPDATE leads SET tz = '{DEFAULT_TZ}' WHERE tz IS NULL")
    return pd.DataFrame(bad, columns=["table", "row", "reason", "field"])


def _frame_select(table: str, df: pd.DataFrame) -> str:
    """The contract's columns of an already-valid frame, typed."""
    sel = []
    for col in TABLES[table]:
        naive = col.name in df.columns and pd.api.types.is_datetime64_dtype(df[col.name])
        if naive and not isinstance(df[col.name].dtype, pd.DatetimeTZDtype):
            expr = f"timezone('UTC', CAST(\"{col.name}\" AS TIMESTAMP))"  # naive = UTC
        elif col.name in df.columns:
            expr = f'CAST("{col.name}" AS {SQL_TYPE[col.kind]})'
        else:
            expr = f"CAST(NULL AS {SQL_TYPE[col.kind]})"
        sel.append(f'{expr} AS "{col.name}"')
    if table == "leads":  # CRM fields beyond the contract's, as given
        sel += ['"' + c.replace('"', '""') + '"' for c in extra_lead_columns(list(df.columns))]
    return ", ".join(sel)


def _checked_table(con, table: str, clock_sql: str) -> list[tuple[str, int, str, str]]:
    """The registered frame ``_in_<table>`` (with its ``_row``) into the clean table
    ``table``, typed and cleaned as :func:`_load_table` does it, without the rows that break
    one of :func:`_reasons`' rules; returns those as (table, row, reason, field)."""
    scan = f"_in_{table}"
    cols = _check_columns(con, table, Path(f"(request {table})"), scan)
    rules = _reasons(table, cols, clock_sql)
    case = "CASE " + " ".join(f"WHEN {cond} THEN '{name}'" for name, cond, _ in rules) + " END"

    def value(n: str, c: _Col) -> str:
        if n == "lead_id" and not c.empty:  # the request's own key, which its answer is
            return f"NULLIF(CAST({c.q} AS VARCHAR), '')"  # keyed by: taken as sent
        return _clean_value(table, n, c.typed())

    typed = ", ".join(f'{value(n, c)} AS "{n}"' for n, c in cols.items())
    srcs = ", ".join(f"{'NULL' if c.family is None else c.q} AS {c.src}" for c in cols.values())
    extra = []
    if table == "leads":  # CRM fields beyond the contract's, kept as load() keeps them
        desc = con.sql(f"SELECT * FROM {scan} LIMIT 0").description
        extra = extra_lead_columns([d[0] for d in desc])
    ex = "".join(", " + e for e in _extra_sql(con, scan, extra))
    # as load() does: an exact copy of an earlier row (over the contract's columns as sent)
    # is dropped before the rules; a lead is the request's own key, so only events/contacts
    raw = ", ".join(c.q for c in cols.values() if c.family is not None)
    copy = (f"row_number() OVER (PARTITION BY {raw} ORDER BY _row)"
            if table != "leads" and raw else "1")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _chk_{table} AS SELECT *, {case} AS _reason
        FROM (SELECT {typed}{ex}, {srcs}, _row, {copy} AS _copy FROM {scan})"""
    )
    names = ", ".join('"' + n.replace('"', '""') + '"' for n in [*cols, *extra])
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {names} FROM _chk_{table} "
                f"WHERE _reason IS NULL AND _copy = 1 ORDER BY _row")
    field_of = {name: fld for name, _, fld in rules}
    out = [(table, int(r), reason, field_of[reason]) for r, reason in con.execute(
        f"SELECT _row, _reason FROM _chk_{table} WHERE _reason IS NOT NULL AND _copy = 1 "
        "ORDER BY _row").fetchall()]
    con.execute(f"DROP TABLE _chk_{table}")
    return out
