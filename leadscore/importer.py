"""``leadscore import``: a CRM or transaction export into the data contract's folder.

A mapping file (YAML, checked by pydantic: an unknown key is an error naming it) says which
source files to read and how their columns become the contract's ``leads``, ``events`` and
``contacts``. Everything runs in DuckDB, which reads CSV, CSV.gz and Parquet without pulling
the rows into pandas. Nothing is dropped silently: every row a filter, a missing key, an
unparseable time or an unmapped event type removes is counted in the report.

Expressions (``sql:`` fields and filters) are DuckDB SQL over one source row. They are parsed
by DuckDB and rebuilt from the parse tree, which may hold only column references, constants,
operators, CASE/CAST and the scalar functions in :data:`SQL_FUNCTIONS` (no subqueries, no
table functions, so no file access); a column they name must exist in the source.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leadscore import contract

#: when more than this share of a field's non-empty values cannot be read (a time in another
#: format, text in a number column), the mapping is wrong rather than a few rows bad
WHOLE_COLUMN_BAD_SHARE = contract.WHOLE_COLUMN_BAD_SHARE

#: scalar functions an expression may call (operators are functions in DuckDB's parse tree)
SQL_FUNCTIONS = frozenset({
    "+", "-", "*", "/", "//", "%", "^", "**", "||", "~~", "!~~", "~~*", "!~~*",
    "abs", "round", "floor", "ceil", "ceiling", "trunc", "sign", "sqrt", "ln", "log", "exp",
    "pow", "power", "greatest", "least", "coalesce", "ifnull", "nullif",
    "lower", "upper", "lcase", "ucase", "trim", "ltrim", "rtrim", "length", "len", "strlen",
    "substr", "substring", "left", "right", "replace", "concat", "concat_ws", "split_part",
    "starts_with", "ends_with", "prefix", "suffix", "contains", "strpos", "instr", "position",
    "regexp_matches", "regexp_replace", "regexp_extract", "lpad", "rpad", "reverse",
    "strptime", "try_strptime", "strftime", "date_trunc", "date_part", "datepart", "epoch",
    "to_timestamp", "make_date", "make_timestamp", "date_add", "date_diff", "datediff",
    "to_days", "to_hours", "to_minutes", "to_seconds", "year", "month", "day", "hour",
    "minute", "second", "dayofweek", "isodow", "if", "md5", "hash",
})
_SQL_CLASSES = frozenset({"COLUMN_REF", "CONSTANT", "FUNCTION", "CAST", "CASE", "OPERATOR",
                          "COMPARISON", "CONJUNCTION", "BETWEEN", "TYPE"})
#: the contract's column kinds by table (leads' extra columns are kept as read)
KINDS = {t: {c.name: c.kind for c in cols} for t, cols in contract.TABLES.items()}
REQUIRED = {t: [c.name for c in cols if c.not_null] for t, cols in contract.TABLES.items()}


class MappingError(ValueError):
    """The mapping or a source file is wrong as a whole; the one-line message names the file,
    the mapping key or the column."""


# --------------------------------------------------------------------------- the mapping

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_zone(v: str | None) -> str | None:
    if v is not None and v not in contract.time_zones():
        raise ValueError(f"unknown time zone {v!r}")
    return v


class FieldSpec(_Strict):
    """Where one output column comes from: a source ``column`` (a plain string in YAML means
    this), a constant ``value``, a DuckDB ``sql`` expression, or (``created_at`` only)
    ``first_event``: the lead's earliest event or contact."""

    column: str | None = None
    value: str | int | float | bool | None = None
    sql: str | None = None
    first_event: bool = False
    #: strptime format(s) of text times (DuckDB's, e.g. ``%d-%m-%Y %H:%M``); default: ISO
    format: str | list[str] | None = None
    #: zone of naive times (those without an offset); default: the source's, else UTC
    timezone: str | None = None
    #: source value -> contract value (``null``: leave empty / drop the row)
    map: dict[str, str | None] | None = None
    #: values missing from ``map`` are kept under their own name (else emptied)
    keep_unmapped: bool = False

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, v: Any) -> Any:
        return {"column": v} if isinstance(v, str) else v

    @field_validator("map", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> Any:  # YAML reads `1:` or `true:` as non-strings
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        return _check_zone(v)

    @model_validator(mode="after")
    def _one(self) -> FieldSpec:
        given = [k for k in ("column", "value", "sql", "first_event")
                 if (getattr(self, k) not in (None, False))
                 or (k == "value" and "value" in self.model_fields_set)]
        if len(given) != 1:
            raise ValueError("give exactly one of column, value, sql, first_event "
                             f"(got {', '.join(given) or 'none'})")
        if self.sql is not None:
            check_sql(self.sql)
        return self


class Filter(_Strict):
    """A row filter: ``keep`` rows where the condition holds, or ``drop`` those where it
    does (a NULL condition keeps nothing / drops nothing)."""

    name: str
    keep: str | None = None
    drop: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Filter:
        if (self.keep is None) == (self.drop is None):
            raise ValueError("give exactly one of keep, drop")
        check_sql(self.keep or self.drop)
        return self


class Source(_Strict):
    """One export: a file, several files or a glob (CSV, CSV.gz or Parquet)."""

    path: str | list[str]
    format: Literal["csv", "parquet"] | None = None  # default: from the file name
    delimiter: str | None = None  # CSV; default: detected
    timestamp_format: str | list[str] | None = None
    timezone: str | None = None
    #: CSV columns are read as text; these are read as numbers (a bad value empties it)
    types: dict[str, Literal["double", "integer", "text"]] = Field(default_factory=dict)
    filters: list[Filter] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        return _check_zone(v)


class _TableMap(_Strict):
    from_: str = Field(alias="from")
    filters: list[Filter] = Field(default_factory=list)


class LeadsMap(_TableMap):
    lead_id: FieldSpec
    dealer_id: FieldSpec
    created_at: FieldSpec
    source: FieldSpec | None = None
    intended_model: FieldSpec | None = None
    city: FieldSpec | None = None
    budget: FieldSpec | None = None
    tz: FieldSpec | None = None
    #: further lead columns kept as they are: a list of source columns, or new name -> field
    extra: list[str] | dict[str, FieldSpec] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _extra(cls, v):
        names = v if isinstance(v, list) else list(v)
        clash = sorted(set(names) & set(KINDS["leads"]))
        if clash:
            raise ValueError(f"{', '.join(clash)}: a contract column, map it by its own key")
        return v


class EventsMap(_TableMap):
    name: str | None = None  # its name in the report
    lead_id: FieldSpec
    ts: FieldSpec
    event_type: FieldSpec
    value: FieldSpec | None = None
    model: FieldSpec | None = None
    ingested_at: FieldSpec | None = None
    #: one event per (lead, ts, type, model) with the lines' values summed (or counted, ...)
    aggregate: Literal["sum", "count", "max", "min"] | None = None


class ContactsMap(_TableMap):
    name: str | None = None
    lead_id: FieldSpec
    ts: FieldSpec
    channel: FieldSpec
    outcome: FieldSpec


class Mapping(_Strict):
    """A whole mapping file. Source paths are relative to ``data_dir``, which is relative to
    the mapping file (default: the mapping file's folder)."""

    version: Literal[1] = 1
    description: str = ""
    data_dir: str | None = None
    #: zone of naive times in every source (default UTC); also the leads' ``tz`` unless mapped
    timezone: str | None = None
    timestamp_format: str | list[str] | None = None
    sources: dict[str, Source]
    leads: LeadsMap
    events: list[EventsMap] = Field(min_length=1)
    contacts: list[ContactsMap] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        return _check_zone(v)

    @model_validator(mode="after")
    def _refs(self) -> Mapping:
        parts = [("leads", self.leads)] + [(f"events.{i}", e) for i, e in enumerate(self.events)]
        parts += [(f"contacts.{i}", c) for i, c in enumerate(self.contacts)]
        for where, part in parts:
            if part.from_ not in self.sources:
                raise ValueError(f"{where}.from: no source named {part.from_!r} (sources: "
                                 f"{', '.join(self.sources)})")
            for name, spec in _fields(part):
                if spec.first_event and (where, name) != ("leads", "created_at"):
                    raise ValueError(f"{where}.{name}: first_event is for leads.created_at")
        return self


def _fields(part: _TableMap) -> list[tuple[str, FieldSpec]]:
    """The contract fields a table mapping sets, by output name (extras included)."""
    out = [(n, getattr(part, n)) for n in type(part).model_fields
           if isinstance(getattr(part, n), FieldSpec)]
    extra = getattr(part, "extra", None)
    if isinstance(extra, list):
        out += [(n, FieldSpec(column=n)) for n in extra]
    elif extra:
        out += list(extra.items())
    return out


def mapping_error(e: ValidationError) -> str:
    """Validation errors on one line, each as ``key.path: message`` (the path as in YAML,
    without pydantic's names for validators and union members)."""
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]
                         if not re.match(r"(function-|str$|list\[|dict\[)", str(x)))
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(dict.fromkeys(parts))


