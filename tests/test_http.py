"""The service over real HTTP: ``bentoml serve`` in a subprocess, on a free loopback port.

It reads the session's registry (MLFLOW_TRACKING_URI) and BentoML home from ``isolated_env``, an
online store written from ``trained["features"]`` and a hashed key file. A slow test builds a
Bento from ``bentofile.yaml`` and serves the built Bento with no registry at all.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from leadscore import models, registry
from leadscore.serving import store as online
from leadscore.serving.api import MAX_BODY_BYTES
from leadscore.serving.auth import write_key_file

ROOT = Path(__file__).resolve().parents[1]
KEY = "http-suite-7d2e61c0"
HEADERS = {"X-API-Key": KEY}
SERVICE = "leadscore.serving.service:LeadScoreService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``bentoml serve`` process group; ``stop`` ends the group it started, nothing else."""

    def __init__(self, target: str, env: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=env, cwd=str(ROOT), stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait(self, path: str = "/readyz", status: int = 200, timeout: float = 180) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{path} never answered {status}:\n{self.output()[-3000:]}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def http_env(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    feats = trained["features"]
    online.write(feats, root / "features.db")
    dealers = sorted(feats["dealer_id"].astype(str).unique())
    keys = write_key_file(root / "keys.json", {"group": (KEY, dealers)})
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, LEADSCORE_STORE=str(root / "features.db"),
               LEADSCORE_API_KEYS=str(keys), LEADSCORE_RELOAD_SECONDS="0",
               BENTOML_DO_NOT_TRACK="True")
    return SimpleNamespace(root=root, env=env, ids=sorted(feats["lead_id"].astype(str))[:5],
                           dealers=dealers, as_of=trained["as_of"])


@pytest.fixture(scope="module")
def server(http_env):
    s = Server(SERVICE, http_env.env, http_env.root / "server.log")
    try:
        s.wait()
        yield s
    finally:
        s.stop()


def test_score_over_http(server, http_env):
    r = httpx.post(server.url + "/score", headers=HEADERS, timeout=30,
                   json={"leads": [{"lead_id": i} for i in http_env.ids], "reasons": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["lead_id"] for x in results] == http_env.ids
    champions = {}
    for name in results[0]["model_versions"]:
        champions[name] = registry.resolve(name).version
    for x in results:
        assert x["status"] == "ok"
        assert 0 <= x["p_convert"] <= 1 and 0 <= x["p_inquiry"] <= 1 and 0 <= x["p_churn"] <= 1
        assert x["intent_grade"] in set("HABCN") and 0 <= x["lead_score"] <= 100
        assert x["p_order_30d"] == x["p_convert"]
        assert x["reasons"] and x["model_versions"] == champions
        assert x["as_of"].endswith("Z")


def test_health_readiness_metrics_and_openapi(server, http_env):
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path
    r = httpx.post(server.url + "/score", headers=HEADERS,
                   json={"leads": [{"lead_id": http_env.ids[0]}]}, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ok"
    m = httpx.get(server.url + "/metrics", timeout=10)
    assert m.status_code == 200
    assert re.search(r'request_duration_seconds\w*\{[^}]*endpoint="/score"', m.text), \
        m.text[:2000]
    # the service's own: leads per pass of the models, and the pass's seconds
    passes = re.search(r"^leadscore_scoring_pass_rows_count\S* (\S+)$", m.text, re.M)
    assert passes and float(passes.group(1)) >= 1, m.text[:2000]
    assert re.search(r"^leadscore_scoring_pass_seconds_bucket\{", m.text, re.M)
    spec = httpx.get(server.url + "/openapi.json", timeout=10)
    assert spec.status_code == 200
    doc = spec.json()
    assert "/score" in doc["paths"] and "ScoreRequest" in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["ScoreRequest"].get("examples")
    docs = httpx.get(server.url + "/docs", timeout=10)
    assert docs.status_code == 200 and "html" in docs.headers["content-type"]


def test_errors_over_http(server):
    url = server.url + "/score"
    assert httpx.post(url, json={"leads": [{"lead_id": "a"}]}, timeout=10).status_code == 401
    r = httpx.post(url, content=b'{"leads": [', timeout=10,
                   headers={**HEADERS, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("(body)")
    r = httpx.post(url, json={"leads": [{"lead_id": "a", "budget": "lots"}]}, headers=HEADERS,
                   timeout=10)
    assert r.status_code == 422 and r.json()["error"].startswith("leads.0.budget")
    r = httpx.post(url, content=b"x" * (MAX_BODY_BYTES + 1), timeout=30,
                   headers={**HEADERS, "Content-Type": "application/json"})
    assert r.status_code == 413
    junk = b'{"leads": [' + b"[" * (MAX_BODY_BYTES - 100)  # the key is checked first
    for headers in ({}, {"X-API-Key": "wrong"}):
        t0 = time.monotonic()
        r = httpx.post(url, content=junk, timeout=30,
                       headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 401 and time.monotonic() - t0 < 5
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200  # still serving


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """The service with no registry and no models (not ready): enough for what answers
    without scoring (metrics, docs, probes), and quick to start."""
    root = tmp_path_factory.mktemp("bare")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, LEADSCORE_STORE=str(root / "features.db"),
               LEADSCORE_API_KEYS=str(write_key_file(root / "keys.json",
                                                     {"group": (KEY, ["D01"])})),
               MLFLOW_TRACKING_URI=f"file:{root / 'no-registry'}",
               BENTOML_HOME=str(root / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    s = Server(SERVICE, env, root / "server.log")
    try:
        s.wait("/livez")
        yield s
    finally:
        s.stop()


def test_made_up_paths_do_not_grow_metrics(bare_server):
    """Each unknown path used to add series to /metrics for good (BentoML labels requests by
    raw path): a scan of random URLs grew it by megabytes. Requests are labelled by route,
    every unknown path in one bucket."""
    import uuid

    url = bare_server.url
    with httpx.Client(timeout=10) as c:
        for _ in range(3):  # every series the scan below can touch exists already
            c.get(f"{url}/{uuid.uuid4().hex}")
            c.get(f"{url}/metrics")
        before = c.get(f"{url}/metrics").text
        for _ in range(300):
            assert c.get(f"{url}/{uuid.uuid4().hex}/{uuid.uuid4().hex}").status_code == 404
        after = c.get(f"{url}/metrics").text
    assert len(after) - len(before) < 500, (len(before), len(after))
    assert re.search(r'^leadscore_http_request_total\{endpoint="unmatched",'
                     r'http_response_code="404"\} (\d+)', after, re.M)
    assert not re.search(r'endpoint="/[0-9a-f]{32}', after)


def test_docs_work_offline(bare_server):
    docs = httpx.get(bare_server.url + "/docs", timeout=10)
    assert docs.status_code == 200 and not re.search(r"https?://", docs.text)
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert len(assets) >= 3
    for asset in assets:
        assert httpx.get(bare_server.url + asset, timeout=10).status_code == 200, asset
    spec = httpx.get(bare_server.url + "/openapi.json", timeout=10).json()
    assert spec["paths"]["/score"]["post"]["security"]


def test_server_output_has_no_personal_data(server, http_env):
    lead_id, city = "PII-HTTP-41c7", "Hiddenhamlet-Qz"
    lead = {"lead_id": lead_id, "dealer_id": http_env.dealers[0], "city": city,
            "budget": 123456.75, "created_at": "2026-01-10T08:00:00Z",
            "events": [{"ts": "2026-01-12T10:00:00Z", "event_type": "finance_calc",
                        "value": 123456.75}]}
    r = httpx.post(server.url + "/score", headers=HEADERS, timeout=30,
                   json={"leads": [lead], "as_of": "2026-02-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    bad = httpx.post(server.url + "/score", headers=HEADERS, timeout=30,
                     json={"leads": [{**lead, "tz": city}]})
    assert bad.status_code == 422
    time.sleep(0.5)
    out = server.output()
    for secret in (lead_id, city, "123456", KEY):
        assert secret not in out, secret


@pytest.mark.slow
def test_not_ready_without_models_over_http(http_env, tmp_path):
    env = dict(http_env.env, MLFLOW_TRACKING_URI=f"file:{tmp_path / 'no-registry'}",
               BENTOML_HOME=str(tmp_path / "bentoml"))
    s = Server(SERVICE, env, tmp_path / "server.log")
    try:
        s.wait("/livez")
        assert httpx.get(s.url + "/readyz", timeout=10).status_code == 503
        r = httpx.post(s.url + "/score", headers=HEADERS, json={"leads": [{"lead_id": "a"}]},
                       timeout=10)
        assert r.status_code == 503
    finally:
        s.stop()


@pytest.mark.slow
def test_built_bento_serves_without_the_registry(http_env, tmp_path):
    """``bentoml build`` packs the service and the imported champions; the built Bento then
    serves /score from its own models with no MLflow registry reachable."""
    from leadscore.serving.runtime import load_from_bento_store

    assert load_from_bento_store().models  # champions imported into the BentoML store
    build = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                           cwd=str(ROOT), env=http_env.env, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    tag = re.search(r"__tag__:(\S+)", build.stdout).group(1)
    import bentoml

    from leadscore.serving.runtime import champion_model

    packed = [n for n in models.NAMES if n not in models.ORDER_NAMES]  # the Bento declares
    champions = {str(champion_model(n, registry.resolve(n))[0].tag) for n in packed}
    assert {str(m.tag) for m in bentoml.bentos.get(tag).info.all_models} == champions
    env = dict(http_env.env, MLFLOW_TRACKING_URI=f"file:{tmp_path / 'no-registry'}")
    s = Server(tag, env, tmp_path / "bento.log")
    try:
        s.wait()
        r = httpx.post(s.url + "/score", headers=HEADERS, timeout=30,
                       json={"leads": [{"lead_id": i} for i in http_env.ids[:2]]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["ok", "ok"]
        assert {"conversion", "contact", "churn"} <= set(results[0]["model_versions"])
    finally:
        s.stop()

