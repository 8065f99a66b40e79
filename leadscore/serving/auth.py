"""API keys: stored hashed, each bound to one tenant and its dealer ids.

The key file (JSON, path from ``LEADSCORE_API_KEYS``) holds only SHA-256 digests:
``{"keys": [{"tenant": "north", "sha256": "…", "dealers": ["D01", "D02"]}]}``, and for keys made
by ``leadscore keys add`` also a ``name`` and ``created``. A key's id (what ``keys list`` shows
and ``keys revoke`` takes) is the start of its digest, so files written by hand have ids too. A
presented key is hashed and compared against every digest with ``hmac.compare_digest``, so
neither the match nor its position leaks through timing. A running service reads the file
again when it changes (checked at most once a second), so keys added or revoked take effect
without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from leadscore import atomic

log = logging.getLogger(__name__)

ENV = "LEADSCORE_API_KEYS"
#: the key file when ``LEADSCORE_API_KEYS`` is not set (``leadscore keys``)
DEFAULT_KEY_FILE = Path("api_keys.json")
#: hex digits of the digest that name a key
ID_LENGTH = 12
#: how often a key ring looks whether its file changed
RECHECK_SECONDS = 1.0


class KeyEntry(BaseModel):
    tenant: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dealers: list[str] = Field(min_length=1)
    name: str | None = None
    created: datetime | None = None

    @property
    def id(self) -> str:
        return self.sha256[:ID_LENGTH]


class KeyFile(BaseModel):
    keys: list[KeyEntry]


class KeyFileError(ValueError):
    """The key file cannot be read, or a key command cannot be done; the message names the
    file."""


@dataclass(frozen=True)
class Tenant:
    name: str
    dealers: frozenset[str]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class KeyRing:
    def __init__(self, entries: list[KeyEntry], path: Path | None = None):
        self._entries = self._index(entries)
        self._path = None if path is None else Path(path)
        self._stamp = None if path is None else _stamp(self._path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @staticmethod
    def _index(entries: list[KeyEntry]) -> list[tuple[bytes, Tenant]]:
        return [(bytes.fromhex(e.sha256), Tenant(e.tenant, frozenset(e.dealers)))
                for e in entries]

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        return cls(read_key_file(Path(path)).keys, path=Path(path))

    @classmethod
    def from_env(cls) -> KeyRing:
        path = os.environ.get(ENV)
        if not path:
            return cls([])  # no keys configured: every request is refused
        return cls.from_file(Path(path))

    def __len__(self) -> int:
        self._refresh()
        return len(self._entries)

    def _refresh(self) -> None:
        """Read the file again if it changed since it was read. A file that is gone or does
        not read keeps the keys read last (logged): an edit in progress must not lock every
        client out."""
        if self._path is None or time.monotonic() - self._checked < RECHECK_SECONDS:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            self._checked = time.monotonic()
            stamp = _stamp(self._path)
            if stamp == self._stamp:
                return
            try:
                entries = read_key_file(self._path, missing_ok=False).keys
            except KeyFileError as e:
                log.warning("API keys not reloaded, keeping the %d read before: %s",
                            len(self._entries), e)
            else:
                self._entries = self._index(entries)
                log.info("API keys reloaded from %s: %d keys", self._path, len(entries))
            self._stamp = stamp
        finally:
            self._lock.release()

    def verify(self, presented: str | None) -> Tenant | None:
        if not presented:
            return None
        self._refresh()
        d = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, tenant in self._entries:  # no early exit: constant work per request
            if hmac.compare_digest(d, stored):
                found = tenant
        return found


# --- the key file, for `leadscore keys` and set-up ------------------------------------------

def read_key_file(path: Path, missing_ok: bool = False) -> KeyFile:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return KeyFile(keys=[])
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: {e.strerror}") from None
    try:
        return KeyFile.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise KeyFileError(f"{path}: {where}: {first['msg']}") from None


def _write(path: Path, keys: KeyFile) -> None:
    data = keys.model_dump(mode="json", exclude_none=True)
    atomic.write_text(Path(path), json.dumps(data, indent=1) + "\n", mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One ``keys`` command at a time changes the file (read, change, write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_key(path: Path, tenant: str, dealers: list[str],
            name: str | None = None) -> tuple[str, KeyEntry]:
    """A new random key for ``tenant``'s ``dealers``; only its digest is written. Returns the
    key (shown once, never stored) and its entry."""
    tenant = tenant.strip()
    dealers = sorted({d.strip() for d in dealers if d.strip()})
    if not tenant:
        raise KeyFileError("--tenant must not be empty")
    if not dealers:
        raise KeyFileError("--dealers needs at least one dealer id")
    with _locked(path):
        keys = read_key_file(path, missing_ok=True)
        key = secrets.token_urlsafe(32)
        entry = KeyEntry(tenant=tenant, sha256=digest(key), dealers=dealers, name=name or None,
                         created=datetime.now(UTC).replace(microsecond=0))
        keys.keys.append(entry)
        _write(path, keys)
    return key, entry


def revoke_key(path: Path, key_id: str) -> KeyEntry:
    """Remove the key whose id is (or starts with) ``key_id``."""
    key_id = key_id.strip().lower()
    if len(key_id) < 6:
        raise KeyFileError("give at least 6 characters of the key id (`leadscore keys list`)")
    with _locked(path):
        keys = read_key_file(path)
        hits = [e for e in keys.keys if e.sha256.startswith(key_id)]
        if not hits:
            raise KeyFileError(f"{path}: no key with id {key_id}")
        if len(hits) > 1:
            raise KeyFileError(f"{path}: {len(hits)} keys have ids starting with {key_id}; "
                               "give more of the id")
        keys.keys = [e for e in keys.keys if e is not hits[0]]
        _write(path, keys)
    return hits[0]


def write_key_file(path: Path, tenants: dict[str, tuple[str, list[str]]]) -> Path:
    """Helper for set-up and tests: ``{tenant: (plain_key, dealers)}`` → hashed key file."""
    keys = KeyFile(keys=[KeyEntry(tenant=t, sha256=digest(k), dealers=d)
                         for t, (k, d) in tenants.items()])
    _write(Path(path), keys)
    return Path(path)
