"""The one place where leadscore reaches into BentoML's private modules, and why.

Checked against bentoml 1.4.40, the newest release available when this was written (the pin
stays ``>=1.4,<1.5``). Each shim names the upstream defect and the test that notices when it
is fixed upstream (``tests/test_upstream_shims.py``): then delete the shim.

1. ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``) schedules
   ``loop.call_later(timeout, ...)`` for every request and never cancels it, so every
   request's timer handle, its future and its context copy stay on the event loop for the
   whole ``traffic.timeout`` (30 s here): at a few hundred requests per second, tens of
   thousands of live objects and collector pauses of hundreds of milliseconds. No BentoML issue
   about this was found (searched: TimeoutMiddleware, call_later, timer not cancelled; the
   related open ones, https://github.com/bentoml/BentoML/issues/5246 and /5642, are about the
   timeout's reach, not its timer). To file at https://github.com/bentoml/BentoML/issues:
   "TimeoutMiddleware never cancels its call_later timer after the response starts; each
   request's TimerHandle and context stay scheduled for traffic.timeout seconds".
   BentoML's configuration cannot turn the middleware off (``traffic.timeout`` must be a
   positive number), so :func:`install` puts :class:`CancellingTimeoutMiddleware`, a subclass
   with the same answers and the timer cancelled, where BentoML's app factory looks the class
   up when it builds each worker's app. The upstream class itself is left as it is.
2. Swagger UI's files: no installed package but BentoML ships them (FastAPI's ``/docs`` loads
   them from a CDN by default; the PyPI package ``swagger-ui-bundle`` would be a new
   dependency). :func:`swagger_ui_assets` finds BentoML's copy, so ``/docs`` works offline.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.resources import files
from pathlib import Path

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

#: BentoML's own class, as it ships (the tests check that it still has the defect)
UpstreamTimeoutMiddleware = traffic.TimeoutMiddleware


class CancellingTimeoutMiddleware(UpstreamTimeoutMiddleware):
    """BentoML's request timeout, answering the same 504 body, whose timer is cancelled once
    the request is answered; an app that fails before it answers is not kept waiting for the
    timeout either."""

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def _expire() -> None:
            if not started.done():
                started.set_exception(TimeoutError)

        def _unblock(_fut) -> None:
            if not started.done():
                started.set_result(None)

        async def _send(message):
            _unblock(None)
            await send(message)

        timer = loop.call_later(self.timeout, _expire)
        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        fut.add_done_callback(_unblock)
        try:
            await started
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504)
                await resp(scope, receive, send)
                return
        finally:
            timer.cancel()
        await fut


def install() -> None:
    """Have BentoML build its apps with :class:`CancellingTimeoutMiddleware` (its app factory
    imports ``traffic.TimeoutMiddleware`` when it builds a worker's app)."""
    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware


def swagger_ui_assets() -> Path | None:
    """The folder of Swagger UI's files inside the installed bentoml package (None, with a
    warning, when this bentoml keeps them elsewhere: ``/docs`` is then blank)."""
    folder = files("bentoml") / "_internal" / "server" / "static_content"
    if (folder / "swagger-ui-bundle.js").is_file():
        return Path(str(folder))
    log.warning("Swagger UI files not found in the bentoml package: /docs will be blank")
    return None
