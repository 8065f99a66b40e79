"""The BentoML service: ``bentoml serve leadscore.serving.service:LeadScoreService``.

BentoML owns the process model (workers, graceful shutdown), ``/healthz`` ``/livez``
``/readyz`` and ``/metrics``; the scoring route is the FastAPI app of ``serving.api`` mounted at
the root, so its pydantic contract and OpenAPI examples are served as written. Settings come
from the environment so a built Bento is configured at deploy time:

- ``LEADSCORE_WORKERS`` worker processes (default 1; one per core is the usual choice)
- ``LEADSCORE_STORE`` online feature store file (default ``features.db``)
- ``LEADSCORE_API_KEYS`` hashed key file (see ``serving.auth``)
- ``LEADSCORE_RELOAD_SECONDS`` how often to look for a new champion (default 30)
- ``MLFLOW_TRACKING_URI`` the registry (default ``sqlite:///mlruns.db``)
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml

from leadscore.serving.api import create_app
from leadscore.serving.auth import KeyRing
from leadscore.serving.runtime import Runtime
from leadscore.serving.store import DEFAULT_STORE, OnlineStore


class _CurrentRuntime:
    """Lets the ASGI app, built when this module is imported, reach the runtime that the
    service instance creates later inside its worker."""

    runtime: Runtime | None = None

    def __getattr__(self, name):
        if self.runtime is None:
            raise AttributeError(name)
        return getattr(self.runtime, name)


_current = _CurrentRuntime()
http_app = create_app(_current)  # type: ignore[arg-type]


@bentoml.service(
    name="leadscore",
    workers=int(os.environ.get("LEADSCORE_WORKERS", "1")),
    traffic={"timeout": 30},
)
@bentoml.asgi_app(http_app, path="/")
class LeadScoreService:
    def __init__(self) -> None:
        self.runtime = Runtime(
            store=OnlineStore(Path(os.environ.get("LEADSCORE_STORE", str(DEFAULT_STORE)))),
            keys=KeyRing.from_env(),
            reload_seconds=float(os.environ.get("LEADSCORE_RELOAD_SECONDS", "30")),
        )
        _current.runtime = self.runtime
        self.runtime.reload()
        self.runtime.start_watcher()

    def __is_ready__(self) -> bool:
        return self.runtime.ready
