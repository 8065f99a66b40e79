"""API keys: stored hashed, each bound to one tenant and its dealer ids.

The key file (JSON, path from ``LEADSCORE_API_KEYS``) holds only SHA-256 digests:
``{"keys": [{"tenant": "north", "sha256": "…", "dealers": ["D01", "D02"]}]}``. A presented key
is hashed and compared against every digest with ``hmac.compare_digest``, so neither the match
nor its position leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

ENV = "LEADSCORE_API_KEYS"


class KeyEntry(BaseModel):
    tenant: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dealers: list[str] = Field(min_length=1)


class KeyFile(BaseModel):
    keys: list[KeyEntry]


@dataclass(frozen=True)
class Tenant:
    name: str
    dealers: frozenset[str]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, entries: list[KeyEntry]):
        self._entries = [(bytes.fromhex(e.sha256), Tenant(e.tenant, frozenset(e.dealers)))
                         for e in entries]

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        return cls(KeyFile.model_validate_json(Path(path).read_text()).keys)

    @classmethod
    def from_env(cls) -> KeyRing:
        path = os.environ.get(ENV)
        if not path:
            return cls([])  # no keys configured: every request is refused
        return cls.from_file(Path(path))

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, presented: str | None) -> Tenant | None:
        if not presented:
            return None
        d = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, tenant in self._entries:  # no early exit: constant work per request
            if hmac.compare_digest(d, stored):
                found = tenant
        return found


def write_key_file(path: Path, tenants: dict[str, tuple[str, list[str]]]) -> Path:
    """Helper for set-up and tests: ``{tenant: (plain_key, dealers)}`` → hashed key file."""
    data = {"keys": [{"tenant": t, "sha256": digest(k), "dealers": d}
                     for t, (k, d) in tenants.items()]}
    Path(path).write_text(json.dumps(data, indent=1))
    return Path(path)
