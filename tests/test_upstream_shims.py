"""The shims of ``serving.upstream_shims``: each still needed (the upstream defect is still
there: once it is not, a test fails and says to delete the shim) and each doing its job."""

from __future__ import annotations

import asyncio
import time

import pytest
from bentoml._internal.server.http import traffic

from leadscore.serving import upstream_shims
from leadscore.serving.upstream_shims import (
    CancellingTimeoutMiddleware,
    UpstreamTimeoutMiddleware,
)

TIMEOUT = 30.0


class RecordingLoop(asyncio.SelectorEventLoop):
    """An event loop that keeps every timer scheduled on it (``call_later`` and the timeouts
    of ``asyncio.timeout`` both go through ``call_at``)."""

    def __init__(self):
        super().__init__()
        self.timers: list[asyncio.TimerHandle] = []

    def call_at(self, when, callback, *args, context=None):
        handle = super().call_at(when, callback, *args, context=context)
        self.timers.append(handle)
        return handle


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def hang(scope, receive, send):
    await asyncio.sleep(3600)


async def fail(scope, receive, send):
    raise RuntimeError("broken app")


def run(middleware_cls, app, timeout: float = TIMEOUT):
    """One HTTP request through ``middleware_cls(app)``: the messages sent, the timers still
    scheduled (not cancelled, due later than now) once it is over, and the exception raised
    (None when it answered)."""
    sent, error = [], None

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main():
        mw = middleware_cls(app, timeout=timeout)
        await mw({"type": "http", "method": "GET", "path": "/"}, receive, send)

    loop = RecordingLoop()
    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            try:
                runner.run(main())
            except Exception as e:
                error = e
            now = loop.time()
            live = [h for h in loop.timers if not h.cancelled() and h.when() > now]
    finally:
        loop.close()
    return sent, live, error


def test_upstream_timeout_middleware_still_leaves_its_timer_scheduled():
    """The defect the shim works around: BentoML's ``TimeoutMiddleware`` leaves each
    request's timer (and with it the request's context) on the loop for the whole timeout
    after the response. When this fails, upstream fixed it: delete the shim."""
    sent, live, error = run(UpstreamTimeoutMiddleware, answer)
    assert error is None and sent[0]["status"] == 200
    assert len(live) == 1, (
        "upstream fixed: delete the shim (CancellingTimeoutMiddleware and install() in "
        "leadscore/serving/upstream_shims.py, and this test)")
    assert live[0].when() - time.monotonic() > TIMEOUT - 5


def test_the_shim_cancels_the_timer_once_answered():
    sent, live, error = run(CancellingTimeoutMiddleware, answer)
    assert error is None
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    assert live == []


def test_the_shim_times_out_with_upstreams_answer():
    """A request that takes longer than the timeout gets BentoML's own 504, word for word."""
    upstream = run(UpstreamTimeoutMiddleware, hang, timeout=0.05)
    shim = run(CancellingTimeoutMiddleware, hang, timeout=0.05)
    assert shim[0] == upstream[0]
    assert shim[0][0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in shim[0][1]["body"]
    assert shim[1] == [] and shim[2] is None


def test_the_shim_passes_an_app_failure_on_at_once():
    """An app that fails before answering is not kept waiting for the timeout: its error
    reaches the server (which answers 500) straight away."""
    t0 = time.monotonic()
    sent, live, error = run(CancellingTimeoutMiddleware, fail)
    assert isinstance(error, RuntimeError) and sent == []
    assert time.monotonic() - t0 < 5 and live == []


def test_bentoml_builds_the_service_app_with_the_shim():
    """After the service module is imported, BentoML's app factory (the base class of the
    one that builds each worker's app) installs the shim in place of its own class."""
    from bentoml._internal.server.base_app import BaseAppFactory

    import leadscore.serving.service  # noqa: F401 - installs the shim

    class Factory(BaseAppFactory):
        name = "test"

    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware
    classes = [m.cls for m in Factory(timeout=TIMEOUT).middlewares]
    assert CancellingTimeoutMiddleware in classes
    assert UpstreamTimeoutMiddleware not in classes


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css",
                                  "favicon-light-32x32.png"])
def test_swagger_ui_assets_are_found_in_the_installed_bentoml(name):
    """``/docs`` needs these files; bentoml is the only installed package that ships them."""
    folder = upstream_shims.swagger_ui_assets()
    assert folder is not None and (folder / name).is_file()
