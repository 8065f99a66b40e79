"""The scorer core: feature rows in, scores with reasons out. HTTP and batch both call this.

It holds the champion models (as :class:`~leadscore.artifact.LeadModel`, loaded from the
registry) and turns feature rows into the output contract of DESIGN.md. Rows enter as columns
(a frame, or a request's records turned into columns at the edge) and reasons leave as one
table per model; only the edges differ: dicts for HTTP, JSON text for files. Reasons are exact
TreeSHAP contributions, the values ``pred_contrib`` and ``shap.TreeExplainer`` give, computed
only for the rows that ask for them. Each model scores by LightGBM's own predict or by the
compiled kernels of :mod:`leadscore.fast` where they were verified to give its numbers
(:attr:`LeadModel.scoring_path <leadscore.artifact.LeadModel.scoring_path>`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leadscore import lang as language
from leadscore.artifact import LeadModel
from leadscore.features import catalog
from leadscore.schema import DEFAULT_TZ

if TYPE_CHECKING:
    from leadscore.scoring.contact_policy import RulesFile
    from leadscore.scoring.intent import IntentRules

log = logging.getLogger(__name__)

#: model name → the output column of its probability (the time-to-order models' columns are
#: written after the monotone correction, :func:`leadscore.scoring.intent.monotone`)
PROBA_COLUMN = {"conversion": "p_convert", "contact": "p_inquiry", "churn": "p_churn",
                "order-7d": "p_order_7d", "order-15d": "p_order_15d",
                "order-90d": "p_order_90d"}
#: models scored without reasons: the 30-day conversion model's are the lead's
NO_REASONS = frozenset({"order-7d", "order-15d", "order-90d"})
SLOT_MODEL = "contact-slot"
ALL_MODELS = (*PROBA_COLUMN, SLOT_MODEL)
OUTPUT_COLUMNS = (
    "lead_id", "dealer_id", "as_of", "p_convert", "p_order_7d", "p_order_15d", "p_order_30d",
    "p_order_90d", "lead_score", "intent_grade", "score_delta", "trend", "changes",
    "p_inquiry", "contact_urgency", "best_slot_start", "best_slot_local", "best_channel",
    "p_response", "p_churn", "reasons", "model_versions",
)
URGENCY = {"A": "now", "B": "within_3_days", "C": "nurture", "D": "nurture"}


def plain_value(v) -> float | str | None:
    """A feature value as a reason carries it: None when missing, float or str."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (int, np.integer)):
        return float(v)
    return str(v)


