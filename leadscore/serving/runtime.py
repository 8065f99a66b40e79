"""What a serving process holds: the current scorer, the online store, the key ring.

Models come from the BentoML model store, imported from the MLflow registry's ``champion``
alias. A watcher re-resolves the alias every ``reload_seconds``; a new champion is loaded beside
the old one and swapped in with one assignment, so requests in flight finish on the old models
and none fail during the change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import contract
from leadscore.artifact import LeadModel
from leadscore.features import catalog, job
from leadscore.serving.auth import KeyRing
from leadscore.serving.scorer import (
    ALL_MODELS,
    PROBA_COLUMN,
    SLOT_MODEL,
    URGENCY,
    Reason,
    Scorer,
    _plain,
)
from leadscore.serving.store import OnlineStore

log = logging.getLogger(__name__)

BENTO_PREFIX = "leadscore-"


def _bento_tag(name: str, version: str) -> str:
    return f"{BENTO_PREFIX}{name}:v{version}"


#: loaded artifacts by BentoML tag: a periodic reload that finds the same champions costs
#: registry look-ups only, not re-parsing every model (which holds the GIL for tens of ms)
_LOADED: dict[str, LeadModel] = {}


@contextlib.contextmanager
def _import_lock():
    """Serialise imports into the BentoML store across worker processes: two workers starting
    together would otherwise import the same tag at once and one of them fail."""
    import fcntl

    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".leadscore-import.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _bento_model(name: str, version: str | None, alias: str):
    import bentoml

    from leadscore import registry

    if version is None:
        return bentoml.models.get(f"{BENTO_PREFIX}{name}:latest")
    tag = _bento_tag(name, version)
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        pass
    with _import_lock():
        try:
            return bentoml.models.get(tag)  # another worker imported it meanwhile
        except bentoml.exceptions.NotFound:
            return bentoml.mlflow.import_model(
                tag, model_uri=f"models:/{registry.registered_name(name)}/{version}",
                labels={"alias": alias, "source": "mlflow-registry"},
            )


def load_from_bento_store(names=ALL_MODELS, alias: str = "champion",
                          num_threads: int = 1) -> Scorer:
    """Resolve each champion in MLflow, import it into the BentoML store once, load it.

    When the registry is unreachable or has no champion (a built Bento deployed on its own),
    the newest model of that name already in the BentoML store is used.
    """
    import bentoml

    from leadscore import registry
    from leadscore.artifact import find_artifact_dir

    models = {}
    for name in names:
        version = None
        try:
            res = registry.resolve(name, alias)
            version = res.version if res else None
        except Exception as e:  # registry down: fall back to what the store has
            log.warning("registry unreachable for %s (%s); using the BentoML store", name,
                        type(e).__name__)
        try:
            bm = _bento_model(name, version, alias)
        except bentoml.exceptions.NotFound:
            log.warning("no %s model for %s: its columns stay null", alias, name)
            continue
        key = f"{bm.tag}@{bm.path}"
        lm = _LOADED.get(key)
        if lm is None:
            lm = LeadModel.load(find_artifact_dir(Path(bm.path)))
            lm.meta = {**lm.meta, "version": str(bm.tag.version).lstrip("v")}
            _LOADED[key] = lm
        models[name] = lm
    current = {id(m) for m in models.values()}
    for key in list(_LOADED):  # forget superseded versions of the models just loaded
        if key.split(":")[0].removeprefix(BENTO_PREFIX) in models and id(_LOADED[key]) \
                not in current:
            del _LOADED[key]
    return Scorer(models, num_threads=num_threads)


def iso_utc(v) -> str:
    """A timestamp (datetime, pandas Timestamp or ISO text) as the API writes it: UTC, ``Z``."""
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if isinstance(v, pd.Timestamp):
        v = v.tz_localize("UTC") if v.tzinfo is None else v.tz_convert("UTC")
        return v.isoformat().replace("+00:00", "Z")
    v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    return v.isoformat().replace("+00:00", "Z")


def _to_float(v) -> float:
    """What ``pd.to_numeric(errors="coerce")`` + float64 makes of one odd value."""
    s = pd.to_numeric(pd.Series([v], dtype=object), errors="coerce").astype("float64")
    return float(s.iloc[0])


class _Compiled:
    """One model ready for plain feature records: column order, and category → code maps
    that reproduce what :meth:`LeadModel.frame` and LightGBM's pandas conversion do (training
    levels only, recoded to the booster's ``pandas_categorical``; anything else missing)."""

    def __init__(self, name: str, model: LeadModel):
        self.name = name
        self.model = model
        self.features = list(model.features)
        cat_feats = [f for f in self.features if f in model.categories]
        levels = model.booster.pandas_categorical or []
        if len(levels) != len(cat_feats):
            raise ValueError(f"{name}: booster categories do not match the artifact's")
        codes: dict[str, dict] = {}
        for f, lv in zip(cat_feats, levels, strict=True):
            pos = {v: float(i) for i, v in enumerate(lv)}
            codes[f] = {v: pos[v] for v in model.categories[f] if v in pos}
        self.codes = [codes.get(f) for f in self.features]
        self.says = [catalog.BY_NAME[f] for f in self.features]
        #: models with the same layout share one matrix per request
        self.layout = (tuple(self.features),
                       tuple(None if c is None else tuple(c.items()) for c in self.codes))

    def matrix(self, records: Sequence[dict]) -> np.ndarray:
        nan = math.nan
        spec = list(zip(self.features, self.codes, strict=True))
        rows = []
        for rec in records:
            row = []
            for f, codes in spec:
                v = rec.get(f)
                if v is None:
                    row.append(nan)
                elif codes is not None:
                    try:
                        row.append(codes.get(v, nan))
                    except TypeError:  # unhashable: not a level
                        row.append(nan)
                elif type(v) is float:
                    row.append(v)
                elif type(v) is int and -(2**53) <= v <= 2**53:
                    row.append(float(v))
                else:
                    row.append(_to_float(v))
            rows.append(row)
        return np.array(rows, dtype=np.float64).reshape(len(records), len(spec))

    def reasons(self, records: Sequence[dict], contrib: np.ndarray, top: int
                ) -> list[list[dict]]:
        """As :func:`leadscore.serving.scorer.reasons_for`, from records."""
        out = []
        c = contrib[:, :-1]
        for i, rec in enumerate(records):
            ci = c[i]
            order = np.argsort(-ci)
            pos = [j for j in order[:top] if ci[j] > 0]
            neg = [j for j in order[::-1][:top] if ci[j] < 0]
            rs = []
            for j in (*pos, *neg):
                v = _plain(rec.get(self.features[j]))
                rs.append(Reason(self.name, self.features[j], v, float(ci[j]),
                                 self.says[j].sentence(v)).as_dict())
            out.append(rs)
        return out


