"""What a serving process holds: the current scorer, the online store, the key ring.

Models come from the BentoML model store, imported from the MLflow registry's ``champion``
alias. A watcher re-resolves the alias every ``reload_seconds``; a new champion is loaded beside
the old one and swapped in with one assignment, so requests in flight finish on the old models
and none fail during the change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from leadscore import contract
from leadscore.artifact import LeadModel
from leadscore.features import job
from leadscore.serving.auth import KeyRing
from leadscore.serving.scorer import (
    ALL_MODELS,
    Scorer,
)
from leadscore.serving.store import OnlineStore

log = logging.getLogger(__name__)

BENTO_PREFIX = "leadscore-"


def _bento_tag(name: str, version: str) -> str:
    return f"{BENTO_PREFIX}{name}:v{version}"


#: loaded artifacts by BentoML tag: a periodic reload that finds the same champions costs
#: registry look-ups only, not re-parsing every model (which holds the GIL for tens of ms)
_LOADED: dict[str, LeadModel] = {}
#: a worker without models tries to load them again this often (see Runtime.retry_seconds)
NOT_READY_RETRY_SECONDS = 5.0


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


def _load_bento(bm) -> LeadModel:
    """The artifact of a BentoML store model, parsed once per tag and path."""
    from leadscore.artifact import find_artifact_dir

    key = f"{bm.tag}@{bm.path}"
    lm = _LOADED.get(key)
    if lm is None:
        lm = LeadModel.load(find_artifact_dir(Path(bm.path)))
        lm.meta = {**lm.meta, "version": str(bm.tag.version).lstrip("v")}
        _LOADED[key] = lm
    return lm


def _bento_model(name: str, version: str | None, alias: str):
    """The model of that registry version from the BentoML store, imported first if needed;
    returns the store's model and its loaded artifact.

    BentoML copies an imported model into its store file by file, so a worker starting beside
    one that is importing can find the model listed but not yet whole (and a crash mid-import
    leaves it so). A model that will not load is therefore looked at again under the import
    lock, which an importing worker holds until its copy is complete; if it still will not
    load, it is deleted and imported again. A store without the lock file (a built Bento on a
    read-only disk) is only written to when a model is missing or broken."""
    import bentoml

    from leadscore import registry

    if version is None:
        bm = bentoml.models.get(f"{BENTO_PREFIX}{name}:latest")
        return bm, _load_bento(bm)
    tag = _bento_tag(name, version)
    try:
        bm = bentoml.models.get(tag)
        return bm, _load_bento(bm)
    except bentoml.exceptions.NotFound:
        pass
    except Exception as e:  # half copied by another worker, or left by a crash
        log.info("%s did not load (%s); looking again under the import lock", tag,
                 type(e).__name__)
    with _import_lock():
        try:
            bm = bentoml.models.get(tag)  # another worker imported it meanwhile
            return bm, _load_bento(bm)
        except bentoml.exceptions.NotFound:
            pass
        except Exception as e:  # nobody is importing it: it is broken
            log.warning("%s in the BentoML store is incomplete (%s); importing it again", tag,
                        type(e).__name__)
            bentoml.models.delete(tag)
        bm = bentoml.mlflow.import_model(
            tag, model_uri=f"models:/{registry.registered_name(name)}/{version}",
            labels={"alias": alias, "source": "mlflow-registry"},
        )
        return bm, _load_bento(bm)


def load_from_bento_store(names=ALL_MODELS, alias: str = "champion",
                          num_threads: int = 1) -> Scorer:
    """Resolve each champion in MLflow, import it into the BentoML store once, load it.

    When the registry is unreachable or has no champion (a built Bento deployed on its own),
    the newest model of that name already in the BentoML store is used.
    """
    import bentoml

    from leadscore import registry

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
            _, models[name] = _bento_model(name, version, alias)
        except bentoml.exceptions.NotFound:
            log.warning("no %s model for %s: its columns stay null", alias, name)
    current = {id(m) for m in models.values()}
    for key in list(_LOADED):  # forget superseded versions of the models just loaded
        if key.split(":")[0].removeprefix(BENTO_PREFIX) in models and id(_LOADED[key]) \
                not in current:
            del _LOADED[key]
    return Scorer(models, num_threads=num_threads)


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
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        s = self.scorer
        return s is not None and bool(s.models)

    def current(self) -> Scorer | None:
        """The scorer to use for one request. Read once per request, so a reload mid-request
        cannot mix model versions."""
        return self.scorer

    def reload(self) -> bool:
        """Load the current champions; swap them in if any version changed."""
        with self._lock:
            new = self.loader()
            old = self.scorer
            if old is not None and old.versions == new.versions:
                return False
            for m in new.models.values():  # ready before the swap: no slow first request
                m.warm_up()
            self.scorer = new  # one reference swap: in-flight requests keep the old scorer
            log.info("models now %s (were %s)", new.versions, old.versions if old else None)
            if self.on_swap is not None:
                self.on_swap()
            return True

    @property
    def retry_seconds(self) -> float:
        """How soon the watcher tries again while there are no models: a worker that could
        not load them at start (registry down, store busy) retries at least this often, even
        with reloading off, since until it has models it answers 503 to its share of the
        clients."""
        if self.reload_seconds > 0:
            return min(self.reload_seconds, NOT_READY_RETRY_SECONDS)
        return NOT_READY_RETRY_SECONDS

    def start_watcher(self) -> None:
        """Re-resolve the champions every ``reload_seconds`` (never when <= 0), and every
        :attr:`retry_seconds` while not ready."""
        if self._thread is not None or (self.reload_seconds <= 0 and self.ready):
            return

        def loop():
            while not self._stop.wait(self.reload_seconds if self.ready
                                      else self.retry_seconds):
                try:
                    self.reload()
                except Exception:  # keep serving the models we have
                    log.exception("model reload failed; keeping the current models")
                if self.reload_seconds <= 0 and self.ready:
                    return

        self._thread = threading.Thread(target=loop, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def features_from_inline(leads: pd.DataFrame, events: pd.DataFrame, contacts: pd.DataFrame,
                         as_of: pd.Timestamp, clock: pd.Timestamp
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch feature job, run on the request's own rows: identical features by design.
    The rows pass the batch's row rules first (``clock``: the latest time a row may carry);
    returns the features and the rows left out (:func:`contract.register_frames`)."""
    con = contract.connect(threads=1)
    try:
        bad = contract.register_frames(con, leads, events, contacts, clock=clock)
        return job.to_pandas(job.compute(con, [as_of])), bad
    finally:
        con.close()


def now_utc() -> pd.Timestamp:
    """Now, in whole microseconds (the resolution of the stored timestamps)."""
    return pd.Timestamp(time.time_ns() // 1000, unit="us", tz="UTC")
