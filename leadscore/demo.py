"""`leadscore demo`: the whole product on embedded defaults, narrated.

simulate → validate → features → train (three models, tracked in MLflow) → metrics with the
gap to the simulator's oracle. Every step uses the same code paths as the real commands.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pandas as pd
import typer

from leadscore import contract, registry
from leadscore.models import NAMES


def _step(title: str) -> float:
    typer.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    typer.echo(f"   ({time.perf_counter() - t0:.1f}s)")


def run(workdir: Path, n_leads: int = 20_000, rules=None, lang: str = "en") -> None:
    """``rules``: the contact rules to train and rescore with (the CLI reads them at the edge;
    the service started here reads ``LEADSCORE_CONTACT_RULES`` itself); ``lang``: the nightly
    reasons' and the worklist's language."""
    from leadscore import simulate as sim
    from leadscore.features import job
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    workdir = Path(workdir)
    data = workdir / "data"

    t0 = _step(f"1. Simulating a dealer group: {n_leads:,} leads over 180 days")
    # leads keep arriving to the last day, so the night's worklist has new leads beside old
    # ones, as a live dealer's has
    summary = sim.write(sim.simulate(sim.SimConfig(n_leads=n_leads, days=180, seed=7,
                                                   arrival_share=1.0)), data)
    for k, v in summary.items():
        if not isinstance(v, dict):
            typer.echo(f"   {k}: {v}")
    _done(t0)

    t0 = _step("2. Validating the files against the data contract")
    ds = contract.load(data, quarantine_dir=data / "quarantine")
    typer.echo("   " + ds.summary().replace("\n", "\n   "))
    _done(t0)

    t0 = _step("3. Point-in-time features at the last day of data")
    _, end = pd.Timestamp(0, tz="UTC"), pd.Timestamp(
        ds.con.execute("SELECT max(ts) FROM events").df().iloc[0, 0]
    )
    as_of = end.floor("D")
    feats = job.to_pandas(job.compute(ds.con, [as_of], only_open=True))
    feats.to_parquet(workdir / "features.parquet")
    typer.echo(f"   {len(feats):,} open leads × {feats.shape[1] - 5} features at {as_of}")
    cols = ["lead_id", "browse_7d", "config_view_7d", "finance_calc_7d", "night_share_14d",
            "days_since_any"]
    top = feats.sort_values("finance_calc_7d", ascending=False).head(5)[cols]
    typer.echo("   " + top.to_string(index=False).replace("\n", "\n   "))
    _done(t0)

    t0 = _step(f"4. Training {', '.join(NAMES)} (tracking: {registry.tracking_uri()})")
    rows = []
    for name in NAMES:
        t1 = time.perf_counter()
        res = train(data, ExperimentConfig(model=name, run_name=f"{name}-demo"), rules=rules)
        m = res.metrics
        rows.append({
            "model": name, "version": f"v{res.version} ({res.alias})",
            "roc_auc": m["roc_auc"], "oracle_auc": m.get("oracle_auc", float("nan")),
            "gap": m.get("oracle_gap", float("nan")), "ece": m["ece"],
            "lift@10%": m["lift_top10"], "seconds": time.perf_counter() - t1,
            "policy_gain": m.get("policy_gain_share", float("nan")),
        })
    table = pd.DataFrame(rows)
    typer.echo("   " + table.to_string(index=False, float_format=lambda x: f"{x:.3f}")
               .replace("\n", "\n   "))
    _done(t0)

    t0 = _step("5. Serving: the CRM asks for scores over HTTP (BentoML on localhost)")
    from leadscore.features import catalog
    from leadscore.serving import store as online

    # the store holds what the champions read: the catalogue and their vocabulary
    need = [*catalog.CATALOG, *catalog.vocabulary_features(registry.champions_vocabulary(NAMES))]
    online.write(job.to_pandas(job.compute(ds.con, [as_of], need, only_open=True), need),
                 workdir / "features.db")
    _serve_and_ask(workdir, feats, data, as_of, lang)
    _done(t0)

    t0 = _step("6. Nightly rescoring of every open lead (embedded engine)")
    from leadscore import worklist
    from leadscore.nightly import batch

    res = batch.rescore(data, as_of, workdir / "scores", force=True, bucket_leads=10_000,
                        rules=rules, lang=lang)
    scored = pd.read_parquet(workdir / "scores")
    typer.echo(f"   {res.rows:,} rows in {res.buckets} buckets → {workdir / 'scores'} "
               f"({res.seconds:.1f}s)")
    grades = scored["intent_grade"].value_counts().reindex(["H", "A", "B", "C", "N"]).fillna(0)
    typer.echo("   intent grades: " + ", ".join(f"{g} {int(n):,}" for g, n in grades.items()))
    typer.secho("   The advisor's worklist (leadscore worklist --scores "
                f"{workdir / 'scores'} --lang {lang}):", bold=True)
    for line in worklist.lines(scored, top=5, lang=lang):
        typer.echo(f"   {line}")
    _done(t0)

    uri = registry.tracking_uri()
    typer.secho("\nOpen the runs, plots and model cards in MLflow:", bold=True)
    typer.echo(f"   .venv/bin/mlflow ui --backend-store-uri {uri}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_ask(workdir: Path, feats: pd.DataFrame, data: Path, as_of: pd.Timestamp,
                   lang: str = "en") -> None:
    """Start `leadscore serve` in the background, send CRM-style requests, stop it."""
    import os
    import secrets
    import subprocess
    import sys

    import httpx

    from leadscore.scoring.contact_policy import local_label
    from leadscore.serving.auth import write_key_file

    def when(local: str | None) -> str:
        return local_label(local) if local else "-"

    key = secrets.token_urlsafe(24)
    dealers = sorted(feats["dealer_id"].unique().tolist())
    keys = write_key_file(workdir / "api_keys.json", {"demo-group": (key, dealers)})
    port = _free_port()
    env = dict(os.environ, LEADSCORE_RELOAD_SECONDS="0")
    cmd = [sys.executable, "-m", "leadscore.cli", "serve", "--port", str(port),
           "--store", str(workdir / "features.db"), "--api-keys", str(keys)]
    log = (workdir / "serve.log").open("w")
    # its own process group: stopping the demo's server stops every process it started
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited; see {workdir / 'serve.log'}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the service did not become ready; see {workdir / 'serve.log'}")
        typer.echo(f"   service ready on {base} (OpenAPI at {base}/docs)")
        hot = feats.sort_values("finance_calc_7d", ascending=False)["lead_id"].head(2).tolist()
        asking = {"X-API-Key": key, "Accept-Language": lang}
        body = {"leads": [{"lead_id": i} for i in hot], "reasons": 3}
        r = httpx.post(f"{base}/score", json=body, headers=asking, timeout=30)
        typer.echo(f"   POST /score by lead_id → {r.status_code}")
        for res in r.json()["results"]:
            typer.echo(f"   {res['lead_id']}: score {res['lead_score']} "
                       f"(intent {res['intent_grade']}), urgency {res['contact_urgency']}, "
                       f"churn risk {res['p_churn']:.0%}, "
                       f"best {res['best_channel']} at {when(res['best_slot_local'])}")
            for reason in res["reasons"]:
                sign = "+" if reason["contribution"] > 0 else "-"
                typer.echo(f"       {sign} [{reason['model']}] {reason['sentence']}")
        inline = {"as_of": as_of.isoformat(), "leads": [{
            "lead_id": "web-demo-1", "dealer_id": dealers[0],
            "created_at": (as_of - pd.Timedelta(days=2)).isoformat(), "source": "website",
            "events": [
                {"ts": (as_of - pd.Timedelta(hours=h)).isoformat(), "event_type": t}
                for h, t in ((30, "page_view"), (29, "config_view"), (28, "config_view"),
                             (27, "finance_calc"), (5, "config_view"), (4, "finance_calc"))
            ],
        }]}
        r = httpx.post(f"{base}/score", json=inline, headers=asking, timeout=30)
        res = r.json()["results"][0]
        typer.echo(f"   POST /score with inline events → {r.status_code}: score "
                   f"{res['lead_score']} (intent {res['intent_grade']}), "
                   f"urgency {res['contact_urgency']}")
        r = httpx.post(f"{base}/score", json=body, timeout=30)
        typer.echo(f"   without an API key → {r.status_code}")
    finally:
        _stop(proc)
        log.close()
    typer.echo("   service stopped")


def _stop(proc, grace: float = 30) -> None:
    """SIGTERM to the server (``leadscore serve`` execs ``bentoml serve``, which stops its
    workers), then SIGKILL to whatever of its process group is still there."""
    import os
    import signal
    import subprocess

    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader only on failure
    proc.wait()
