"""The scorer core: feature rows in, scores with reasons out. HTTP and batch both call this.

It holds the champion models (as :class:`~leadscore.artifact.LeadModel`, loaded from the
registry) and turns a feature frame into the output contract of DESIGN.md. Reasons are exact
TreeSHAP contributions, the values ``pred_contrib`` and ``shap.TreeExplainer`` give, computed
only for the rows that ask for them. Each model scores by LightGBM's own predict or by the
compiled kernels of :mod:`leadscore.fast` where they were verified to give its numbers
(:attr:`LeadModel.scoring_path <leadscore.artifact.LeadModel.scoring_path>`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
    "p_order_90d", "lead_score", "intent_grade", "p_inquiry", "contact_urgency",
    "best_slot_start", "best_channel", "p_response", "p_churn", "reasons", "model_versions",
)
URGENCY = {"A": "now", "B": "within_3_days", "C": "nurture", "D": "nurture"}


def _plain(v) -> float | str | None:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (int, np.integer)):
        return float(v)
    return str(v)


def _top_columns(c: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``top`` largest values (largest first) and of the ``top``
    smallest (smallest first), ties to the lower column, as a stable sort orders them. A
    block takes ``top`` arg-max passes over its whole matrix each way (a row-by-row partial
    sort, ``argpartition`` along rows, took about three times as long)."""
    k = min(top, c.shape[1])
    if len(c) <= 4:  # a request's few rows: one stable sort each beats the passes
        order = np.argsort(-c, axis=1, kind="stable")
        rev = np.argsort(c, axis=1, kind="stable")
        return order[:, :k], rev[:, :k]
    rows = np.arange(len(c))[:, None]
    work = np.array(c, order="C")
    out = []
    for pick, done in ((np.argmax, -np.inf), (np.argmin, np.inf)):
        cols = np.empty((len(c), k), dtype=np.intp)
        for t in range(k):
            cols[:, t] = pick(work, axis=1)
            work[rows[:, 0], cols[:, t]] = done
        work[rows, cols] = c[rows, cols]  # as it was, for the other direction
        out.append(cols)
    return out[0], out[1]


@functools.lru_cache(maxsize=1 << 16)
def _sentence(feature: str, value: float | str | None) -> str:
    """An advisor sentence, written once per (feature, value) in the process: counts and
    shares repeat across leads and requests."""
    return catalog.feature(feature).sentence(value)


#: what ``json.dumps(..., ensure_ascii=False)`` writes for a string
_json_str = json.encoder.encode_basestring


@functools.lru_cache(maxsize=1 << 16)
def _sentence_json(feature: str, value: float | str | None) -> str:
    return _json_str(_sentence(feature, value))


@functools.lru_cache(maxsize=4096)
def _sentence_json_template(feature: str) -> str | None:
    """The feature's sentence template JSON-escaped, so that formatting a number into it
    (``value=v + 0.0``: -0.0 reads as 0) gives the sentence's JSON directly, a number's
    text needing no escaping; None when that does not give what ``Feature.sentence`` says.
    The batch writer formats ~100k distinct values per bucket: more than a cache of whole
    sentences holds."""
    feat = catalog.feature(feature)
    template = _json_str(feat.says)
    try:
        ok = all(template.format(value=v + 0.0) == _json_str(feat.sentence(v))
                 for v in (0.0, -0.0, -1.5, 0.25, 12345.678, math.inf))
    except (ValueError, KeyError, IndexError):
        ok = False
    return template if ok else None


@functools.lru_cache(maxsize=4096)
def _reason_head(model: str, feature: str) -> str:
    return f'{{"model": {_json_str(model)}, "feature": {_json_str(feature)}, "value": '


def _json_value(value: float | str | None) -> str:
    """A reason's value as ``json.dumps`` writes it (the loop in :func:`_reasons` inlines the
    common cases: None and finite floats)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _json_str(value)
    return float.__repr__(value) if math.isfinite(value) else json.dumps(value)


def _pick(contrib: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the columns of the ``top`` most positive then the ``top`` most negative
    contributions, their contributions, and which of them to keep (strictly positive for
    the first, strictly negative for the second)."""
    c = contrib[:, :-1]
    pos, neg = _top_columns(c, top)
    cols = np.concatenate([pos, neg], axis=1)
    k = pos.shape[1]
    contribs = c[np.arange(len(c))[:, None], cols]
    keep = np.concatenate([contribs[:, :k] > 0, contribs[:, k:] < 0], axis=1)
    return cols, contribs, keep