def read_mapping(path: Path) -> Mapping:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise MappingError(f"{path}: no such mapping file") from None
    except yaml.YAMLError as e:
        raise MappingError(f"{path}: not YAML: {str(e).splitlines()[0]}") from None
    try:
        return Mapping.model_validate(raw or {})
    except ValidationError as e:
        raise MappingError(f"{path}: {mapping_error(e)}") from None


# --------------------------------------------------------------------------- SQL expressions

_PARSER = None


def check_sql(expr: str) -> str:
    """The expression rebuilt from DuckDB's parse tree, if it holds only what an expression
    over one row may (see the module's docstring); ``ValueError`` naming what it may not."""
    global _PARSER
    if _PARSER is None:
        _PARSER = duckdb.connect()
    tree = json.loads(_PARSER.execute("SELECT json_serialize_sql(?)",
                                      [f"SELECT {expr}"]).fetchone()[0])
    if tree.get("error"):
        raise ValueError(f"{expr!r} is not an SQL expression: {tree.get('error_message')}")
    stmts = tree["statements"]
    node = stmts[0]["node"] if len(stmts) == 1 else {}
    if (node.get("type") != "SELECT_NODE" or len(node.get("select_list", [])) != 1
            or node["from_table"].get("type") != "EMPTY" or node.get("where_clause")
            or node.get("group_expressions") or node.get("having") or node.get("modifiers")
            or node.get("qualify") or node["select_list"][0].get("alias")):
        raise ValueError(f"{expr!r} is not one expression over a row")
    _walk(node["select_list"][0], expr)
    return _PARSER.execute("SELECT json_deserialize_sql(?)",
                           [json.dumps(tree)]).fetchone()[0].removeprefix("SELECT ")


