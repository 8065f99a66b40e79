"""What a serving process holds: the current scorer, the online store, the key ring.

Models come from the BentoML model store, imported from the MLflow registry's ``champion``
alias. A watcher re-resolves the alias every ``reload_seconds``; a new champion is loaded beside
the old one and swapped in with one assignment, so requests in flight finish on the old models
and none fail during the change.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leadscore import contract
from leadscore.artifact import BOOSTER_FILE, META_FILE, LeadModel, UnsupportedModel
from leadscore.features import catalog as cat
from leadscore.features import job
from leadscore.scoring.contact_policy import RulesFile
from leadscore.scoring.intent import IntentRules
from leadscore.scoring.scorer import (
    ALL_MODELS,
    Scorer,
)
from leadscore.serving.auth import KeyRing
from leadscore.serving.last_night import LastNight, beside
from leadscore.serving.store import OnlineStore

log = logging.getLogger(__name__)

BENTO_PREFIX = "leadscore-"
#: the BentoML store is per user and shared by every checkout and registry on the machine: a
#: store model is named by what it is (its MLflow run and a checksum of its files), and its
#: labels say which registry, registered model and version it was imported from
LABEL_REGISTRY = "leadscore_registry"
LABEL_NAME = "registered_name"
LABEL_VERSION = "registry_version"
LABEL_RUN = "run_id"
DIGEST_CHARS = 12


def registry_id(uri: str | None = None) -> str:
    """A short hash naming the registry the tracking URI points at. Local stores are named by
    their absolute path: the default ``sqlite:///mlruns.db`` in two folders is two registries."""
    from urllib.parse import urlparse

    from leadscore import registry

    uri = uri or registry.tracking_uri()
    if uri.startswith("sqlite:///"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        uri = f"sqlite:///{Path(path).resolve()}{sep}{query}"
    elif urlparse(uri).scheme in ("", "file"):
        path = urlparse(uri).path if uri.startswith("file:") else uri
        uri = Path(path).resolve().as_uri()
    return hashlib.sha256(uri.encode()).hexdigest()[:DIGEST_CHARS]


def artifact_digest(directory: Path) -> str:
    """A checksum of the files a :class:`LeadModel` is loaded from."""
    h = hashlib.sha256()
    for name in (META_FILE, BOOSTER_FILE):
        data = (Path(directory) / name).read_bytes()
        h.update(f"{name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class ModelIdentity:
    """A registered model version as it is: run and checksum name it, the rest is where it
    came from (a run id is random, so two registries never share one)."""

    name: str
    registered_name: str
    version: str
    run_id: str
    digest: str
    registry: str

    @property
    def tag(self) -> str:
        run = re.sub(r"[^a-z0-9]+", "-", (self.run_id or "norun").lower()).strip("-")
        return f"{BENTO_PREFIX}{self.name}:{run[:63 - DIGEST_CHARS - 1]}-{self.digest}"

    @property
    def labels(self) -> dict[str, str]:
        return {"source": "mlflow-registry", LABEL_REGISTRY: self.registry,
                LABEL_NAME: self.registered_name, LABEL_VERSION: self.version,
                LABEL_RUN: self.run_id or ""}


#: loaded artifacts by BentoML tag, path and registry version: a periodic reload that finds the
#: same champions costs registry look-ups only, not re-parsing every model (which holds the GIL
#: for tens of ms)
_LOADED: dict[str, LeadModel] = {}
#: checksums of registered versions by (registry, name, version, run): a registered version's
#: files never change, so a process downloads each champion once to learn what it is
_DIGESTS: dict[tuple[str, str, str, str], str] = {}
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


def _reported_version(bm) -> str:
    """The registry version a store model was imported as (older stores: from its tag)."""
    return bm.info.labels.get(LABEL_VERSION) or str(bm.tag.version).lstrip("v")


def _load_bento(bm, version: str) -> LeadModel:
    """The artifact of a BentoML store model, parsed once per tag, path and registry version.
    Its files must match the checksum its tag names: a half-copied or altered model is an
    error, not a different model."""
    from leadscore.artifact import find_artifact_dir

    key = f"{bm.tag}@{bm.path}#{version}"
    lm = _LOADED.get(key)
    if lm is None:
        directory = find_artifact_dir(Path(bm.path))
        expected = str(bm.tag.version).rsplit("-", 1)[-1]
        if len(expected) == DIGEST_CHARS and artifact_digest(directory) != expected:
            raise ValueError(f"{bm.tag}: its files do not match the checksum in its tag")
        lm = LeadModel.load(directory)
        lm.meta = {**lm.meta, "version": version}
        _LOADED[key] = lm
    return lm


def _identify(name: str, res) -> tuple[ModelIdentity, Path | None]:
    """The identity of a resolved registry version; downloads it (into a folder the caller
    must remove) unless this process has seen that version before."""
    import tempfile

    import mlflow

    from leadscore import registry
    from leadscore.artifact import find_artifact_dir

    reg = registry_id()
    key = (reg, res.name, res.version, res.run_id or "")
    digest = _DIGESTS.get(key)
    local = None
    if digest is None:
        registry.configure()
        local = Path(tempfile.mkdtemp(prefix="leadscore-champion-"))
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{res.name}/{res.version}",
                                            dst_path=str(local))
        digest = _DIGESTS[key] = artifact_digest(find_artifact_dir(local))
    return ModelIdentity(name=name, registered_name=res.name, version=res.version,
                         run_id=res.run_id or "", digest=digest, registry=reg), local


def champion_model(name: str, res):
    """The store model of a resolved registry version (``registry.resolve``), imported first
    if the store does not hold it; returns the store's model and its loaded artifact.

    BentoML copies an imported model into its store file by file, so a worker starting beside
    one that is importing can find the model listed but not yet whole (and a crash mid-import
    leaves it so). A model that will not load is therefore looked at again under the import
    lock, which an importing worker holds until its copy is complete; if it still will not
    load, it is deleted and imported again. A store without the lock file (a built Bento on a
    read-only disk) is only written to when a model is missing or broken."""
    import shutil

    ident, local = _identify(name, res)
    try:
        return _get_or_import(ident, local, res)
    finally:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)


