"""The reference for ``benchmarks/serving.py``: the least a by-id scoring server has to do.

A bare Starlette app on uvicorn, no framework around it: load the champion
:class:`~leadscore.artifact.LeadModel` of each model from the MLflow registry, and per request
check the API key's hash, read the leads' rows from the same SQLite online store, build the
float matrix LightGBM sees (category codes by hand), run ``pred_contrib``, calibrate, pick the top
reasons and answer JSON. Same request body as ``POST /score`` (leads by id only).

    MLFLOW_TRACKING_URI=sqlite:///mlruns.db python benchmarks/bare_app.py \
        --store features.db --keys keys.json --port 3100 [--workers 1]

With ``--workers`` > 1 the workers are forked onto one listening socket, as BentoML's are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sqlite3
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"conversion": "p_convert", "contact": "p_inquiry", "churn": "p_churn"}
URGENCY = {"A": "now", "B": "within_3_days", "C": "nurture", "D": "nurture"}


class Compiled:
    """One model ready for numpy input: feature order and category → code maps."""

    def __init__(self, lm):
        from leadscore.features import catalog

        self.lm = lm
        self.features = list(lm.features)
        cats = lm.booster.pandas_categorical or []
        cat_feats = [f for f in self.features if f in lm.categories]
        self.codes = {f: {v: float(i) for i, v in enumerate(levels)}
                      for f, levels in zip(cat_feats, cats, strict=True)}
        self.says = [catalog.feature(f) for f in self.features]

    def matrix(self, rows: list[dict]) -> np.ndarray:
        x = np.full((len(rows), len(self.features)), np.nan)
        for i, r in enumerate(rows):
            for j, f in enumerate(self.features):
                v = r.get(f)
                if v is None:
                    continue
                m = self.codes.get(f)
                if m is not None:
                    x[i, j] = m.get(v, math.nan)
                else:
                    x[i, j] = float(v)
        return x


def create_app(store: Path, keys: Path):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from leadscore import registry

    models = {}
    for name in MODELS:
        got = registry.load(name)
        if got is not None:
            models[name] = Compiled(got[0])
    versions = {n: str(c.lm.meta.get("version")) for n, c in models.items()}
    key_file = json.loads(Path(keys).read_text())["keys"]
    tenants = {bytes.fromhex(k["sha256"]): frozenset(k["dealers"]) for k in key_file}
    local = threading.local()

    def con() -> sqlite3.Connection:
        c = getattr(local, "con", None)
        if c is None:
            c = local.con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        return c

    async def score(request: Request) -> Response:
        key = request.headers.get("x-api-key")
        dealers = tenants.get(hashlib.sha256(key.encode()).digest()) if key else None
        if dealers is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        body = json.loads(await request.body())
        ids = [lead["lead_id"] for lead in body["leads"]]
        top = int(body.get("reasons", 3))
        q = ",".join("?" * len(ids))
        rows = []
        for lid, did, as_of, row in con().execute(
                f"SELECT lead_id, dealer_id, as_of, row FROM features WHERE lead_id IN ({q})",
                ids):
            if did in dealers:
                rows.append({"lead_id": lid, "dealer_id": did, "as_of": as_of,
                             **json.loads(row)})
        out = [{"lead_id": r["lead_id"], "status": "ok", "dealer_id": r["dealer_id"],
                "as_of": r["as_of"], "p_convert": None, "lead_score": None, "intent_grade": None,
                "p_inquiry": None, "contact_urgency": None, "best_slot_start": None,
                "best_channel": None, "p_response": None, "p_churn": None, "reasons": [],
                "model_versions": versions} for r in rows]
        for name, c in models.items():
            contrib = c.lm.booster.predict(c.matrix(rows), pred_contrib=True, num_threads=1)
            p = c.lm.calibrator(contrib.sum(axis=1))
            grades = c.lm.grade(p)
            for i, o in enumerate(out):
                o[MODELS[name]] = float(p[i])
                if name == "conversion":
                    o["lead_score"], o["intent_grade"] = round(float(p[i]) * 100), str(grades[i])
                elif name == "contact":
                    o["contact_urgency"] = URGENCY[str(grades[i])]
                ci = contrib[i, :-1]
                order = np.argsort(-ci)
                pos = [j for j in order[:top] if ci[j] > 0]
                neg = [j for j in order[::-1][:top] if ci[j] < 0]
                for j in (*pos, *neg):
                    v = rows[i].get(c.features[j])
                    o["reasons"].append({"model": name, "feature": c.features[j], "value": v,
                                         "contribution": round(float(ci[j]), 6),
                                         "sentence": c.says[j].sentence(v)})
        found = {o["lead_id"] for o in out}
        out += [{"lead_id": i, "status": "not_found"} for i in ids if i not in found]
        return Response(json.dumps({"results": out}), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/score", score, methods=["POST"]),
                             Route("/healthz", healthz)])


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--keys", type=Path, required=True)
    ap.add_argument("--port", type=int, default=3100)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if args.workers > 1:
        serve_forked(args)
    else:
        uvicorn.run(create_app(args.store, args.keys), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False)


def serve_forked(args) -> None:
    """Worker processes on one listening socket, as BentoML runs the service. Not uvicorn's
    own multi-process mode: its workers' connections never got TCP_NODELAY, so every
    keep-alive request after the first waited ~40 ms for a delayed ACK (Nagle), which made
    the 2-worker reference meaningless."""
    import signal
    import socket

    import uvicorn

    # proto given explicitly: asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # a worker: models loaded here, after the fork
            config = uvicorn.Config(create_app(args.store, args.keys), log_level="warning",
                                    access_log=False)
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
        children.append(pid)

    def stop(signum, frame):
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