def _top(key: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``top`` largest values of ``key`` (largest first, ties to
    the lower column, as a stable sort orders them) and those values. A block takes ``top``
    arg-max passes over its matrix, which it overwrites (a row-by-row partial sort,
    ``argpartition`` along rows, was slower)."""
    k = min(top, key.shape[1])
    rows = np.arange(len(key))
    if len(key) <= 4:  # a request's few rows: one stable sort each beats the passes
        cols = np.argsort(-key, axis=1, kind="stable")[:, :k]
        return cols, key[rows[:, None], cols]
    cols = np.empty((len(key), k), dtype=np.intp)
    vals = np.empty((len(key), k), dtype=key.dtype)
    for t in range(k):
        cols[:, t] = np.argmax(key, axis=1)
        vals[:, t] = key[rows, cols[:, t]]
        key[rows, cols[:, t]] = -np.inf
    return cols, vals


@functools.lru_cache(maxsize=1 << 16)
def _sentence(feature: str, value: float | str | None, lang: str = "en") -> str | None:
    """An advisor sentence, written once per (feature, value, language) in the process:
    counts and shares repeat across leads and requests. None: a missing value that is no
    reason (:meth:`Feature.sentence <leadscore.features.catalog.Feature.sentence>`)."""
    return catalog.feature(feature).sentence(value, lang)


@functools.lru_cache(maxsize=4096)
def _template(feature: str, lang: str = "en") -> tuple[str, str, tuple[float, float] | None] | None:
    """The feature's singular and plural templates in ``lang`` and the values that read
    singular, when formatting a number into them (``value=v + 0.0``: -0.0 reads as 0)
    gives what ``Feature.sentence`` says; else None. The nightly job writes more distinct
    values than a cache of whole sentences holds."""
    feat = catalog.feature(feature)
    try:
        one, other, when = catalog.forms(feat.template(lang))
        if isinstance(when, str):  # the singular needs the number rendered: no fast path
            return None
        lo, hi = when if when is not None else (math.inf, -math.inf)
        ok = all((one if lo < v < hi else other).format(value=v + 0.0) == feat.sentence(v, lang)
                 for v in (0.0, -0.0, -1.5, 0.25, 0.5, 1.0, 1.5, 2.0, 12345.678, math.inf))
    except (ValueError, KeyError, IndexError, TypeError):
        ok = False
    return (one, other, when) if ok else None


def _sentences(feature: str, values: Sequence, lang: str = "en") -> list[str | None]:
    """The sentences of ``feature`` at ``values`` (None, float or str), as :func:`_sentence`
    writes them: finite numbers go straight into the template (:func:`_template`), too many
    distinct for the cache in a night's batch."""
    template = _template(feature, lang)
    if template is None:
        return [_sentence(feature, v, lang) for v in values]
    one, other, when = template
    fmt = other.format
    if when is None:
        return [fmt(value=v + 0.0) if type(v) is float and v - v == 0.0
                else _sentence(feature, v, lang) for v in values]
    lo, hi, fmt_one = *when, one.format
    return [(fmt_one if lo < v < hi else fmt)(value=v + 0.0)
            if type(v) is float and v - v == 0.0 else _sentence(feature, v, lang)
            for v in values]


def _pick(contrib: np.ndarray, top: int, shown: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the columns of the ``top`` largest contributions by magnitude, positive and
    negative together (ties to the lower column), their contributions, and which to keep:
    nonzero ones that are shown (``shown``: the magnitudes, zeroed where a reason is not
    shown; overwritten)."""
    c = contrib[:, :-1]
    cols, size = _top(shown, top)
    contribs = c[np.arange(len(c))[:, None], cols]
    return cols, contribs, size > 0


@dataclass
class _Reasons:
    """One model's reasons as columns, rows ascending and a row's reasons in order: what the
    HTTP and file edges write, each in its own format. Values and sentences are held once per
    distinct entry (``key``), so the nightly job writes each distinct (feature, value) once."""

    model: str
    features: Sequence[str]  # the names ``feature`` indexes
    row: np.ndarray
    feature: np.ndarray
    key: np.ndarray  # into ``values`` and ``sentences``
    values: list  # None, float or str
    sentences: list[str]
    contribution: np.ndarray  # rounded to 6 places


#: a request's few reasons are each their own entry: grouping costs more than it saves
_FEW_REASONS = 64


def _reason_table(model: LeadModel, contrib: np.ndarray, top: int, x: np.ndarray,
                  column, lang: str = "en") -> _Reasons:
    """Per row, the ``top`` contributions of largest magnitude, with feature, value and
    sentence. Missing values contribute too (LightGBM routes them): where the catalogue has
    words for a missing value they are the sentence, else the entry is passed over and the
    next-largest takes its place. Numeric values come from the model's matrix ``x``,
    categorical ones from ``column(name)``, the rows' own values (a category the model never
    saw is still named)."""
    feats, categorical = model.features, model.categorical_mask
    shown = np.abs(contrib[:, :-1])
    silent = [j for j, f in enumerate(feats) if _sentence(f, None, lang) is None]
    num = [j for j in silent if not categorical[j]]
    if num:
        part = shown[:, num]
        part[np.isnan(x[:, num])] = 0.0
        shown[:, num] = part
    for j in silent:
        if categorical[j]:
            shown[pd.isna(np.asarray(column(feats[j]), dtype=object)), j] = 0.0
    cols, contribs, keep = _pick(contrib, top, shown)
    r, s = np.nonzero(keep)  # row-major: rows ascending, a row's reasons in order
    jk = cols[r, s]
    if len(r) <= _FEW_REASONS:  # each its own entry, its sentence from the cache
        key = np.arange(len(r))
        names = [feats[j] for j in jk.tolist()]
        values = [plain_value(column(f)[i]) if categorical[j] else None if v != v else v
                  for i, j, f, v in zip(r.tolist(), jk.tolist(), names, x[r, jk].tolist(),
                                        strict=True)]
        sentences = [_sentence(f, v, lang) for f, v in zip(names, values, strict=True)]
    else:  # one entry per distinct (feature, value): values repeat across leads
        key = np.empty(len(r), dtype=np.intp)
        values: list = []
        sentences: list[str] = []
        order = np.argsort(jk, kind="stable")
        for sel in np.split(order, np.flatnonzero(np.diff(jk[order])) + 1):
            j = int(jk[sel[0]])
            if categorical[j]:
                raw, pos, u, inv = column(feats[j]), {}, [], []
                for i in r[sel].tolist():
                    v = plain_value(raw[i])
                    k = v if type(v) is str else (repr(v),)  # -0.0 apart from 0.0
                    if k not in pos:
                        pos[k] = len(u)
                        u.append(v)
                    inv.append(pos[k])
            else:  # by bit pattern: -0.0 stays -0.0, any NaN is missing
                bits, inv = np.unique(x[r[sel], j].view(np.int64), return_inverse=True)
                u = [None if v != v else v for v in bits.view(np.float64).tolist()]
            key[sel] = len(values) + np.asarray(inv)
            values += u
            sentences += _sentences(feats[j], u, lang)
    return _Reasons(model.name, feats, r, jk, key, values, sentences,
                    np.round(contribs[r, s], 6))


def _dedupe(tables: Sequence[_Reasons]) -> list[_Reasons]:
    """Each sentence once per row ("Last active 79.6 days ago" from three models reads
    once): the first stays, in the order of ``tables`` (the scorer's model order), then a
    model's own order (largest first). Numpy over the reasons: distinct sentences are
    numbered once, then (row, sentence) pairs keep their first occurrence."""
    ids: dict[str, int] = {}
    sids = [np.fromiter((ids.setdefault(x, len(ids)) for x in t.sentences), dtype=np.int64,
                        count=len(t.sentences))[t.key] for t in tables]
    if not sids or not sum(map(len, sids)):
        return list(tables)
    code = np.concatenate([t.row for t in tables]).astype(np.int64) * len(ids) \
        + np.concatenate(sids)
    _, first = np.unique(code, return_index=True)  # the first of each (row, sentence)
    if len(first) == len(code):
        return list(tables)
    keep = np.zeros(len(code), dtype=bool)
    keep[first] = True
    out, start = [], 0
    for t in tables:
        m = keep[start:start + len(t.row)]
        start += len(t.row)
        out.append(t if m.all() else dataclasses.replace(
            t, row=t.row[m], feature=t.feature[m], key=t.key[m],
            contribution=t.contribution[m]))
    return out


def _reason_dicts(tables: Sequence[_Reasons], n: int) -> list[list[dict]]:
    """The HTTP edge: per row the API's reason dicts, models in the order of ``tables``;
    ``sign`` is the contribution's ("-" for -0.0 too, as the text writes it)."""
    out: list[list[dict]] = [[] for _ in range(n)]
    for t in tables:
        name, feats, values, sentences = t.model, t.features, t.values, t.sentences
        for i, j, k, c in zip(t.row.tolist(), t.feature.tolist(), t.key.tolist(),
                              t.contribution.tolist(), strict=True):
            out[i].append({"model": name, "feature": feats[j], "value": values[k],
                           "contribution": c, "sign": "-" if math.copysign(1.0, c) < 0
                           else "+", "sentence": sentences[k]})
    return out


#: what ``json.dumps(..., ensure_ascii=False)`` writes for a string
_json_str = json.encoder.encode_basestring
#: Arrow's type of the reasons text: large (64-bit offsets), as a big frame's may pass 2 GB
_TEXT = pa.large_string()


@functools.lru_cache(maxsize=4096)
def _reason_head(model: str, feature: str) -> str:
    return f'{{"model": {_json_str(model)}, "feature": {_json_str(feature)}, "value": '


#: the JSON of a reason's sign, by ``signbit`` of its contribution
_SIGNS = pa.array(['"+"', '"-"'], _TEXT)


def _text(literal: str) -> pa.Scalar:
    return pa.scalar(literal, _TEXT)


def _reason_json(tables: Sequence[_Reasons], n: int) -> np.ndarray:
    """The file edge: per row the JSON text of the row's reason dicts (:func:`_reason_dicts`),
    the very bytes ``json.dumps(..., ensure_ascii=False)`` writes, ``"[]"`` without reasons.
    Built column-wise by Arrow, each distinct value and sentence written once: a per-reason
    Python loop was most of the nightly job's scoring time."""
    frepr = float.__repr__
    rows, texts = [], []
    for t in tables:
        if not len(t.row):
            continue
        values = [frepr(v) if type(v) is float and v - v == 0.0
                  else "null" if v is None
                  else _json_str(v) if isinstance(v, str) else json.dumps(v)
                  for v in t.values]
        key = pa.array(t.key)
        texts.append(pc.binary_join_element_wise(
            pa.array([_reason_head(t.model, f) for f in t.features], _TEXT).take(
                pa.array(t.feature)),
            pa.array(values, _TEXT).take(key), _text(', "contribution": '),
            pa.array(list(map(frepr, t.contribution.tolist())), _TEXT),
            _text(', "sign": '), _SIGNS.take(pa.array(np.signbit(t.contribution).view(np.int8))),
            _text(', "sentence": '), pa.array(list(map(_json_str, t.sentences)), _TEXT).take(key),
            _text("}"), _text("")))
        rows.append(t.row)
    if not rows:
        return np.full(n, "[]", dtype=object)
    rows = np.concatenate(rows)
    order = np.argsort(rows, kind="stable")  # by row; models keep the order they came in
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets),
                                     pa.concat_arrays(texts).take(pa.array(order)))
    joined = pc.binary_join_element_wise(_text("["), pc.binary_join(lists, _text(", ")),
                                         _text("]"), _text(""))
    return joined.to_numpy(zero_copy_only=False)