def _get_or_import(ident: ModelIdentity, local: Path | None, res):
    import bentoml

    tag = ident.tag
    try:
        bm = bentoml.models.get(tag)
        return bm, _load_bento(bm, ident.version)
    except bentoml.exceptions.NotFound:
        pass
    except UnsupportedModel:  # whole but unservable: importing it again cannot help
        raise
    except Exception as e:  # half copied by another worker, or left by a crash
        log.info("%s did not load (%s); looking again under the import lock", tag,
                 type(e).__name__)
    with _import_lock():
        try:
            bm = bentoml.models.get(tag)  # another worker imported it meanwhile
            return bm, _load_bento(bm, ident.version)
        except bentoml.exceptions.NotFound:
            pass
        except UnsupportedModel:
            raise
        except Exception as e:  # nobody is importing it: it is broken
            log.warning("%s in the BentoML store is incomplete (%s); importing it again", tag,
                        type(e).__name__)
            bentoml.models.delete(tag)
        uri = str(local) if local is not None else f"models:/{res.name}/{res.version}"
        bm = bentoml.mlflow.import_model(tag, model_uri=uri, labels=ident.labels)
        return bm, _load_bento(bm, ident.version)


def _fallback_model(name: str, packed: Mapping[str, str]):
    """The model to serve when the registry gives no champion: the one a built Bento packed,
    else the newest in the store imported from this same registry (never another's)."""
    import bentoml

    if name in packed:
        bm = bentoml.models.get(packed[name])
        return bm, _load_bento(bm, _reported_version(bm))
    reg = registry_id()
    ours = []
    for bm in bentoml.models.list(f"{BENTO_PREFIX}{name}"):
        try:
            if bm.info.labels.get(LABEL_REGISTRY) == reg:
                ours.append(bm)
        except Exception:  # a half-copied model: not a candidate
            continue
    if not ours:
        raise bentoml.exceptions.NotFound(f"no {name} model from this registry in the store")
    bm = max(ours, key=lambda m: m.info.creation_time)
    return bm, _load_bento(bm, _reported_version(bm))


def load_from_bento_store(names=ALL_MODELS, alias: str = "champion", num_threads: int = 1,
                          packed: Mapping[str, str] | None = None,
                          rules: RulesFile | None = None,
                          intent: IntentRules | None = None, lang: str = "en") -> Scorer:
    """Resolve each champion in MLflow, import it into the BentoML store once, load it.

    The scorer searches contact slots under ``rules`` (the defaults when None; the service
    passes the file named by ``LEADSCORE_CONTACT_RULES``, read once at start-up) and grades
    intent by ``intent`` (the file named by ``LEADSCORE_INTENT_GRADES``; the models' own
    thresholds when None), writing reasons in ``lang`` unless a request asks for another
    (the service passes ``LEADSCORE_LANG``).

    When the registry is unreachable or has no champion, the model a built Bento packed is
    used (``packed``: store tag by model name), else the newest model in the store that was
    imported from this registry.
    """
    import bentoml

    from leadscore import registry

    models = {}
    for name in names:
        res = None
        try:
            res = registry.resolve(name, alias)
        except Exception as e:  # registry down: fall back to what the store has
            log.warning("registry unreachable for %s (%s); using the BentoML store", name,
                        type(e).__name__)
        try:
            if res is not None:
                _, models[name] = champion_model(name, res)
            else:
                _, models[name] = _fallback_model(name, packed or {})
        except bentoml.exceptions.NotFound:
            log.warning("no %s model for %s: its columns stay null", alias, name)
    current = {id(m) for m in models.values()}
    for key in list(_LOADED):  # forget superseded versions of the models just loaded
        if key.split(":")[0].removeprefix(BENTO_PREFIX) in models and id(_LOADED[key]) \
                not in current:
            del _LOADED[key]
    return Scorer(models, num_threads=num_threads, rules=rules, intent=intent, lang=lang)


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
        #: the last nightly run's scores beside the store (``rescore --store``)
        self.last_night = LastNight(beside(store.path))
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
            log.info("models now %s (were %s); scoring: %s", new.versions,
                     old.versions if old else None, new.scoring_paths)
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
                         as_of: pd.Timestamp, clock: pd.Timestamp,
                         features: Sequence[cat.Feature] = cat.CATALOG,
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch feature job, run on the request's own rows: identical features by design
    (``features``: the scorer's ``job_features``, as the batch computes them).
    The rows pass the batch's row rules first (``clock``: the latest time a row may carry);
    returns the features and the rows left out (:func:`contract.register_frames`)."""
    con = contract.connect(threads=1)
    try:
        bad = contract.register_frames(con, leads, events, contacts, clock=clock)
        return job.to_pandas(job.compute(con, [as_of], features), features), bad
    finally:
        con.close()


def now_utc() -> pd.Timestamp:
    """Now, in whole microseconds (the resolution of the stored timestamps)."""
    return pd.Timestamp(time.time_ns() // 1000, unit="us", tz="UTC")
