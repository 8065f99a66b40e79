"""Worker processes that share one listening socket (BentoML's process model, and the bare
reference app of ``benchmarks/serving.py``).

Clients keep their connections (a CRM's connection pool, wrk), so a worker serves the
connections it accepted for as long as they live: a 5-3 split of 8 connections between two
workers gives the busier one's requests 5/4 of the queueing of an even split, and its
clients see the tail. Workers therefore publish how many connections they hold, and one
holding two or more above the least loaded asks the client of the request it just answered
to reconnect (``Connection: close``). Reconnecting costs a TCP handshake; the new connection
goes to whichever worker accepts first, most often the idler one, so the counts even out
after a few such answers and then stay put.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SLOTS = 256
_PREFIX = "leadscore-conns-"
_ALIVE_CHECK_SECONDS = 1.0
#: a worker holding this many connections more than the least loaded one recycles one
RECYCLE_EXCESS = 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ConnectionLoads:
    """Open connections per worker process of one listening socket, in a small file every
    worker maps (named by the socket's inode, which all workers share): one (pid, count) row
    per worker. A worker claims a row by its pid under a file lock; a dead worker's row is
    ignored and later reused; the last worker to exit removes the file."""

    def __init__(self, path: Path):
        self.path = path
        self.pid = os.getpid()
        size = _SLOTS * 16
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
            self.rows = np.frombuffer(self.map, dtype=np.int64).reshape(_SLOTS, 2)
            self.slot = self._claim()
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        self._alive: dict[int, tuple[float, bool]] = {}
        atexit.register(self.close)

    @classmethod
    def for_socket(cls, sock) -> ConnectionLoads:
        st = os.fstat(sock.fileno())
        folder = Path(tempfile.gettempdir())
        _remove_stale(folder)
        return cls(folder / f"{_PREFIX}{st.st_dev}-{st.st_ino}")

    def _claim(self) -> int:
        for i in range(_SLOTS):
            pid = int(self.rows[i, 0])
            if pid in (0, self.pid) or not _alive(pid):
                self.rows[i] = (self.pid, 0)
                return i
        raise RuntimeError(f"{self.path}: more than {_SLOTS} workers")

    def publish(self, connections: int) -> None:
        self.rows[self.slot, 1] = connections

    def _is_alive(self, pid: int, now: float) -> bool:
        checked = self._alive.get(pid)
        if checked is None or now - checked[0] > _ALIVE_CHECK_SECONDS:
            checked = self._alive[pid] = (now, _alive(pid))
        return checked[1]

    def least_other(self) -> int | None:
        """The fewest connections any other live worker holds (None: no other worker)."""
        others = np.flatnonzero(self.rows[:, 0])
        least = None
        now = time.monotonic()
        for i in others.tolist():
            if i == self.slot:
                continue
            pid, n = (int(v) for v in self.rows[i])
            if (least is None or n < least) and self._is_alive(pid, now):
                least = n
        return least

    def close(self) -> None:
        if self.map.closed:
            return
        self.rows[self.slot] = (0, 0)
        others = any(_alive(int(pid)) for pid in self.rows[:, 0] if pid)
        del self.rows
        self.map.close()
        if not others:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _remove_stale(folder: Path) -> None:
    """Remove the files of services whose workers are all gone (a worker killed outright
    cannot remove its own). A file another process holds locked is left alone."""
    for path in folder.glob(f"{_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            rows = np.frombuffer(os.pread(fd, _SLOTS * 16, 0), dtype=np.int64)
            pids = rows[: len(rows) // 2 * 2].reshape(-1, 2)[:, 0]
            if not any(_alive(int(pid)) for pid in pids if pid):
                path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


def _open_connections(server) -> int | None:
    """The connections an ``asyncio.Server`` holds open (its private count; None when this
    Python keeps it under another name)."""
    n = getattr(server, "_active_count", None)
    if n is None and hasattr(server, "_clients"):
        n = len(server._clients)
    return n if isinstance(n, int) else None


class _Balance:
    server = None  # the asyncio.Server of this worker's listening socket
    loads: ConnectionLoads | None = None


def should_recycle() -> bool:
    """Whether this worker holds :data:`RECYCLE_EXCESS` or more connections above the least
    loaded worker (so the connection just answered should be closed and opened again)."""
    loads, server = _Balance.loads, _Balance.server
    if loads is None or server is None:
        return False
    mine = _open_connections(server)
    if mine is None:
        return False
    loads.publish(mine)
    least = loads.least_other()
    return least is not None and mine - least >= RECYCLE_EXCESS


def take_one_connection_per_wakeup() -> None:
    """Workers share one listening socket, and asyncio's accept handler takes every pending
    connection (up to the backlog) each time the socket is ready. All workers wake on a new
    connection; the first to run took them all, so with keep-alive clients (a CRM's connection
    pool, wrk) one worker served nearly every connection while the others idled (BentoML issue
    #5426). Taking one connection per wake-up lets each worker's event loop compete for every
    connection, and a busy worker, whose loop is scoring, loses to an idle one. The worker also
    learns its server and shared connection counts here, for :func:`should_recycle`."""
    from asyncio import selector_events

    cls = selector_events.BaseSelectorEventLoop
    accept = cls._accept_connection
    if getattr(accept, "_leadscore_patched", False):
        return

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, *args, **kwargs):
        if server is not None and _Balance.server is not server:
            _Balance.server = server
            try:
                _Balance.loads = ConnectionLoads.for_socket(sock)
            except (OSError, RuntimeError) as e:  # no shared file: no recycling
                log.warning("connection balancing off: %s", e)
                _Balance.loads = None
        return accept(self, protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)

    _accept_connection._leadscore_patched = True
    cls._accept_connection = _accept_connection