def _walk(node: Any, expr: str) -> None:
    if isinstance(node, list):
        for x in node:
            _walk(x, expr)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class")
    if cls is not None and cls not in _SQL_CLASSES:
        raise ValueError(f"{expr!r}: {cls.lower()} is not allowed in an expression")
    if cls == "FUNCTION":
        name = node["function_name"].lower()
        if name not in SQL_FUNCTIONS or node.get("schema") or node.get("catalog"):
            raise ValueError(f"{expr!r}: function {name} is not allowed in an expression")
    if cls == "COLUMN_REF" and len(node["column_names"]) != 1:
        raise ValueError(f"{expr!r}: {'.'.join(node['column_names'])}: name a column alone")
    for v in node.values():
        _walk(v, expr)


def sql_columns(expr: str) -> list[str]:
    """The columns an (already checked) expression reads."""
    tree = json.loads(_PARSER.execute("SELECT json_serialize_sql(?)",
                                      [f"SELECT {expr}"]).fetchone()[0])
    out: list[str] = []

    def walk(n):
        if isinstance(n, list):
            for x in n:
                walk(x)
        elif isinstance(n, dict):
            if n.get("class") == "COLUMN_REF":
                out.append(n["column_names"][0])
            for v in n.values():
                walk(v)

    walk(tree["statements"][0]["node"]["select_list"])
    return list(dict.fromkeys(out))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_lit = contract.lit


# --------------------------------------------------------------------------- the report

@dataclass
class PartReport:
    """One source or output table: rows in, rows out, and every row dropped, by reason."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    merged: int = 0  # line items folded into one event / further rows of one lead
    merged_as: str = "lines folded into one event per (lead, ts, type, model)"
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.name}: {self.rows_in:,} rows in, {self.rows_out:,} out"]
        out += [f"  - dropped by {k}: {n:,}" for k, n in self.dropped.items() if n]
        if self.merged:
            out.append(f"  - {self.merged_as}: {self.merged:,}")
        out += [f"  - {n}" for n in self.notes]
        return out


@dataclass
class ImportReport:
    out: Path
    parts: list[PartReport]
    rows: dict[str, int]

    def summary(self) -> str:
        lines = [line for p in self.parts for line in p.lines()]
        lines.append("wrote " + ", ".join(f"{t} {n:,}" for t, n in self.rows.items())
                     + f" rows to {self.out}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- running it

def resolve_sources(mapping: Mapping, mapping_path: Path, overrides: Sequence[str] = (),
                    data_dir: Path | None = None) -> dict[str, list[Path]]:
    """Each source's files. ``overrides``: ``name=PATH``, or a bare ``PATH`` for the source
    whose configured file has that file name (or the only source); relative to the working
    directory. ``data_dir`` replaces the mapping's."""
    base = Path(mapping_path).parent
    root = data_dir if data_dir is not None else (
        base / mapping.data_dir if mapping.data_dir else base)
    paths: dict[str, list[str]] = {
        n: [s.path] if isinstance(s.path, str) else list(s.path)
        for n, s in mapping.sources.items()}
    given: dict[str, list[Path]] = {}
    for item in overrides:
        name, sep, path = item.partition("=")
        if sep and name in mapping.sources:
            given.setdefault(name, []).append(Path(path))
            continue
        hits = [n for n, ps in paths.items() if any(Path(p).name == Path(item).name
                                                      for p in ps)]
        if not hits and len(mapping.sources) == 1:
            hits = list(mapping.sources)
        if len(hits) != 1:
            raise MappingError(
                f"--source {item}: say which source it is, as NAME=PATH (sources: "
                f"{', '.join(mapping.sources)})")
        given.setdefault(hits[0], []).append(Path(item))
    out: dict[str, list[Path]] = {}
    for name, ps in paths.items():
        files: list[Path] = []
        for p in given.get(name) or [Path(os.path.normpath(root / p)) for p in ps]:
            if any(c in p.name for c in "*?["):
                files += sorted(p.parent.glob(p.name))
                if not files:
                    raise MappingError(f"sources.{name}: no file matches {p}")
            elif not p.is_file():
                raise MappingError(f"sources.{name}: {p}: no such file")
            else:
                files.append(p)
        out[name] = files
    return out


