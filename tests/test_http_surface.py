"""The HTTP surface around ``POST /score`` that needs no models: the key check before the body,
``/docs`` and the OpenAPI document, route-labelled metrics, and ``leadscore keys``.

The app is ``serving.api.create_app`` over a stand-in runtime (a key ring and a scorer that
claims to have models), so these tests take milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import uuid
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from leadscore.cli import app as cli
from leadscore.schema import CHANNELS
from leadscore.serving import auth
from leadscore.serving.api import MAX_BODY_BYTES, ScoreResponse, create_app
from leadscore.serving.auth import KeyRing, write_key_file

KEY = "surface-0c5b1f"


def stand_in(keys: KeyRing, ready: bool = True) -> SimpleNamespace:
    scorer = SimpleNamespace(models={"conversion": object()} if ready else {})
    return SimpleNamespace(keys=keys, current=lambda: scorer, batch_threads=1, store=None)


@pytest.fixture
def client(tmp_path):
    keys = KeyRing.from_file(write_key_file(tmp_path / "keys.json", {"t": (KEY, ["D01"])}))
    with TestClient(create_app(stand_in(keys)), raise_server_exceptions=False) as c:
        yield c


# --- the key is checked before the body ------------------------------------------------------

def _call(app, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, int]:
    """One ``POST /score`` straight through the ASGI app: (status, body messages read)."""
    reads = 0
    sent = []

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/score", "raw_path": b"/score",
             "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], reads


@pytest.mark.parametrize("content_type", [b"application/json", b"text/plain"])
def test_a_missing_or_wrong_key_is_refused_before_the_body_is_read(tmp_path, content_type):
    keys = KeyRing.from_file(write_key_file(tmp_path / "keys.json", {"t": (KEY, ["D01"])}))
    app = create_app(stand_in(keys))
    junk = b"{" * 100_000
    ctype = [(b"content-type", content_type)]
    for key in ([], [(b"x-api-key", b"wrong")], [(b"x-api-key", KEY[:-1].encode())]):
        assert _call(app, ctype + key, junk) == (401, 0)
    status, reads = _call(app, [*ctype, (b"x-api-key", KEY.encode())], junk)
    assert status == 422  # a known key: on to FastAPI, which refuses the body
    assert reads >= (content_type == b"application/json")  # JSON: read and parsed
    # no models yet: 503 for everyone, also before the body
    assert _call(create_app(stand_in(keys, ready=False)),
                 [*ctype, (b"x-api-key", KEY.encode())], junk) == (503, 0)


def test_a_wrong_key_with_a_big_invalid_body_gets_401_not_422(client):
    junk = b'{"leads": [' + b'{"lead_id": 1},' * ((MAX_BODY_BYTES - 100) // 15)
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = client.post("/score", content=junk,
                        headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "missing or unknown X-API-Key"
        assert r.headers["connection"] == "close"
    r = client.post("/score", content=junk, headers={"X-API-Key": KEY,
                                                     "Content-Type": "application/json"})
    assert r.status_code == 422  # with the key, the same body is parsed and found invalid


# --- /docs and the OpenAPI document ----------------------------------------------------------

def test_docs_load_swagger_ui_from_the_service_not_a_cdn(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "html" in r.headers["content-type"]
    assert not re.search(r"https?://", r.text), r.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for url in assets:
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 500, url
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_openapi_declares_the_key_the_errors_examples_and_enums(client):
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    (name, scheme), = schemes.items()
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    op = doc["paths"]["/score"]["post"]
    assert op["security"] == [{name: []}]  # Swagger UI's Authorize button and lock
    assert not any(p.get("name", "").lower() == "x-api-key" for p in op.get("parameters", []))
    for code in ("400", "401", "403", "413", "422", "503"):
        answer = op["responses"][code]
        example = answer["content"]["application/json"]["example"]
        assert answer["description"] and example["error"], code
    ok = op["responses"]["200"]["content"]["application/json"]
    ScoreResponse.model_validate(ok["example"])
    assert {r["status"] for r in ok["example"]["results"]} == {"ok", "not_found"}
    body = op["requestBody"]["content"]["application/json"]
    assert {"by_id", "inline"} <= set(body["examples"])

    lead = doc["components"]["schemas"]["LeadScore"]["properties"]

    def enum(prop):
        values = [v for alt in prop.get("anyOf", [prop]) for v in alt.get("enum", [])]
        return values, prop.get("description", "")

    for field, allowed in (("intent_grade", ["H", "A", "B", "C", "N"]),
                           ("contact_urgency", ["now", "within_3_days", "nurture"]),
                           ("best_channel", list(CHANNELS))):
        values, description = enum(lead[field])
        assert values == allowed, field
        assert all(f"`{v}`" in description for v in allowed), (field, description)
    slot = doc["components"]["schemas"]["SlotOut"]["properties"]["channel"]
    assert enum(slot)[0] == list(CHANNELS)


# --- metrics by route ------------------------------------------------------------------------

def _series(text: str, metric: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines()
            if line.startswith(metric) and not line.startswith("#")}


def test_made_up_paths_share_one_metrics_series(client):
    from leadscore.serving.metrics import UNMATCHED, HttpMetrics, render

    app = HttpMetrics(client.app, routes=client.app.routes)
    with TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(3):
            assert c.get(f"/{uuid.uuid4().hex}").status_code == 404
            c.post("/score", json={})
        c.get("/docs")
        before = render()[0].decode()
        for _ in range(300):
            c.get(f"/{uuid.uuid4().hex}/x")
            c.post(f"/score/{uuid.uuid4().hex}", json={})
        after = render()[0].decode()
    metric = "leadscore_http_request_total"
    assert _series(after, metric) == _series(before, metric)
    assert abs(len(after) - len(before)) < 200  # only the counts changed
    assert f'{metric}{{endpoint="{UNMATCHED}",http_response_code="404"}}' in after
    assert f'{metric}{{endpoint="/score",http_response_code="401"}}' in after
    assert f'{metric}{{endpoint="/docs",http_response_code="200"}}' in after


# --- leadscore keys --------------------------------------------------------------------------

def test_keys_add_list_revoke(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "conf" / "keys.json"
    run = CliRunner().invoke
    r = run(cli, ["keys", "add", "--tenant", "north", "--dealers", "D02, D01",
                  "--name", "crm-prod", "--file", str(path)])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert len(key) >= 40 and "\n" not in key  # stdout: the key alone
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = path.read_text()
    assert key not in stored and auth.digest(key) in stored
    ring = KeyRing.from_file(path)
    assert ring.verify(key) == auth.Tenant("north", frozenset({"D01", "D02"}))

    monkeypatch.setenv(auth.ENV, str(path))  # the default file
    r = run(cli, ["keys", "add", "--tenant", "south", "--dealers", "D03"])
    assert r.exit_code == 0, r.output
    other = r.stdout.strip()
    listed = run(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert key not in listed.stdout and other not in listed.stdout
    (first, _) = json.loads(path.read_text())["keys"]
    line = next(x for x in listed.stdout.splitlines() if "crm-prod" in x)
    assert line.split()[:3] == [first["sha256"][:12], "crm-prod", "north"]
    assert line.split()[-1] == "D01,D02" and first["created"].startswith("20")
    assert ring.verify(other).name == "south"  # the running ring read the changed file

    r = run(cli, ["keys", "revoke", first["sha256"][:8]])
    assert r.exit_code == 0, r.output
    assert ring.verify(key) is None and ring.verify(other).name == "south"
    assert [k["tenant"] for k in json.loads(path.read_text())["keys"]] == ["south"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keys_bad_input_exits_2_naming_the_file(tmp_path):
    run = CliRunner().invoke
    path = tmp_path / "keys.json"
    for args in (["add", "--tenant", "t", "--dealers", " , "],
                 ["add", "--tenant", " ", "--dealers", "D01"]):
        r = run(cli, ["keys", *args, "--file", str(path)])
        assert r.exit_code == 2 and not path.exists(), r.output
    r = run(cli, ["keys", "revoke", "abcdef12", "--file", str(path)])
    assert r.exit_code == 2 and "no such key file" in r.output
    write_key_file(path, {"t": (KEY, ["D01"])})  # the hand-written format: ids all the same
    listed = run(cli, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0 and auth.digest(KEY)[:12] in listed.stdout
    r = run(cli, ["keys", "revoke", "0" * 12, "--file", str(path)])
    assert r.exit_code == 2 and str(path) in r.output and "no key with id" in r.output
    path.write_text('{"keys": [{"tenant": "t", "sha256": "xyz", "dealers": ["D01"]}]}')
    r = run(cli, ["keys", "list", "--file", str(path)])
    assert r.exit_code == 2 and "keys.0.sha256" in r.output and str(path) in r.output


def test_a_running_key_ring_keeps_its_keys_when_the_file_breaks(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "RECHECK_SECONDS", 0.0)
    path = write_key_file(tmp_path / "keys.json", {"t": (KEY, ["D01"])})
    ring = KeyRing.from_file(path)
    path.write_text("{not json")
    assert ring.verify(KEY) is not None
    path.unlink()
    assert ring.verify(KEY) is not None
    write_key_file(path, {"u": ("other-key", ["D02"])})
    assert ring.verify(KEY) is None and ring.verify("other-key").name == "u"


def test_serve_uses_the_default_key_file_when_no_other_is_named(tmp_path, monkeypatch):
    import subprocess

    envs = []

    def fake(cmd, env=None, *args):
        envs.append(env)
        return 0

    monkeypatch.setattr(subprocess, "call", fake)
    monkeypatch.setattr(os, "execve", lambda path, cmd, env: fake(cmd, env))
    monkeypatch.delenv(auth.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    assert run(cli, ["serve"]).exit_code == 0
    assert auth.ENV not in envs[-1]  # none there: none named (every request gets 401)
    assert run(cli, ["keys", "add", "--tenant", "t", "--dealers", "D01"]).exit_code == 0
    assert run(cli, ["serve"]).exit_code == 0
    assert envs[-1][auth.ENV] == str(tmp_path / "api_keys.json")
    monkeypatch.setenv(auth.ENV, "/elsewhere/keys.json")
    assert run(cli, ["serve"]).exit_code == 0
    assert envs[-1][auth.ENV] == "/elsewhere/keys.json"