def _column(columns, name: str):
    """Column ``name`` by position: a frame's as an array, a request's list as it is."""
    col = columns[name]
    return col.to_numpy() if isinstance(col, pd.Series) else col


class MissingFeatures(KeyError):
    """Feature rows lack columns the models need: the online store (or the feature code) and
    the champion models disagree -- a deployment error, not a client's."""

    def __init__(self, names: Sequence[str]):
        super().__init__(f"feature rows lack {len(names)} model features, e.g. "
                         f"{', '.join(list(names)[:5])}")
        self.names = list(names)


class Scorer:
    """Scores feature rows with whichever of the models are loaded: the one core behind HTTP
    (:meth:`score_records`) and batch (:meth:`score`).

    ``models`` maps a model name (conversion, contact, churn, contact-slot) to its artifact; a
    model that is missing leaves its columns null, so a partial deployment still serves.
    ``lang`` is the language reasons are written in unless a call asks for another (the
    edges read the deployment's from ``LEADSCORE_LANG``).
    """

    #: requests with at least this many rows are split over ``split`` threads
    SPLIT_ROWS = 32
    #: frames with at least this many rows compute contributions ahead of the reasons
    AHEAD_ROWS = 2048
    _ahead: ThreadPoolExecutor | None = None
    _pool: ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()

    def __init__(self, models: dict[str, LeadModel], num_threads: int = 1,
                 rules: RulesFile | None = None, intent: IntentRules | None = None,
                 lang: str = language.EN):
        from leadscore.scoring.contact_policy import RulesFile
        from leadscore.scoring.intent import IntentRules, model_thresholds

        # one order whatever the caller's: it orders the reasons and ``model_versions``, which
        # a resumed or HTTP run must write exactly as the first run did
        rank = {m: i for i, m in enumerate(ALL_MODELS)}
        self.models = {n: models[n] for n in sorted(models, key=lambda m: (
            rank.get(m, len(rank)), m))}
        self.num_threads = num_threads
        #: contact rules for the slot search: given by the caller (the edges read
        #: LEADSCORE_CONTACT_RULES), the defaults otherwise; never read from the environment here
        self.rules = rules if rules is not None else RulesFile()
        #: intent-grade thresholds per dealer over the models' own (the edges read
        #: LEADSCORE_INTENT_GRADES); like the contact rules, never read from the environment here
        self.intent = intent if intent is not None else IntentRules()
        #: the reasons' language by default; like the rules, never read from the environment
        self.lang = language.check(lang, "lang")
        #: per horizon, the default threshold the models were registered with (None: none)
        self.intent_defaults = model_thresholds(self.models)
        slot_layout = {f.name for f in catalog.SLOT_CATALOG}  # laid out by the slot search
        self.required = sorted({f for m in self.models.values() for f in m.features
                                if f not in slot_layout})
        self._required_keys = frozenset(self.required)
        #: what the core reads of a request's records, as columns
        self._names = tuple(dict.fromkeys(
            ["dealer_id", "as_of", "tz", *(f for m in self.models.values() for f in m.features)]))
        #: what the feature job computes for these models (batch, inline HTTP): the
        #: catalogue plus the vocabulary features their training chose
        self.job_features = catalog.job_features(self.required)
        shared: dict[tuple, int] = {}  # models with one layout share one matrix
        self._layout = {n: shared.setdefault(m.layout, len(shared))
                        for n, m in self.models.items()}

    @property
    def versions(self) -> dict[str, str]:
        return {n: str(m.meta.get("version", "local")) for n, m in self.models.items()}

    @property
    def scoring_paths(self) -> dict[str, str]:
        """Per model: ``accelerated`` or ``lightgbm: <why>`` (decided on first call)."""
        return {n: m.scoring_path for n, m in self.models.items()}

    @classmethod
    def from_registry(cls, names: Iterable[str] = ALL_MODELS, alias: str = "champion",
                      num_threads: int = 1, rules: RulesFile | None = None,
                      intent: IntentRules | None = None, lang: str = language.EN) -> Scorer:
        from leadscore import registry

        loaded = {}
        for name in names:
            got = registry.load(name, alias)
            if got is None:
                log.warning("model leadscore-%s has no %s: its columns stay null", name, alias)
                continue
            loaded[name] = got[0]
        return cls(loaded, num_threads=num_threads, rules=rules, intent=intent, lang=lang)

    # -- the two faces ------------------------------------------------------------------------
    def score(self, feats: pd.DataFrame, *, reasons: int = 3,
              only: Iterable[str] | None = None, slots: int = 0,
              lang: str | None = None) -> pd.DataFrame:
        """One output row per input row, columns as DESIGN.md's output contract.

        ``reasons``: at most this many per model; 0 skips the contribution pass entirely
        (the fast batch path); ``only`` limits which models score (owners get churn risk,
        not a lead score); ``lang``: the reasons' language (None: the scorer's).
        """
        n = len(feats)
        cols, tables = self._core(feats, n, reasons, only, slots, None, self._lang(lang))
        out = pd.DataFrame({
            "lead_id": feats["lead_id"].astype(str).to_numpy(),
            "dealer_id": feats["dealer_id"].astype(str).to_numpy(),
            # the array itself: to_numpy() of zoned times makes a Timestamp object per row
            "as_of": pd.to_datetime(feats["as_of"], utc=True).array,
        })
        for col in OUTPUT_COLUMNS[3:-2]:
            v = cols.get(col)
            if v is not None and col == "best_slot_start":
                v = pd.to_datetime(v, utc=True)
            out[col] = v if v is not None else pd.Series([None] * n, dtype=object)
        out["reasons"] = _reason_json(tables, n)
        out["model_versions"] = json.dumps(self.versions)
        return out[list(OUTPUT_COLUMNS)]

    def score_records(self, records: Sequence[dict], *, reasons: int = 3, slots: int = 3,
                      split: int = 1, now: pd.Timestamp | None = None,
                      lang: str | None = None) -> list[dict]:
        """The API's result records for feature records; with ``split`` > 1 a big request is
        cut into slices scored side by side (LightGBM releases the GIL; rows are independent,
        so the numbers are the same as in one piece). ``now``: the request's reference time (its
        ``as_of`` when given, else the wall clock): no slot before it (rows from a snapshot
        taken hours ago still get slots after it). ``lang``: the reasons' language (None: the
        scorer's)."""
        lang = self._lang(lang)
        required = self._required_keys
        for rec in records:  # a missing column is a stale snapshot, not a missing value
            if not required <= rec.keys():
                raise MissingFeatures(sorted(required - rec.keys()))
        if split > 1 and len(records) >= self.SPLIT_ROWS:
            step = -(-len(records) // split)
            chunks = [records[i: i + step] for i in range(0, len(records), step)]
            parts = list(self._executor(split).map(
                lambda c: self._records(c, reasons, slots, now, lang), chunks))
            return [r for part in parts for r in part]
        return self._records(records, reasons, slots, now, lang)

    def _lang(self, lang: str | None) -> str:
        return self.lang if lang is None else language.check(lang, "lang")

    @classmethod
    def _ahead_pool(cls) -> ThreadPoolExecutor:
        with cls._pool_lock:
            if cls._ahead is None:
                cls._ahead = ThreadPoolExecutor(1, thread_name_prefix="leadscore-shap")
            return cls._ahead

    @classmethod
    def _executor(cls, k: int) -> ThreadPoolExecutor:
        with cls._pool_lock:
            if cls._pool is None or cls._pool._max_workers < k:
                cls._pool = ThreadPoolExecutor(k, thread_name_prefix="leadscore-split")
            return cls._pool

    def _records(self, records: Sequence[dict], reasons: int, slots: int,
                 now: pd.Timestamp | None = None, lang: str = language.EN) -> list[dict]:
        names, n = self._names, len(records)
        rows = zip(*(map(r.get, names) for r in records), strict=True)  # one pass
        columns = dict(zip(names, rows, strict=False))  # no records: no columns
        cols, tables = self._core(columns, n, reasons, None, slots, now, lang)
        reason_lists = _reason_dicts(tables, n)
        versions = self.versions

        def val(col: str, i: int):
            v = cols.get(col)
            if v is None:
                return None
            x = v[i]
            if x is None or (isinstance(x, float) and math.isnan(x)):
                return None
            return x.item() if isinstance(x, np.generic) else x

        starts = cols.get("best_slot_start")
        out = []
        for i, r in enumerate(records):
            start = None if starts is None or np.isnat(starts[i]) else iso_utc(starts[i])
            out.append({
                "lead_id": str(r["lead_id"]), "status": "ok", "dealer_id": str(r["dealer_id"]),
                "as_of": iso_utc(r["as_of"]), "p_convert": val("p_convert", i),
                "p_order_7d": val("p_order_7d", i), "p_order_15d": val("p_order_15d", i),
                "p_order_30d": val("p_order_30d", i), "p_order_90d": val("p_order_90d", i),
                "lead_score": val("lead_score", i), "intent_grade": val("intent_grade", i),
                "p_inquiry": val("p_inquiry", i), "contact_urgency": val("contact_urgency", i),
                "best_slot_start": start, "best_slot_local": val("best_slot_local", i),
                "best_channel": val("best_channel", i),
                "p_response": val("p_response", i), "p_churn": val("p_churn", i),
                "next_slots": cols["slots"][i] if cols.get("slots") is not None else [],
                "reasons": reason_lists[i], "model_versions": dict(versions),
            })
        return out

    # -- the core -----------------------------------------------------------------------------
    def _core(self, columns, n: int, reasons: int, only: Iterable[str] | None,
              slots: int, now: pd.Timestamp | None,
              lang: str = language.EN) -> tuple[dict, list[_Reasons]]:
        """Columns (arrays) of the output contract for ``n`` rows given as ``columns`` (name →
        column: a frame, or a request's records as lists), and each model's reasons in
        ``lang``, each sentence once per row; a model that does not score leaves its columns
        out."""
        keep = set(self.models) if only is None else set(only) & set(self.models)
        cols: dict = {}
        tables: list[_Reasons] = []
        if not n:
            return cols, tables
        column = functools.partial(_column, columns)
        matrices: dict[int, np.ndarray] = {}
        scored = [(name, model) for name, model in self.models.items()
                  if PROBA_COLUMN.get(name) is not None and name in keep]
        for name, model in scored:
            if self._layout[name] not in matrices:
                matrices[self._layout[name]] = model.matrix(columns)
        ahead = None
        if reasons > 0 and n >= self.AHEAD_ROWS:
            # TreeSHAP releases the GIL, writing reasons does not: while the reasons of one
            # model are written, the next models' contributions are computed beside them
            ahead = {name: self._ahead_pool().submit(
                model.contributions, matrices[self._layout[name]],
                num_threads=self.num_threads)
                for name, model in scored if name not in NO_REASONS}
        for name, model in scored:
            col = PROBA_COLUMN[name]
            x = matrices[self._layout[name]]
            if reasons > 0 and name not in NO_REASONS:
                contrib = (ahead[name].result() if ahead is not None
                           else model.contributions(x, num_threads=self.num_threads))
                tables.append(_reason_table(model, contrib, reasons, x, column, lang))
            # the score from the raw-score path whatever the reasons and the batch: the
            # contributions add up to it only to rounding, and their kernel depends on the
            # number of rows, so a lead would otherwise score an ulp apart alone and together
            raw = model.raw(x, num_threads=self.num_threads)
            p = model.calibrator(raw)
            cols[col] = p
            if name == "conversion":
                cols["lead_score"] = np.rint(p * 100).astype("int64")
            elif name == "contact":
                cols["contact_urgency"] = np.array([URGENCY[g] for g in model.grade(p)],
                                                   dtype=object)
        self._time_to_order(columns, cols)
        slot = self.models.get(SLOT_MODEL)
        if slot is not None and SLOT_MODEL in keep:
            self._recommend(slot, columns, n, cols, tables, reasons, slots, now, lang)
        return cols, _dedupe(tables)

    def _time_to_order(self, columns, cols: dict) -> None:
        """P(order within 7/15/30/90 days), non-decreasing in the horizon, and the intent
        grade from them; ``p_order_30d`` is ``p_convert`` itself. Horizons whose model did
        not score stay out (null)."""
        from leadscore.scoring import intent

        if "p_convert" not in cols:
            return
        q = {d: cols.get(c if d != 30 else "p_convert")
             for d, c in intent.ORDER_COLUMNS.items()}
        p = intent.monotone(q)
        for d, c in intent.ORDER_COLUMNS.items():
            if p[d] is not None:
                cols[c] = p[d]
            else:
                cols.pop(c, None)
        cols["intent_grade"] = intent.grade(
            p, [str(d) for d in columns["dealer_id"]], self.intent, self.intent_defaults)

    def _recommend(self, slot: LeadModel, columns, n: int, cols: dict, tables: list[_Reasons],
                   reasons: int, slots: int, now: pd.Timestamp | None,
                   lang: str = language.EN) -> None:
        """Best slot and channel in the next 72 hours, urgency deciding how soon; the
        channel's reason joins the models' reasons."""
        from leadscore.scoring.contact_policy import SLOT_FEATURES, recommend_matrix

        rec = recommend_matrix(
            slot, slot.matrix(columns, absent=SLOT_FEATURES), columns["as_of"],
            columns["tz"] if "tz" in columns else [DEFAULT_TZ] * n,
            [str(d) for d in columns["dealer_id"]], cols.get("contact_urgency"), self.rules,
            top=slots, reasons=reasons > 0, num_threads=self.num_threads, not_before=now,
            lang=lang)
        cols["best_slot_start"] = rec.best_slot_start
        cols["best_slot_local"] = rec.best_slot_local
        cols["best_channel"] = rec.best_channel
        cols["p_response"] = rec.p_response
        cols["slots"] = rec.slots
        if rec.reason is not None:
            rows = [i for i, c in enumerate(rec.best_channel.tolist()) if c is not None]
            tables.append(_Reasons(
                SLOT_MODEL, ("best_channel",), np.array(rows, dtype=np.int64),
                np.zeros(len(rows), dtype=np.intp), np.arange(len(rows)),
                [rec.best_channel[i] for i in rows], [rec.reason[i] for i in rows],
                # Python's rounding (the API's since the start), not numpy's
                np.array([round(float(rec.margin[i]), 6) for i in rows], dtype=np.float64)))


def iso_utc(v) -> str:
    """A timestamp (datetime, pandas Timestamp or ISO text) as the API writes it: UTC, ``Z``."""
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    elif isinstance(v, np.datetime64):  # naive, UTC (the slot search's starts)
        return v.astype("datetime64[us]").item().isoformat() + "Z"
    if isinstance(v, pd.Timestamp):
        v = v.tz_localize("UTC") if v.tzinfo is None else v.tz_convert("UTC")
        return v.isoformat().replace("+00:00", "Z")
    v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    return v.isoformat().replace("+00:00", "Z")


def iso_utc_column(values) -> pd.Series:
    """:func:`iso_utc` of a whole column at once (the CSV's times): ISO 8601 with ``Z``,
    microseconds only where there are some, missing times left missing."""
    t = pd.Series(pd.to_datetime(values, utc=True))
    us = t.dt.microsecond.fillna(0).astype("int64")
    frac = ("." + us.astype(str).str.zfill(6)).where(us > 0, "")
    return t.dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"
