"""HTTP request metrics on ``/metrics``, one series per route rather than per path.

BentoML's own HTTP metrics label every request by its raw path, so each unknown path a
client makes up adds series that live as long as the service: a scan of random URLs grew the
page by megabytes and made each scrape take seconds. The service therefore turns BentoML's
HTTP metrics off (``metrics.enabled: false`` in its configuration, which also drops BentoML's
``/metrics`` route), records the same three metrics here labelled by route template, with
every path no route serves in one ``unmatched`` bucket, and serves ``/metrics`` itself from
the same Prometheus multiprocess directory, so the workers' values still add up and the
service's own histograms (``serving.coalesce``) still appear.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from functools import cache
from timeit import default_timer

from starlette.routing import BaseRoute, Match, Mount

log = logging.getLogger(__name__)

NAMESPACE = "leadscore_http"
#: the label of every request whose path no route serves
UNMATCHED = "unmatched"
#: BentoML's own endpoints (its probes and index page), answered before the mounted app
SYSTEM_PATHS = ("/", "/healthz", "/livez", "/readyz", "/metrics", "/docs.json",
                "/schema.json")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0)


@cache
def _instruments():
    """Created on first use: ``prometheus_client`` must be imported after BentoML has set
    ``PROMETHEUS_MULTIPROC_DIR`` in the worker, which happens after this module is imported."""
    import prometheus_client as pc

    labels = ["endpoint", "http_response_code"]
    return (
        pc.Counter("request_total", "HTTP requests answered", labels, namespace=NAMESPACE),
        pc.Histogram("request_duration_seconds", "HTTP request duration in seconds", labels,
                     namespace=NAMESPACE, buckets=_BUCKETS),
        pc.Gauge("request_in_progress", "HTTP requests being answered now", ["endpoint"],
                 namespace=NAMESPACE, multiprocess_mode="livesum"),
    )


def render() -> tuple[bytes, str]:
    """The exposition text of every worker's metrics (this process's alone when not under
    BentoML) and its content type."""
    import prometheus_client as pc
    from prometheus_client import multiprocess

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return pc.generate_latest(), pc.CONTENT_TYPE_LATEST
    registry = pc.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST


class RouteLabels:
    """The metric label of a request: the template of the route that serves it, or
    :data:`UNMATCHED`. The set of labels is fixed by the routes, whatever clients send."""

    def __init__(self, routes: Iterable[BaseRoute], system_paths: Iterable[str] = SYSTEM_PATHS):
        routes = list(routes)
        fixed = {r.path for r in routes
                 if not isinstance(r, Mount) and "{" not in getattr(r, "path", "{")}
        self.exact = frozenset(system_paths) | fixed  # a set look-up for the usual requests
        self.routes = [r for r in routes if getattr(r, "path", None) not in fixed]

    def __call__(self, scope) -> str:
        path = scope["path"]
        if path in self.exact:
            return path
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:  # PARTIAL: the route, another method (405)
                return f"{route.path}/{{path}}" if isinstance(route, Mount) else route.path
        return UNMATCHED


class HttpMetrics:
    """ASGI middleware counting and timing HTTP requests by :class:`RouteLabels`."""

    def __init__(self, app, routes: Iterable[BaseRoute],
                 system_paths: Iterable[str] = SYSTEM_PATHS):
        self.app = app
        self.label = RouteLabels(routes, system_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = self.label(scope)
        total, duration, in_progress = _instruments()
        start = default_timer()
        status = 500  # if the app fails before it answers

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gauge = in_progress.labels(endpoint=endpoint)
        gauge.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            gauge.dec()
            code = str(status)
            total.labels(endpoint=endpoint, http_response_code=code).inc()
            duration.labels(endpoint=endpoint, http_response_code=code).observe(
                max(default_timer() - start, 0.0))
