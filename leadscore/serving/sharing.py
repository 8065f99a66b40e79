"""Worker processes that share one listening socket (BentoML's process model, and the bare
reference app of ``benchmarks/serving.py``)."""

from __future__ import annotations


def take_one_connection_per_wakeup() -> None:
    """Workers share one listening socket, and asyncio's accept handler takes every pending
    connection (up to the backlog) each time the socket is ready. All workers wake on a new
    connection; the first to run took them all, so with keep-alive clients (a CRM's connection
    pool, wrk) one worker served nearly every connection while the others idled (BentoML issue
    #5426). Taking one connection per wake-up lets each worker's event loop compete for every
    connection, and a busy worker, whose loop is scoring, loses to an idle one."""
    from asyncio import selector_events

    cls = selector_events.BaseSelectorEventLoop
    accept = cls._accept_connection
    if getattr(accept, "_leadscore_patched", False):
        return

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, *args, **kwargs):
        return accept(self, protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)

    _accept_connection._leadscore_patched = True
    cls._accept_connection = _accept_connection
