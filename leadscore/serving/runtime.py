"""What a serving process holds: the current scorer, the online store, the key ring.

Models come from the BentoML model store, imported from the MLflow registry's ``champion``
alias. A watcher re-resolves the alias every ``reload_seconds``; a new champion is loaded beside
the old one and swapped in with one assignment, so requests in flight finish on the old models
and none fail during the change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from leadscore import contract
from leadscore.features import job
from leadscore.serving.auth import KeyRing
from leadscore.serving.scorer import PROBA_COLUMN, Scorer
from leadscore.serving.store import OnlineStore

log = logging.getLogger(__name__)

BENTO_PREFIX = "leadscore-"


def _bento_tag(name: str, version: str) -> str:
    return f"{BENTO_PREFIX}{name}:v{version}"


def load_from_bento_store(names=tuple(PROBA_COLUMN), alias: str = "champion",
                          num_threads: int = 1) -> Scorer:
    """Resolve each champion in MLflow, import it into the BentoML store once, load it.

    When the registry is unreachable or has no champion (a built Bento deployed on its own),
    the newest model of that name already in the BentoML store is used.
    """
    import bentoml

    from leadscore import registry
    from leadscore.artifact import LeadModel, find_artifact_dir

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
            if version is not None:
                tag = _bento_tag(name, version)
                try:
                    bm = bentoml.models.get(tag)
                except bentoml.exceptions.NotFound:
                    bm = bentoml.mlflow.import_model(
                        tag, model_uri=f"models:/{registry.registered_name(name)}/{version}",
                        labels={"alias": alias, "source": "mlflow-registry"},
                    )
            else:
                bm = bentoml.models.get(f"{BENTO_PREFIX}{name}:latest")
        except bentoml.exceptions.NotFound:
            log.warning("no %s model for %s: its columns stay null", alias, name)
            continue
        lm = LeadModel.load(find_artifact_dir(Path(bm.path)))
        lm.meta = {**lm.meta, "version": str(bm.tag.version).lstrip("v")}
        models[name] = lm
    return Scorer(models, num_threads=num_threads)


class Runtime:
    def __init__(
        self,
        store: OnlineStore,
        keys: KeyRing,
        loader: Callable[[], Scorer] = load_from_bento_store,
        reload_seconds: float = 30.0,
    ):
        self.store = store
        self.keys = keys
        self.loader = loader
        self.reload_seconds = reload_seconds
        self.scorer: Scorer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        s = self.scorer
        return s is not None and bool(s.models)

    def reload(self) -> bool:
        """Load the current champions; swap them in if any version changed."""
        with self._lock:
            new = self.loader()
            old = self.scorer
            if old is not None and old.versions == new.versions:
                return False
            self.scorer = new  # one reference swap: in-flight requests keep the old scorer
            log.info("models now %s (were %s)", new.versions, old.versions if old else None)
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
    return pd.Timestamp(time.time(), unit="s", tz="UTC")
