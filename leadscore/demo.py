"""`leadscore demo`: the whole product on embedded defaults, narrated.

simulate → validate → features → train (three models, tracked in MLflow) → metrics with the
gap to the simulator's oracle. Every step uses the same code paths as the real commands.
"""

from __future__ import annotations

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


def run(workdir: Path, n_leads: int = 20_000) -> None:
    from leadscore import simulate as sim
    from leadscore.features import job
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    workdir = Path(workdir)
    data = workdir / "data"

    t0 = _step(f"1. Simulating a dealer group: {n_leads:,} leads over 180 days")
    summary = sim.write(sim.simulate(sim.SimConfig(n_leads=n_leads, days=180, seed=7)), data)
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
        res = train(data, ExperimentConfig(model=name, run_name=f"{name}-demo"))
        m = res.metrics
        rows.append({
            "model": name, "version": f"v{res.version} ({res.alias})",
            "roc_auc": m["roc_auc"], "oracle_auc": m.get("oracle_auc", float("nan")),
            "gap": m.get("oracle_gap", float("nan")), "ece": m["ece"],
            "lift@10%": m["lift_top10"], "seconds": time.perf_counter() - t1,
        })
    table = pd.DataFrame(rows)
    typer.echo("   " + table.to_string(index=False, float_format=lambda x: f"{x:.3f}")
               .replace("\n", "\n   "))
    _done(t0)

    uri = registry.tracking_uri()
    typer.secho("\nOpen the runs, plots and model cards in MLflow:", bold=True)
    typer.echo(f"   .venv/bin/mlflow ui --backend-store-uri {uri}")