def _is_csv(path: Path, src: Source) -> bool:
    if src.format:
        return src.format == "csv"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".parquet"], [".pq"]):
        return False
    if suffixes[-1:] in ([".csv"], [".tsv"], [".txt"]) or suffixes[-2:-1] in (
            [".csv"], [".tsv"], [".txt"]):
        return True
    raise MappingError(f"{path}: cannot tell CSV from Parquet by its name: set the "
                       "source's format")


class _Importer:
    def __init__(self, mapping: Mapping, files: dict[str, list[Path]]):
        self.m = mapping
        self.files = files
        self.con = contract.connect()
        self.columns: dict[str, dict[str, str]] = {}  # source -> column -> DuckDB type
        self.parts: list[PartReport] = []
        self._tmp: list[Path] = []

    # ---- sources
    def load_source(self, name: str, src: Source) -> None:
        rep = PartReport(f"source {name} ({', '.join(str(f) for f in self.files[name])})")
        scans = []
        for f in self.files[name]:
            if _is_csv(f, src):
                try:
                    enc = contract.csv_encoding(f)
                except contract.UnreadableFile as e:
                    raise MappingError(str(e)) from None
                text = f
                if enc != "utf-8":
                    text = contract.to_utf8(f, enc)
                    self._tmp.append(text)
                    rep.notes.append(f"{f.name}: read as {enc.upper()} text")
                opts = "all_varchar=true, header=true"
                if src.delimiter:
                    opts += f", delim={_lit(src.delimiter)}"
                scans.append(f"SELECT *, {_lit(str(f))} AS _file, row_number() OVER () AS _row"
                             f" FROM read_csv({_lit(str(text))}, {opts})")
            else:
                scans.append(f"SELECT * EXCLUDE (file_row_number), {_lit(str(f))} AS _file, "
                             f"file_row_number + 1 AS _row FROM read_parquet({_lit(str(f))}, "
                             "file_row_number=true)")
        raw = f"_raw_{name}"
        try:
            self.con.execute(f"CREATE TEMP TABLE {_q(raw)} AS "
                             + " UNION ALL BY NAME ".join(f"({s})" for s in scans))
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0]
            raise MappingError(f"source {name} ({', '.join(map(str, self.files[name]))}): "
                               f"cannot be read: {first}") from None
        types = self._describe(raw)
        where = self._where(name)
        for col in src.types:
            if col not in types:
                raise MappingError(f"{where}: sources.{name}.types: no column {col!r} "
                                   f"(found: {', '.join(types)})")
        rep.rows_in = self._count(raw)
        # typed columns, then the source's filters
        sel = []
        for col, kind in src.types.items():
            sql_t = {"double": "DOUBLE", "integer": "BIGINT", "text": "VARCHAR"}[kind]
            c = _q(col)
            if kind != "text" and types[col] == "VARCHAR":
                bad = self._check_share(raw, f"NULLIF(trim({c}), '')",
                                        f"TRY_CAST(NULLIF(trim({c}), '') AS {sql_t})", where,
                                        f"sources.{name}.types.{col}", f"a {kind}")
                if bad:
                    rep.notes.append(f"{col}: values not a {kind}, left empty: {bad:,}")
                sel.append(f"TRY_CAST(NULLIF(trim({c}), '') AS {sql_t}) AS {c}")
            else:
                sel.append(f"CAST({c} AS {sql_t}) AS {c}")
        typed = f"_typed_{name}"
        repl = f" REPLACE ({', '.join(sel)})" if sel else ""
        self.con.execute(f"CREATE TEMP VIEW {_q(typed)} AS SELECT *{repl} FROM {_q(raw)}")
        self.columns[name] = self._describe(typed)
        out = f"_src_{name}"
        self._filter(typed, out, src.filters, f"sources.{name}", where, name, rep)
        rep.rows_out = self._count(out)
        self.parts.append(rep)

    def _filter(self, rel: str, out: str, filters: Sequence[Filter], key: str, where: str,
                source: str, rep: PartReport) -> None:
        """``out``: the rows of ``rel`` that pass ``filters``; each filter's count of rows
        it removed (of those the earlier ones left) goes to the report."""
        if not filters:
            self.con.execute(f"CREATE TEMP VIEW {_q(out)} AS SELECT * FROM {_q(rel)}")
            return
        whens = []
        for i, f in enumerate(filters):
            cond = self._expr(f.keep or f.drop, source, f"{key}.filters.{i}", where)
            test = f"NOT coalesce(({cond}), FALSE)" if f.keep else f"coalesce(({cond}), FALSE)"
            whens.append(f"WHEN {test} THEN {i}")
        case = f"CASE {' '.join(whens)} END"
        self._run(f"CREATE TEMP TABLE {_q(out + '_f')} AS SELECT *, {case} AS _drop "
                  f"FROM {_q(rel)}", where)
        counts = dict(self.con.execute(
            f"SELECT _drop, count(*) FROM {_q(out + '_f')} WHERE _drop IS NOT NULL GROUP BY 1"
        ).fetchall())
        for i, f in enumerate(filters):
            rep.dropped[f"filter {f.name}"] = counts.get(i, 0)
        self.con.execute(f"CREATE TEMP VIEW {_q(out)} AS SELECT * EXCLUDE (_drop) "
                         f"FROM {_q(out + '_f')} WHERE _drop IS NULL")

    # ---- expressions and fields
    def _expr(self, sql: str, source: str, key: str, where: str) -> str:
        text = check_sql(sql)
        cols = self.columns[source]
        for c in sql_columns(sql):
            if c not in cols:
                raise MappingError(f"{where}: {key}: no column {c!r} (found: "
                                   f"{', '.join(cols)})")
        return text

    def _raw(self, spec: FieldSpec, source: str, key: str, where: str) -> str:
        """The field's value as the source gives it (before typing)."""
        if spec.column is not None:
            if spec.column not in self.columns[source]:
                raise MappingError(f"{where}: {key}: no column {spec.column!r} (found: "
                                   f"{', '.join(self.columns[source])})")
            return _q(spec.column)
        if spec.sql is not None:
            return f"({self._expr(spec.sql, source, key, where)})"
        v = spec.value
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "TRUE" if v else "FALSE"
        return _lit(v) if isinstance(v, str) else repr(v)

    def _typed(self, rel: str, raw: str, kind: str | None, spec: FieldSpec, source: str,
               key: str, where: str) -> tuple[str, str]:
        """(typed value, "present in the source") as SQL over ``rel``; a field of a known
        kind whose values mostly fail to parse is a :class:`MappingError`."""
        if raw == "NULL":
            return {"str": "CAST(NULL AS VARCHAR)", "ts": "CAST(NULL AS TIMESTAMPTZ)",
                    "float": "CAST(NULL AS DOUBLE)", None: "NULL"}[kind], "FALSE"
        try:
            t = self.con.execute(f"SELECT {raw} FROM {_q(rel)} LIMIT 0").description[0][1]
        except duckdb.Error as e:
            raise MappingError(f"{where}: {key}: {str(e).strip().splitlines()[0]}") from None
        t = str(t).upper()
        text = t == "VARCHAR"
        present = f"(NULLIF(trim({raw}), '') IS NOT NULL)" if text else f"({raw} IS NOT NULL)"
        if kind is None:  # an extra column: kept as it is
            return (f"NULLIF(trim({raw}), '')" if text else raw), present
        if kind == "str":
            if t in ("DOUBLE", "FLOAT"):  # ids read as floats (17850.0): written as 17850
                val = (f"CASE WHEN {raw} = trunc({raw}) AND abs({raw}) < 1e15 THEN "
                       f"CAST(CAST({raw} AS BIGINT) AS VARCHAR) ELSE CAST({raw} AS VARCHAR) END")
            else:
                val = f"NULLIF(trim(CAST({raw} AS VARCHAR)), '')"
            if spec.map is not None:
                whens = " ".join(f"WHEN {_lit(k)} THEN "
                                 f"{'NULL' if v is None else _lit(v)}"
                                 for k, v in spec.map.items())
                val = (f"CASE {val} {whens} ELSE "
                       f"{val if spec.keep_unmapped else 'NULL'} END")
            return val, present
        if kind == "float":
            if text:
                val = f"TRY_CAST(NULLIF(trim({raw}), '') AS DOUBLE)"
            elif t.startswith(("DOUBLE", "FLOAT", "DECIMAL", "INT", "BIGINT", "SMALLINT",
                               "TINYINT", "HUGEINT", "UBIGINT", "UINT", "USMALLINT",
                               "UTINYINT", "BOOLEAN")):
                val = f"CAST({raw} AS DOUBLE)"
            else:
                raise MappingError(f"{where}: {key}: type {t} is not a number")
            if text:
                self._check_share(rel, f"NULLIF(trim({raw}), '')", val, where, key, "a number")
            return val, present
        # a time: naive values are local times of the field's / source's / mapping's zone
        src = self.m.sources[source]
        zone = spec.timezone or src.timezone or self.m.timezone or "UTC"
        fmt = spec.format or src.timestamp_format or self.m.timestamp_format
        if text:
            s = f"NULLIF(trim({raw}), '')"
            if fmt:
                fmts = [fmt] if isinstance(fmt, str) else fmt
                aware = {("%z" in f or "%Z" in f) for f in fmts}
                if len(aware) > 1:
                    raise MappingError(f"{where}: {key}: formats mix times with and without "
                                       "an offset (%z): give them as separate fields")
                arg = _lit(fmts[0]) if len(fmts) == 1 else "[" + ", ".join(
                    _lit(f) for f in fmts) + "]"
                val = f"try_strptime({s}, {arg})"
                if aware == {False}:
                    val = f"timezone({_lit(zone)}, {val})"
                what = f"a time in the format {' or '.join(repr(f) for f in fmts)}"
            else:
                val = (f"CASE WHEN regexp_matches({s}, '(Z|[+-]\\d\\d(:?\\d\\d)?)$') "
                       f"THEN TRY_CAST({s} AS TIMESTAMPTZ) "
                       f"ELSE timezone({_lit(zone)}, TRY_CAST({s} AS TIMESTAMP)) END")
                what = "an ISO time (set a timestamp format)"
            self._check_share(rel, s, val, where, key, what)
        elif t.startswith("TIMESTAMP WITH TIME ZONE"):
            val = raw
        elif t.startswith(("TIMESTAMP", "DATE")):
            val = f"timezone({_lit(zone)}, CAST({raw} AS TIMESTAMP))"
        else:
            raise MappingError(f"{where}: {key}: type {t} is not a time")
        return val, present

    def _check_share(self, rel: str, raw: str, typed: str, where: str, key: str,
                     what: str) -> int:
        """How many present values do not parse; a :class:`MappingError` when most do not."""
        try:
            n, bad, ex = self.con.execute(
                f"SELECT count({raw}), count(*) FILTER (WHERE {raw} IS NOT NULL AND "
                f"{typed} IS NULL), arg_min({raw}, _row) FILTER (WHERE {raw} IS NOT NULL "
                f"AND {typed} IS NULL) FROM {_q(rel)}").fetchone()
        except duckdb.Error as e:
            raise MappingError(f"{where}: {key}: {str(e).strip().splitlines()[0]}") from None
        if n and bad > WHOLE_COLUMN_BAD_SHARE * n:
            raise MappingError(f"{where}: {key}: {bad:,} of {n:,} values are not {what} "
                               f"(e.g. {ex!r})")
        return bad

    def _run(self, sql: str, where: str) -> None:
        try:
            self.con.execute(sql)
        except duckdb.Error as e:
            raise MappingError(f"{where}: {str(e).strip().splitlines()[0]}") from None

    # ---- tables
    def _rows(self, table: str, rel: str, names: Sequence[str], specs: dict[str, FieldSpec],
              source: str, key: str, where: str, rows: str, rep: PartReport) -> None:
        """``rows``: the typed fields of ``rel`` with ``_drop``, the first reason a row is
        dropped for (a required field missing, unreadable or not in its map); optional
        fields that could not be read or mapped are left empty and counted in the notes."""
        sel, checks, notes = [], [], []
        raws = {n: self._raw(s, source, f"{key}.{n}", where) for n, s in specs.items()
                if n in names and not s.first_event}  # every column named exists
        for name in names:
            kind = KINDS[table].get(name)
            spec = specs.get(name)
            if name not in raws:
                sel.append(f"CAST(NULL AS {contract.SQL_TYPE[kind]}) AS {_q(name)}")
                continue
            raw = raws[name]
            val, present = self._typed(rel, raw, kind, spec, source, f"{key}.{name}", where)
            sel.append(f"{val} AS {_q(name)}")
            sel.append(f"{present} AS {_q('_p_' + name)}")
            lost = f"{_q('_p_' + name)} AND {_q(name)} IS NULL"
            how = ("not in map" if spec.map is not None else "unreadable")
            if name in REQUIRED[table]:
                checks.append((f"missing {name}", f"NOT {_q('_p_' + name)}"))
                checks.append((f"{name} {how}", f"{_q(name)} IS NULL"))
            elif kind in ("float", "ts") or spec.map is not None:
                notes.append((f"{name}: values {how}, left empty", lost))
        case = ("CASE " + " ".join(f"WHEN {c} THEN {_lit(r)}" for r, c in checks) + " END"
                if checks else "CAST(NULL AS VARCHAR)")
        note_cols = "".join(f", ({c}) AS _note{j}" for j, (_, c) in enumerate(notes))
        self._run(f"CREATE TEMP TABLE {_q(rows)} AS SELECT *, {case} AS _drop{note_cols} "
                  f"FROM (SELECT {', '.join(sel)}, _file, _row FROM {_q(rel)})", where)
        for reason, n in self.con.execute(
                f"SELECT _drop, count(*) FROM {_q(rows)} WHERE _drop IS NOT NULL "
                f"GROUP BY 1 ORDER BY 2 DESC, 1").fetchall():
            rep.dropped[reason] = n
        for j, (what, _) in enumerate(notes):
            n = self._count(rows, f"_drop IS NULL AND _note{j}")
            if n:
                rep.notes.append(f"{what}: {n:,}")

    def rows_table(self, table: str, i: int, part: EventsMap | ContactsMap) -> str:
        """One events/contacts mapping into a temp table of the contract's columns; rows
        without a key, with an unreadable time or an unmapped type are dropped and counted;
        with ``aggregate``, one event per (lead, ts, type, model)."""
        key = f"{table}.{i}"
        rep = PartReport(self._label(table, i))
        src = f"_src_{part.from_}"
        where = self._where(part.from_)
        rel = f"_in_{table}_{i}"
        rep.rows_in = self._count(src)
        self._filter(src, rel, part.filters, key, where, part.from_, rep)
        rows = f"_rows_{table}_{i}"
        self._rows(table, rel, list(KINDS[table]), dict(_fields(part)), part.from_, key,
                   where, rows, rep)
        names = ", ".join(_q(n) for n in KINDS[table])
        out = f"_out_{table}_{i}"
        agg = getattr(part, "aggregate", None)
        if agg:
            fn = {"sum": "sum(value)", "count": "CAST(count(*) AS DOUBLE)",
                  "max": "max(value)", "min": "min(value)"}[agg]
            self.con.execute(
                f"CREATE TEMP TABLE {_q(out)} AS SELECT lead_id, ts, event_type, model, "
                f"{fn} AS value, max(ingested_at) AS ingested_at FROM {_q(rows)} "
                f"WHERE _drop IS NULL GROUP BY lead_id, ts, event_type, model")
            rep.merged = self._count(rows, "_drop IS NULL") - self._count(out)
        else:
            self.con.execute(f"CREATE TEMP TABLE {_q(out)} AS SELECT {names} "
                             f"FROM {_q(rows)} WHERE _drop IS NULL")
        rep.rows_out = self._count(out)
        self.parts.append(rep)
        return out

    def leads_table(self, rows: dict[str, list[str]]) -> None:
        """The leads, one per ``lead_id`` (its first row in file order: a line-item source
        has many); ``created_at: first_event`` is the lead's earliest event or contact.
        Events and contacts of leads not in the table are then dropped and counted."""
        part = self.m.leads
        rep = PartReport("leads", merged_as="further rows of a lead (its first row kept)")
        src = f"_src_{part.from_}"
        where = self._where(part.from_)
        rel = "_in_leads"
        rep.rows_in = self._count(src)
        self._filter(src, rel, part.filters, "leads", where, part.from_, rep)
        specs = dict(_fields(part))
        if "tz" not in specs and self.m.timezone:
            specs["tz"] = FieldSpec(value=self.m.timezone)
        names = [*KINDS["leads"], *self.extra]
        first_event = specs["created_at"].first_event
        self._rows("leads", rel, names, specs, part.from_, "leads", where, "_leads_rows", rep)
        cols = ", ".join(_q(n) for n in names)
        self.con.execute(
            f"CREATE TEMP TABLE _leads_one AS SELECT {cols} FROM _leads_rows "
            "WHERE _drop IS NULL QUALIFY row_number() OVER (PARTITION BY lead_id "
            "ORDER BY _file, _row) = 1")
        rep.merged = self._count("_leads_rows", "_drop IS NULL") - self._count("_leads_one")
        if first_event:
            union = " UNION ALL ".join(f"SELECT lead_id, ts FROM {_q(t)}"
                                       for ts in rows.values() for t in ts)
            self.con.execute(
                f"UPDATE _leads_one l SET created_at = f.ts FROM (SELECT lead_id, min(ts) AS ts"
                f" FROM ({union}) GROUP BY 1) f WHERE l.lead_id = f.lead_id")
            rep.dropped["no event (created_at: first_event)"] = self._count(
                "_leads_one", "created_at IS NULL")
            self.con.execute("DELETE FROM _leads_one WHERE created_at IS NULL")
        rep.rows_out = self._count("_leads_one")
        self.parts.append(rep)
        for table, ts in rows.items():
            for i, t in enumerate(ts):
                unknown = "lead_id NOT IN (SELECT lead_id FROM _leads_one)"
                n = self._count(t, unknown)
                if n:
                    p = next(p for p in self.parts if p.name == self._label(table, i))
                    p.dropped["lead not in leads"] = n
                    p.rows_out -= n
                    self.con.execute(f"DELETE FROM {_q(t)} WHERE {unknown}")

    @property
    def extra(self) -> list[str]:
        return [n for n, _ in _fields(self.m.leads) if n not in KINDS["leads"]]

    def _label(self, table: str, i: int) -> str:
        part = (self.m.events if table == "events" else self.m.contacts)[i]
        return f"{table}[{part.name or part.from_}]"

    def _where(self, source: str) -> str:
        """What an error names: the source's file (the first, if there are several)."""
        files = self.files[source]
        return f"{files[0]}" + (f" (and {len(files) - 1} more)" if len(files) > 1 else "")

    def _describe(self, rel: str) -> dict[str, str]:
        return {d[0]: str(d[1]).upper() for d in
                self.con.execute(f"SELECT * FROM {_q(rel)} LIMIT 0").description
                if d[0] not in ("_file", "_row")}

    def _count(self, rel: str, where: str = "TRUE") -> int:
        return self.con.execute(f"SELECT count(*) FROM {_q(rel)} WHERE {where}").fetchone()[0]

    def write(self, out: Path, rows: dict[str, list[str]]) -> dict[str, int]:
        """The tables as ``out/<table>.parquet``, each written beside and moved into place."""
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        queries = {"leads": "SELECT " + ", ".join(_q(n) for n in [*KINDS["leads"], *self.extra])
                   + " FROM _leads_one ORDER BY created_at, lead_id"}
        for table, ts in rows.items():
            if ts:
                names = ", ".join(_q(n) for n in KINDS[table])
                queries[table] = (" UNION ALL ".join(f"SELECT {names} FROM {_q(t)}" for t in ts)
                                  + " ORDER BY lead_id, ts")
        for table, sql in queries.items():
            tmp = out / f".{table}.parquet.tmp"
            self.con.execute(f"COPY ({sql}) TO {_lit(str(tmp))} (FORMAT parquet)")
            os.replace(tmp, out / f"{table}.parquet")
            written[table] = self.con.execute(
                f"SELECT count(*) FROM read_parquet({_lit(str(out / f'{table}.parquet'))})"
            ).fetchone()[0]
        return written

    def close(self) -> None:
        self.con.close()
        for t in self._tmp:
            t.unlink(missing_ok=True)


