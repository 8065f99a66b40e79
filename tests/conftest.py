"""Shared fixtures: small and generic (a DuckDB connection in the contract's UTC session)."""

from __future__ import annotations

import pytest

from leadscore import contract


@pytest.fixture
def con():
    c = contract.connect(threads=2)
    yield c
    c.close()


# --- simulated data and trained models, shared by training, serving and batch tests --------
# Session-scoped: simulating and training once keeps the suite within its time budget.

SIM_LEADS = 2500
SIM_DAYS = 150


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory):
    """A small simulated dealer group on disk (leads/events/contacts/truth)."""
    from leadscore import simulate as sim

    out = tmp_path_factory.mktemp("sim")
    sim.write(sim.simulate(sim.SimConfig(n_leads=SIM_LEADS, days=SIM_DAYS, seed=11)), out)
    return out


def private_env(root) -> pytest.MonkeyPatch:
    """A private MLflow store, BentoML home and feature cache under ``root``, which also
    becomes the working directory (MLflow's default artifact root lands there); ``undo()``
    the returned patch to leave."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    mp.setenv("BENTOML_HOME", str(root / "bentoml"))
    mp.setenv("LEADSCORE_CACHE", str(root / "cache"))
    mp.chdir(root)
    return mp


def model_reference(data, model, as_of):
    """The model's own probabilities on the feature job's rows (open leads at ``as_of``),
    indexed by lead: what every scoring path must give for that model."""
    from leadscore import contract
    from leadscore.features import catalog as cat
    from leadscore.features import job

    ds = contract.load(data)
    feats = cat.job_features(model.features)
    f = job.to_pandas(job.compute(ds.con, [as_of], feats, only_open=True), feats)
    return f.assign(p=model.predict_proba(f)).set_index("lead_id")


@pytest.fixture(scope="session")
def isolated_env(tmp_path_factory):
    """A private MLflow store, BentoML home and feature cache for the whole session."""
    root = tmp_path_factory.mktemp("env")
    mp = private_env(root)
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def trained(sim_data, isolated_env):
    """The four models (not the time-to-order horizons) trained once on the simulated data
    and registered as champions, plus the open leads' features at the last full day (for
    scoring tests)."""
    import pandas as pd

    from leadscore import contract, registry
    from leadscore.features import catalog, job
    from leadscore.models import NAMES, ORDER_NAMES
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    # the time-to-order horizons (order-7d ...) are trained by their own tests, not here
    names = [n for n in NAMES if n not in ORDER_NAMES]
    out = {name: train(sim_data, ExperimentConfig(model=name)) for name in names}
    ds = contract.load(sim_data)
    end = pd.Timestamp(ds.con.execute("SELECT max(ts) FROM events").df().iloc[0, 0])
    as_of = end.floor("D")
    out["as_of"] = as_of
    # the catalogue and the vocabulary the models were trained with (the simulator's
    # brochure_download), as serving computes them
    feats = catalog.job_features([f for n in names for f in registry.load(n)[0].features])
    out["features"] = job.to_pandas(job.compute(ds.con, [as_of], feats, only_open=True), feats)
    return out