class MissingFeatures(KeyError):
    """Feature rows lack columns the models need: the online store (or the feature code) and
    the champion models disagree -- a deployment error, not a client's."""

    def __init__(self, names: Sequence[str]):
        super().__init__(f"feature rows lack {len(names)} model features, e.g. "
                         f"{', '.join(list(names)[:5])}")
        self.names = list(names)


class RecordScorer:
    """:meth:`Scorer.score` for a few feature records (dicts), without pandas.

    Building a one-row DataFrame and LightGBM's pandas conversion cost tens of milliseconds per
    request; the model itself a fraction of one. This twin of the scorer fills the float matrix
    LightGBM sees directly and returns the API's result records: the same numbers bit for bit
    (a test holds it to ``Scorer.score`` over the whole store). Built once per loaded scorer.
    """

    #: requests with at least this many rows are split over ``batch_threads`` threads
    BATCH_ROWS = 32
    _pool: ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()

    def __init__(self, scorer: Scorer, batch_threads: int = 1):
        self.scorer = scorer
        self.versions = scorer.versions
        self.num_threads = scorer.num_threads
        self.batch_threads = max(1, batch_threads)
        self._models = [(name, PROBA_COLUMN[name], _Compiled(name, m))
                        for name, m in scorer.models.items() if name in PROBA_COLUMN]
        self.required = sorted({f for _, _, cm in self._models for f in cm.features})
        #: about a millisecond a lead: fine to run on the event loop (the slot search is not)
        self.cheap = SLOT_MODEL not in scorer.models

    @classmethod
    def build(cls, scorer: Scorer, batch_threads: int = 1) -> RecordScorer | None:
        """The twin, or None when a model cannot be compiled (callers use ``Scorer.score``)."""
        try:
            return cls(scorer, batch_threads=batch_threads)
        except Exception as e:
            log.warning("no fast path for these models (%s); scoring through pandas", e)
            return None

    def score(self, records: Sequence[dict], reasons: int = 3,
              frame: pd.DataFrame | None = None) -> list[dict]:
        """Result records for feature records; ``frame``, when the caller has the same rows
        as a frame already, spares building one for the slot search.

        Rows are independent (LightGBM scores and explains each row on its own), so a big
        request is cut into ``batch_threads`` slices scored side by side: LightGBM releases
        the GIL, and the numbers are the same as in one piece."""
        k = self.batch_threads
        if k > 1 and len(records) >= self.BATCH_ROWS:
            step = -(-len(records) // k)
            chunks = [records[i: i + step] for i in range(0, len(records), step)]
            pool = self._executor(k)
            parts = list(pool.map(lambda c: self._score(c, reasons, None), chunks))
            return [r for part in parts for r in part]
        return self._score(records, reasons, frame)

    @classmethod
    def _executor(cls, k: int) -> ThreadPoolExecutor:
        with cls._pool_lock:
            if cls._pool is None or cls._pool._max_workers < k:
                cls._pool = ThreadPoolExecutor(k, thread_name_prefix="leadscore-batch")
            return cls._pool

    def _score(self, records: Sequence[dict], reasons: int,
               frame: pd.DataFrame | None) -> list[dict]:
        out = [{"lead_id": str(r["lead_id"]), "status": "ok", "dealer_id": str(r["dealer_id"]),
                "as_of": iso_utc(r["as_of"]), "p_convert": None, "lead_score": None,
                "grade": None, "p_inquiry": None, "contact_urgency": None,
                "best_slot_start": None, "best_channel": None, "p_response": None,
                "p_churn": None, "reasons": [], "model_versions": dict(self.versions)}
               for r in records]
        if not records:
            return out
        for rec in records:  # a missing column is a stale snapshot, not a missing value
            if any(f not in rec for f in self.required):
                raise MissingFeatures(sorted(f for f in self.required if f not in rec))
        threads = self.num_threads
        matrices: dict[tuple, np.ndarray] = {}
        for name, col, cm in self._models:
            x = matrices.get(cm.layout)
            if x is None:
                x = matrices[cm.layout] = cm.matrix(records)
            booster = cm.model.booster
            if reasons > 0:
                contrib = booster.predict(x, pred_contrib=True, num_threads=threads)
                raw = contrib.sum(axis=1)
            else:
                contrib = None
                raw = booster.predict(x, raw_score=True, num_threads=threads)
            p = cm.model.calibrator(raw)
            for i, o in enumerate(out):
                o[col] = float(p[i])
            if name == "conversion":
                scores = np.rint(p * 100).astype("int64")
                for o, s, g in zip(out, scores, cm.model.grade(p), strict=True):
                    o["lead_score"], o["grade"] = int(s), str(g)
            elif name == "contact":
                for o, g in zip(out, cm.model.grade(p), strict=True):
                    o["contact_urgency"] = URGENCY[str(g)]
            if contrib is not None:
                for o, rs in zip(out, cm.reasons(records, contrib, reasons), strict=True):
                    o["reasons"].extend(rs)
        slot = self.scorer.models.get(SLOT_MODEL)
        if slot is not None:
            self._recommend(slot, records, out, frame)
        return out

    def _recommend(self, slot: LeadModel, records: Sequence[dict], out: list[dict],
                   frame: pd.DataFrame | None) -> None:
        """As ``Scorer._recommend`` (the slot search works on a frame of the rows)."""
        from leadscore.serving.contact_policy import recommend

        feats = records_frame(records) if frame is None else frame
        urgency = np.array([o["contact_urgency"] for o in out], dtype=object)
        recs = recommend(slot, feats, urgency, self.scorer.rules, num_threads=self.num_threads)
        for o, r in zip(out, recs, strict=True):
            start = r["best_slot_start"]
            o["best_slot_start"] = None if start is None or pd.isna(start) else iso_utc(start)
            o["best_channel"] = r["best_channel"]
            p = r["p_response"]
            o["p_response"] = None if p is None or p != p else float(p)
            if r["best_channel"] is not None:
                o["reasons"].append({
                    "model": SLOT_MODEL, "feature": "best_channel", "value": r["best_channel"],
                    "contribution": round(r.get("margin", 0.0), 6), "sentence": r["reason"],
                })


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Feature records as the frame the store's rows make (``as_of`` as UTC timestamps)."""
    df = pd.DataFrame(list(records))
    if not df.empty:
        df["as_of"] = pd.to_datetime(df["as_of"], utc=True)
    return df


def frame_records(scored: pd.DataFrame) -> list[dict]:
    """``Scorer.score`` output as the API's result records (the pandas path)."""
    out = []
    for rec in scored.to_dict(orient="records"):
        rec = {k: (None if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v))
                   else v) for k, v in rec.items()}
        o = {"lead_id": rec["lead_id"], "status": "ok"}
        for k, v in rec.items():
            if k in ("as_of", "best_slot_start") and v is not None:
                v = iso_utc(v)
            elif k in ("reasons", "model_versions"):
                v = json.loads(v)
            elif isinstance(v, np.generic):
                v = v.item()
            o[k] = v
        out.append(o)
    return out