def _existing(out: Path) -> list[Path]:
    """Contract files already in ``out`` (what ``contract.find_file`` could pick up)."""
    found = []
    for table in contract.TABLES:
        for p in (out / f"{table}.parquet", out / f"{table}.csv", out / table):
            if p.exists():
                found.append(p)
    return found


def run(mapping_path: Path | str, out: Path | str, *, sources: Sequence[str] = (),
        data_dir: Path | str | None = None, force: bool = False) -> ImportReport:
    """Import the sources a mapping names into ``out`` (``leads.parquet``, ``events.parquet``
    and, when mapped, ``contacts.parquet``). ``sources`` and ``data_dir`` override the
    mapping's paths (see :func:`resolve_sources`); ``force`` replaces contract files already
    in ``out``. Raises :class:`MappingError` with a one-line message."""
    mapping_path, out = Path(mapping_path), Path(out)
    m = read_mapping(mapping_path)
    files = resolve_sources(m, mapping_path, sources,
                            Path(data_dir) if data_dir is not None else None)
    old = _existing(out)
    if old and not force:
        raise MappingError(f"{out}: already holds {', '.join(p.name for p in old)}; "
                           "use --force to replace them, or another --out")
    imp = _Importer(m, files)
    try:
        used = {m.leads.from_, *(e.from_ for e in m.events), *(c.from_ for c in m.contacts)}
        for name, src in m.sources.items():
            if name in used:
                imp.load_source(name, src)
        rows = {"events": [imp.rows_table("events", i, e) for i, e in enumerate(m.events)],
                "contacts": [imp.rows_table("contacts", i, c)
                             for i, c in enumerate(m.contacts)]}
        imp.leads_table(rows)
        for p in old:  # replaced (--force): a stale table must not be read beside the new
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        written = imp.write(out, rows)
        return ImportReport(out=out, parts=imp.parts, rows=written)
    finally:
        imp.close()
