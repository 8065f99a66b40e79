"""The BentoML service: ``bentoml serve leadscore.serving.service:LeadScoreService``.

BentoML owns the process model (workers, graceful shutdown), ``/healthz`` ``/livez`` and
``/readyz``; ``/metrics`` is the service's own (``serving.metrics``: BentoML's HTTP metrics
label by raw path, so made-up paths grew it without bound). The scoring route is the FastAPI
app of ``serving.api`` mounted at the root, so its pydantic contract and OpenAPI examples are
served as written (small requests that arrive together are scored in one pass,
``serving.coalesce``).
Settings come from the environment so a built Bento is configured at deploy time:

- ``LEADSCORE_WORKERS`` BentoML worker processes (default 1; or one per container behind a
  load balancer, see README.md)
- ``LEADSCORE_STORE`` online feature store file (default ``features.db``)
- ``LEADSCORE_API_KEYS`` hashed key file (see ``serving.auth``; re-read when it changes)
- ``LEADSCORE_RELOAD_SECONDS`` how often to look for a new champion (default 30; 0: never;
  a worker that has no models yet retries every 5 s either way)
- ``LEADSCORE_CONTACT_RULES`` the contact rules YAML for the slot search (default: built-in
  rules; read once when a worker starts)
- ``LEADSCORE_INTENT_GRADES`` per-dealer intent-grade thresholds YAML (default: the models'
  own; read once when a worker starts)
- ``LEADSCORE_LANG`` the reasons' language when a request's ``Accept-Language`` names neither
  ``en`` nor ``zh-CN`` (``en`` or ``zh-CN``; default ``en``; read once when a worker starts)
- ``LEADSCORE_BATCH_THREADS`` threads one big request is split over (default: cores/workers)
- ``LEADSCORE_ACCESS_LOG`` 1 to have BentoML log every request (default off)
- ``LEADSCORE_TRACE_SCORE`` 1 to trace ``/score`` with OpenTelemetry (default off; set it when
  a tracing exporter is configured in the BentoML configuration)
- ``MLFLOW_TRACKING_URI`` the registry (default ``sqlite:///mlruns.db``)

Latency notes (see ``benchmarks/serving.py``): a scoring request costs about a millisecond of
model time, so per-request framework work shows. The access log and a span per request are off
unless asked for; BentoML's request timeout left a 30-second timer (and through its context the
request's span and state) alive per request, which filled the heap and made the collector stall
for hundreds of milliseconds, so the timer is cancelled when the response starts
(``serving.upstream_shims``); and the objects alive after start-up (libraries, models) are
frozen out of the cyclic collector.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from pathlib import Path

import bentoml

from leadscore import lang as language
from leadscore.scoring.contact_policy import RulesFile, rules_path_from_env
from leadscore.scoring.intent import IntentRules
from leadscore.scoring.intent import rules_path_from_env as intent_rules_path
from leadscore.serving import upstream_shims
from leadscore.serving.api import create_app
from leadscore.serving.auth import KeyRing
from leadscore.serving.last_night import LastNight
from leadscore.serving.metrics import HttpMetrics
from leadscore.serving.runtime import BENTO_PREFIX, Runtime, champion_model, load_from_bento_store
from leadscore.serving.store import DEFAULT_STORE, OnlineStore

log = logging.getLogger(__name__)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class _CurrentRuntime:
    """Lets the ASGI app, built when this module is imported, reach the runtime that the
    service instance creates later inside its worker. Until then there is nothing to score
    with: ``/score`` answers 503."""

    runtime: Runtime | None = None

    def current(self):
        r = self.runtime
        return None if r is None else r.current()

    @property
    def batch_threads(self) -> int:
        r = self.runtime
        return 1 if r is None else r.batch_threads

    @property
    def keys(self) -> KeyRing:
        r = self.runtime
        return KeyRing([]) if r is None else r.keys

    @property
    def store(self) -> OnlineStore:
        if self.runtime is None:
            raise RuntimeError("the service is not initialised yet")
        return self.runtime.store

    @property
    def last_night(self) -> LastNight:
        if self.runtime is None:
            raise RuntimeError("the service is not initialised yet")
        return self.runtime.last_night

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.runtime.ready


def _service_config() -> dict:
    cfg: dict = {
        "name": "leadscore",
        "workers": int(os.environ.get("LEADSCORE_WORKERS", "1")),
        "traffic": {"timeout": 30},
        # BentoML's HTTP metrics label requests by raw path: ours (HttpMetrics) by route
        "metrics": {"enabled": False},
    }
    if not _flag("LEADSCORE_ACCESS_LOG"):
        cfg["logging"] = {"access": {"enabled": False}}
    if not _flag("LEADSCORE_TRACE_SCORE"):
        cfg["tracing"] = {"excluded_urls": ["/score", "/healthz", "/livez", "/readyz",
                                            "/metrics"]}
    return cfg


upstream_shims.install()  # BentoML's request timeout, with its timer cancelled
_current = _CurrentRuntime()
http_app = create_app(_current)  # type: ignore[arg-type]


def _batch_threads() -> int:
    """Threads a big request is split over: the cores per worker (``LEADSCORE_BATCH_THREADS``
    overrides)."""
    if os.environ.get("LEADSCORE_BATCH_THREADS"):
        return max(1, int(os.environ["LEADSCORE_BATCH_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LEADSCORE_WORKERS", "1")))


def _freeze_heap() -> None:
    """Move what is alive now (libraries, models) out of the cyclic collector's reach, so its
    full collections walk only what requests allocate."""
    gc.freeze()


class ChampionModel(bentoml.models.BentoModel):
    """A model the service declares so that ``bentoml build`` packs the champion of the
    registry it is configured with (``MLFLOW_TRACKING_URI``), imported into the store under
    its identity, rather than whatever model of that name the shared store holds. Serving
    does not resolve it through BentoML: each worker's runtime follows the registry."""

    def _champion(self) -> bentoml.models.BentoModel:
        from leadscore import registry

        name = self.tag.name.removeprefix(BENTO_PREFIX)
        res = registry.resolve(name)
        if res is None:
            raise bentoml.exceptions.NotFound(
                f"no champion of {name} in the registry (MLFLOW_TRACKING_URI): train and "
                "promote one before building the Bento")
        bm, _ = champion_model(name, res)
        return bentoml.models.BentoModel(bm.tag)

    def to_info(self, alias: str | None = None):
        return self._champion().to_info(alias)

    def to_create_schema(self):
        return self._champion().to_create_schema()

    def resolve(self, base_path=None):
        return None