class Runtime:
    def __init__(
        self,
        store: OnlineStore,
        keys: KeyRing,
        loader: Callable[[], Scorer] = load_from_bento_store,
        reload_seconds: float = 30.0,
        on_swap: Callable[[], None] | None = None,
        batch_threads: int = 1,
    ):
        self.store = store
        self.keys = keys
        self.loader = loader
        self.reload_seconds = reload_seconds
        self.on_swap = on_swap
        self.batch_threads = batch_threads
        self.scorer: Scorer | None = None
        self._fast: tuple[Scorer, RecordScorer | None] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        s = self.scorer
        return s is not None and bool(s.models)

    def current(self) -> tuple[Scorer | None, RecordScorer | None]:
        """The scorer to use for one request, and its pandas-free twin (None when it has
        none). Read once per request, so a reload mid-request cannot mix model versions."""
        scorer = self.scorer
        if scorer is None:
            return None, None
        fast = self._fast
        if fast is None or fast[0] is not scorer:  # compiled once per scorer
            fast = self._fast = (scorer, RecordScorer.build(scorer, self.batch_threads))
        return scorer, fast[1]

    def reload(self) -> bool:
        """Load the current champions; swap them in if any version changed."""
        with self._lock:
            new = self.loader()
            old = self.scorer
            if old is not None and old.versions == new.versions:
                return False
            self._fast = (new, RecordScorer.build(new, self.batch_threads))  # ready before swap
            self.scorer = new  # one reference swap: in-flight requests keep the old scorer
            log.info("models now %s (were %s)", new.versions, old.versions if old else None)
            if self.on_swap is not None:
                self.on_swap()
            return True

    def start_watcher(self) -> None:
        if self._thread is not None or self.reload_seconds <= 0:
            return

        def loop():
            while not self._stop.wait(self.reload_seconds):
                try:
                    self.reload()
                except Exception:  # keep serving the models we have
                    log.exception("model reload failed; keeping the current models")

        self._thread = threading.Thread(target=loop, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def features_from_inline(leads: pd.DataFrame, events: pd.DataFrame, contacts: pd.DataFrame,
                         as_of: pd.Timestamp) -> pd.DataFrame:
    """The batch feature job, run on the request's own rows: identical features by design."""
    con = contract.connect(threads=1)
    try:
        contract.register_frames(con, leads, events, contacts)
        return job.to_pandas(job.compute(con, [as_of]))
    finally:
        con.close()


def now_utc() -> pd.Timestamp:
    """Now, in whole microseconds (the resolution of the stored timestamps)."""
    return pd.Timestamp(time.time_ns() // 1000, unit="us", tz="UTC")