def _reasons(model: LeadModel, contrib: np.ndarray, top: int, x: np.ndarray,
             value_of) -> list[list[dict]]:
    """Per row, the ``top`` most positive then the ``top`` most negative contributions, each
    as feature, value, contribution and a sentence (the API's reason dicts). Missing values
    contribute too (LightGBM routes them); their sentence says so plainly. Numeric values
    come from the model's matrix ``x``; categorical ones from ``value_of(i, j)`` (row i's
    value of feature j: a category the model never saw is still named)."""
    n = len(contrib)
    if not n or top <= 0:
        return [[] for _ in range(n)]
    cols, contribs, keep = _pick(contrib, top)
    vals = x[np.arange(n)[:, None], cols].tolist()  # NaN (missing) becomes None below
    rounded = np.round(contribs, 6).tolist()
    cols_l, keep_l = cols.tolist(), keep.tolist()
    name, feats = model.name, model.features
    categorical = model.categorical_mask
    out = []
    for i in range(n):
        rs = []
        for j, ok, v, cv in zip(cols_l[i], keep_l[i], vals[i], rounded[i], strict=True):
            if not ok:
                continue
            if categorical[j]:
                v = _plain(value_of(i, j))
            elif v != v:
                v = None
            rs.append({"model": name, "feature": feats[j], "value": v, "contribution": cv,
                       "sentence": _sentence(feats[j], v)})
        out.append(rs)
    return out


#: Arrow's type of the reasons text: large (64-bit offsets), as a big frame's may pass 2 GB
_TEXT = pa.large_string()


def _text(literal: str) -> pa.Scalar:
    return pa.scalar(literal, _TEXT)


def _reasons_text(model: LeadModel, contrib: np.ndarray, top: int, x: np.ndarray,
                  value_of) -> tuple[np.ndarray, pa.Array]:
    """The reasons :func:`_reasons` selects, as JSON text: exactly the bytes
    ``json.dumps(..., ensure_ascii=False)`` writes of each dict, without the dicts. Returns
    the row of each reason and its text, rows ascending and a row's reasons in order.

    Written column-wise for the nightly job, where a per-reason Python loop was most of the
    scoring time: a value and its sentence are formatted once per distinct (feature, value)
    (counts and shares repeat across leads), the contributions in one ``map``, and the
    pieces joined by Arrow."""
    n = len(contrib)
    if not n or top <= 0:
        return np.empty(0, np.int64), pa.array([], _TEXT)
    cols, contribs, keep = _pick(contrib, top)
    r, s = np.nonzero(keep)  # row-major: rows ascending, a row's reasons in order
    jk = cols[r, s]
    ck = np.round(contribs[r, s], 6).tolist()
    feats, categorical = model.features, model.categorical_mask
    frepr = float.__repr__
    vtext = np.empty(len(r), dtype=object)
    stext = np.empty(len(r), dtype=object)
    order = np.argsort(jk, kind="stable")
    bounds = np.flatnonzero(np.diff(jk[order])) + 1
    for sel in np.split(order, bounds) if len(order) else ():
        j = int(jk[sel[0]])
        f = feats[j]
        if categorical[j]:  # a handful of features; the category's name is the value
            vs = [_plain(value_of(i, j)) for i in r[sel].tolist()]
            vtext[sel] = [_json_value(v) for v in vs]
            stext[sel] = [_sentence_json(f, v) for v in vs]
            continue
        # distinct by bit pattern: -0.0 stays -0.0 (its value reads "-0.0"), any NaN is missing
        bits, inv = np.unique(x[r[sel], j].view(np.int64), return_inverse=True)
        nums = bits.view(np.float64).tolist()
        vt = list(map(frepr, nums))
        template = _sentence_json_template(f)
        st = ([template.format(value=v + 0.0) for v in nums] if template is not None
              else [_sentence_json(f, v) for v in nums])
        for u in np.flatnonzero(~np.isfinite(bits.view(np.float64))).tolist():
            v = None if nums[u] != nums[u] else nums[u]  # NaN is missing: null
            vt[u], st[u] = _json_value(v), _sentence_json(f, v)
        vtext[sel] = np.array(vt, dtype=object)[inv]
        stext[sel] = np.array(st, dtype=object)[inv]
    heads = pa.array([_reason_head(model.name, f) for f in feats], _TEXT)
    text = pc.binary_join_element_wise(
        heads.take(pa.array(jk)), pa.array(vtext, _TEXT), _text(', "contribution": '),
        pa.array(list(map(frepr, ck)), _TEXT), _text(', "sentence": '),
        pa.array(stext, _TEXT), _text("}"), _text(""))
    return r, text