def _packed_models() -> dict[str, str]:
    """Store tag by model name of the models the built Bento being served packed (none when
    serving from source)."""
    bento = getattr(LeadScoreService, "bento", None)
    if bento is None:
        return {}
    return {m.tag.name.removeprefix(BENTO_PREFIX): str(m.tag) for m in bento.info.all_models
            if m.tag.name.startswith(BENTO_PREFIX)}


@bentoml.service(**_service_config())
@bentoml.asgi_app(http_app, path="/")
class LeadScoreService:
    # packed by `bentoml build`: the champions of the configured registry (ChampionModel)
    conversion_model = ChampionModel(f"{BENTO_PREFIX}conversion")
    contact_model = ChampionModel(f"{BENTO_PREFIX}contact")
    churn_model = ChampionModel(f"{BENTO_PREFIX}churn")
    contact_slot_model = ChampionModel(f"{BENTO_PREFIX}contact-slot")

    def __init__(self) -> None:
        packed = _packed_models()
        rules = RulesFile.load(rules_path_from_env())  # a bad file stops the worker here
        intent = IntentRules.load(intent_rules_path())  # so does a bad intent-grades file
        lang = language.from_env()  # and a language it does not know
        self.runtime = Runtime(
            loader=functools.partial(load_from_bento_store, packed=packed, rules=rules,
                                     intent=intent, lang=lang),
            store=OnlineStore(Path(os.environ.get("LEADSCORE_STORE", str(DEFAULT_STORE)))),
            keys=KeyRing.from_env(),
            reload_seconds=float(os.environ.get("LEADSCORE_RELOAD_SECONDS", "30")),
            on_swap=_freeze_heap,
            batch_threads=_batch_threads(),
        )
        _current.runtime = self.runtime
        try:
            self.runtime.reload()
        except Exception:  # not ready (503, /readyz) until the watcher loads them
            log.exception("loading the champion models failed; retrying every %s s",
                          self.runtime.retry_seconds)
        self.runtime.start_watcher()
        gc.collect()  # once, before serving: start-up garbage is not worth freezing
        _freeze_heap()

    def __is_ready__(self) -> bool:
        return self.runtime.ready


LeadScoreService.add_asgi_middleware(HttpMetrics, routes=http_app.routes)