class _ReasonText:
    """A batch's reasons as one JSON list per row, from the models' reasons in the order
    they are added (each :func:`_reasons_text`'s rows ascending)."""

    def __init__(self, n: int):
        self.n = n
        self.rows: list[np.ndarray] = []
        self.texts: list = []

    def add(self, rows: np.ndarray, texts) -> None:
        self.rows.append(np.asarray(rows, dtype=np.int64))
        self.texts.append(texts)

    def column(self) -> np.ndarray:
        """Per row ``"[reason, reason, ...]"`` (``"[]"`` without reasons), as json.dumps
        writes the list."""
        if not self.rows:
            return np.full(self.n, "[]", dtype=object)
        rows = np.concatenate(self.rows)
        texts = pa.concat_arrays([t if isinstance(t, pa.Array) else pa.array(t, _TEXT)
                                  for t in self.texts])
        order = np.argsort(rows, kind="stable")  # by row; models keep the order they came in
        offsets = np.zeros(self.n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=self.n), out=offsets[1:])
        lists = pa.ListArray.from_arrays(pa.array(offsets), texts.take(pa.array(order)))
        joined = pc.binary_join_element_wise(_text("["), pc.binary_join(lists, _text(", ")),
                                             _text("]"), _text(""))
        return joined.to_numpy(zero_copy_only=False)


class MissingFeatures(KeyError):
    """Feature rows lack columns the models need: the online store (or the feature code) and
    the champion models disagree -- a deployment error, not a client's."""

    def __init__(self, names: Sequence[str]):
        super().__init__(f"feature rows lack {len(names)} model features, e.g. "
                         f"{', '.join(list(names)[:5])}")
        self.names = list(names)


class _FrameRows:
    """Feature rows held as a frame (batch, the store, training): the core's view of them."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame.reset_index(drop=True)
        self.n = len(frame)

    def column(self, name: str, default=None) -> list:
        if name in self.frame:
            return self.frame[name].astype("object").tolist()
        return [default] * self.n

    def matrix(self, model: LeadModel, absent: Sequence[str] = ()) -> np.ndarray:
        return model.matrix(self.frame, absent=absent)

    def _value_of(self, model: LeadModel):
        cats = {j: self.frame[f].to_numpy() for j, f in enumerate(model.features)
                if f in model.categories}
        return lambda i, j: cats[j][i]

    def reasons(self, model: LeadModel, contrib: np.ndarray, top: int,
                x: np.ndarray) -> list[list]:
        return _reasons(model, contrib, top, x, self._value_of(model))

    def reasons_text(self, model: LeadModel, contrib: np.ndarray, top: int,
                     x: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        return _reasons_text(model, contrib, top, x, self._value_of(model))


class _RecordRows(_FrameRows):
    """Feature rows held as records (dicts: the API's requests). Building a DataFrame and
    LightGBM's pandas conversion cost tens of milliseconds a request, the model a fraction of
    one; records go to the float matrix directly, with the same numbers."""

    def __init__(self, records: Sequence[dict]):
        self.records = records
        self.n = len(records)

    def column(self, name: str, default=None) -> list:
        return [r.get(name, default) for r in self.records]

    def matrix(self, model: LeadModel, absent: Sequence[str] = ()) -> np.ndarray:
        return model.matrix_records(self.records)

    def _value_of(self, model: LeadModel):
        recs, feats = self.records, model.features
        return lambda i, j: recs[i].get(feats[j])


class Scorer:
    """Scores feature rows with whichever of the models are loaded: the one core behind HTTP
    (:meth:`score_records`) and batch (:meth:`score`).

    ``models`` maps a model name (conversion, contact, churn, contact-slot) to its artifact; a
    model that is missing leaves its columns null, so a partial deployment still serves.
    """

    #: requests with at least this many rows are split over ``split`` threads
    SPLIT_ROWS = 32
    #: frames with at least this many rows compute contributions ahead of the reasons
    AHEAD_ROWS = 2048
    _ahead: ThreadPoolExecutor | None = None
    _pool: ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()

    def __init__(self, models: dict[str, LeadModel], num_threads: int = 1,
                 rules: RulesFile | None = None, intent: IntentRules | None = None):
        from leadscore.scoring.contact_policy import RulesFile
        from leadscore.scoring.intent import IntentRules, model_thresholds

        self.models = dict(models)
        self.num_threads = num_threads
        #: contact rules for the slot search: given by the caller (the edges read
        #: LEADSCORE_CONTACT_RULES), the defaults otherwise; never read from the environment here
        self.rules = rules if rules is not None else RulesFile()
        #: intent-grade thresholds per dealer over the models' own (the edges read
        #: LEADSCORE_INTENT_GRADES); like the contact rules, never read from the environment here
        self.intent = intent if intent is not None else IntentRules()
        #: per horizon, the default threshold the models were registered with (None: none)
        self.intent_defaults = model_thresholds(self.models)
        slot_layout = {f.name for f in catalog.SLOT_CATALOG}  # laid out by the slot search
        self.required = sorted({f for m in self.models.values() for f in m.features
                                if f not in slot_layout})
        self._required_keys = frozenset(self.required)
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
                      intent: IntentRules | None = None) -> Scorer:
        from leadscore import registry

        loaded = {}
        for name in names:
            got = registry.load(name, alias)
            if got is None:
                log.warning("model leadscore-%s has no %s: its columns stay null", name, alias)
                continue
            loaded[name] = got[0]
        return cls(loaded, num_threads=num_threads, rules=rules, intent=intent)

    # -- the two faces ------------------------------------------------------------------------
    def score(self, feats: pd.DataFrame, *, reasons: int = 3,
              only: Iterable[str] | None = None, slots: int = 0) -> pd.DataFrame:
        """One output row per input row, columns as DESIGN.md's output contract.

        ``reasons=0`` skips the contribution pass entirely (the fast batch path); ``only``
        limits which models score (owners get churn risk, not a lead score).
        """
        n = len(feats)
        cols = self._core(_FrameRows(feats), reasons, only, slots, None, as_json=True)
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
        out["reasons"] = cols["reasons"].column()
        out["model_versions"] = json.dumps(self.versions)
        return out[list(OUTPUT_COLUMNS)]

    def score_records(self, records: Sequence[dict], *, reasons: int = 3, slots: int = 3,
                      split: int = 1, now: pd.Timestamp | None = None) -> list[dict]:
        """The API's result records for feature records; with ``split`` > 1 a big request is
        cut into slices scored side by side (LightGBM releases the GIL; rows are independent,
        so the numbers are the same as in one piece). ``now``: no slot before it (rows from a
        snapshot taken hours ago still get slots in the future)."""
        required = self._required_keys
        for rec in records:  # a missing column is a stale snapshot, not a missing value
            if not required <= rec.keys():
                raise MissingFeatures(sorted(required - rec.keys()))
        if split > 1 and len(records) >= self.SPLIT_ROWS:
            step = -(-len(records) // split)
            chunks = [records[i: i + step] for i in range(0, len(records), step)]
            parts = list(self._executor(split).map(
                lambda c: self._records(c, reasons, slots, now), chunks))
            return [r for part in parts for r in part]
        return self._records(records, reasons, slots, now)

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
                 now: pd.Timestamp | None = None) -> list[dict]:
        cols = self._core(_RecordRows(records), reasons, None, slots, now)
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
                "best_slot_start": start, "best_channel": val("best_channel", i),
                "p_response": val("p_response", i), "p_churn": val("p_churn", i),
                "next_slots": cols["slots"][i] if cols.get("slots") is not None else [],
                "reasons": cols["reasons"][i], "model_versions": dict(versions),
            })
        return out

    # -- the core -----------------------------------------------------------------------------
    def _core(self, rows: _FrameRows, reasons: int, only: Iterable[str] | None,
              slots: int, now: pd.Timestamp | None, as_json: bool = False) -> dict:
        """Columns (arrays) of the output contract for ``rows``; a model that does not score
        leaves its columns out. ``as_json``: reasons as a :class:`_ReasonText` of JSON
        (batch output), not lists of dicts (HTTP)."""
        keep = set(self.models) if only is None else set(only) & set(self.models)
        n = rows.n
        cols: dict = {"reasons": _ReasonText(n) if as_json else [[] for _ in range(n)]}
        if not n:
            return cols
        matrices: dict[int, np.ndarray] = {}
        scored = [(name, model) for name, model in self.models.items()
                  if PROBA_COLUMN.get(name) is not None and name in keep]
        for name, model in scored:
            if self._layout[name] not in matrices:
                matrices[self._layout[name]] = rows.matrix(model)
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
                raw = contrib.sum(axis=1)
                if as_json:
                    cols["reasons"].add(*rows.reasons_text(model, contrib, reasons, x))
                else:
                    for acc, rs in zip(cols["reasons"], rows.reasons(model, contrib, reasons, x),
                                       strict=True):
                        acc.extend(rs)
            else:
                raw = model.raw(x, num_threads=self.num_threads)
            p = model.calibrator(raw)
            cols[col] = p
            if name == "conversion":
                cols["lead_score"] = np.rint(p * 100).astype("int64")
            elif name == "contact":
                cols["contact_urgency"] = np.array([URGENCY[g] for g in model.grade(p)],
                                                   dtype=object)
        self._time_to_order(rows, cols)
        slot = self.models.get(SLOT_MODEL)
        if slot is not None and SLOT_MODEL in keep:
            self._recommend(slot, rows, cols, reasons, slots, now, as_json)
        return cols

    def _time_to_order(self, rows: _FrameRows, cols: dict) -> None:
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
            p, [str(d) for d in rows.column("dealer_id")], self.intent, self.intent_defaults)

    def _recommend(self, slot: LeadModel, rows: _FrameRows, cols: dict, reasons: int,
                   slots: int, now: pd.Timestamp | None, as_json: bool = False) -> None:
        """Best slot and channel in the next 72 hours, urgency deciding how soon."""
        from leadscore.scoring.contact_policy import SLOT_FEATURES, recommend_matrix

        rec = recommend_matrix(
            slot, rows.matrix(slot, absent=SLOT_FEATURES), rows.column("as_of"),
            rows.column("tz", DEFAULT_TZ), [str(d) for d in rows.column("dealer_id")],
            cols.get("contact_urgency"), self.rules, top=slots, reasons=reasons > 0,
            num_threads=self.num_threads, not_before=now)
        cols["best_slot_start"] = rec.best_slot_start
        cols["best_channel"] = rec.best_channel
        cols["p_response"] = rec.p_response
        cols["slots"] = rec.slots
        if rec.reason is not None:
            dicts = {i: {"model": SLOT_MODEL, "feature": "best_channel",
                         "value": rec.best_channel[i],
                         "contribution": round(float(rec.margin[i]), 6),
                         "sentence": rec.reason[i]}
                     for i in range(rows.n) if rec.best_channel[i] is not None}
            if as_json:
                cols["reasons"].add(np.fromiter(dicts, np.int64, len(dicts)),
                                    [json.dumps(r, ensure_ascii=False) for r in dicts.values()])
            else:
                for i, r in dicts.items():
                    cols["reasons"][i].append(r)


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
