"""Nightly rescoring (embedded engine): the output contract, kill and resume, no-op reruns,
CSV export, bad input rows, and partial registries.

The models come from :func:`quick_registry`: small LightGBM models with each real spec's
features, parameters, categories and calibration, registered as champions in a private MLflow
store. Batch behaviour does not depend on how well a model was trained, and this costs seconds
where the full training pipeline (the ``trained`` fixture) costs minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from leadscore import contract, models, registry
from leadscore.artifact import Calibrator, LeadModel
from leadscore.cli import app
from leadscore.features import job
from leadscore.features.slots import add_slot_features
from leadscore.nightly import batch, intake, per_bucket, watch
from leadscore.nightly import previous as last_run
from leadscore.schema import CHANNELS
from leadscore.scoring import changes, intent
from leadscore.scoring.scorer import OUTPUT_COLUMNS, SLOT_MODEL, Scorer
from leadscore.training import trainer

ROOT = Path(__file__).resolve().parents[1]
PROBAS = ["p_convert", "p_order_7d", "p_order_15d", "p_order_30d", "p_order_90d",
          "p_inquiry", "p_response", "p_churn"]
REASON_KEYS = {"model", "feature", "value", "contribution", "sign", "sentence"}


# --------------------------------------------------------------------------- models


def _labels(frame: pd.DataFrame, features: list[str], rng) -> np.ndarray:
    """A noisy label that depends on a handful of the features (so trees split on them)."""
    num = [f for f in features if pd.api.types.is_numeric_dtype(frame[f])][:8]
    score = frame[num].rank(pct=True).mean(axis=1).fillna(0.5).to_numpy()
    return (rng.random(len(frame)) < 0.15 + 0.7 * score).astype(int)


def _quick_model(name: str, frame: pd.DataFrame, rng) -> LeadModel:
    spec = models.get(name)
    features = list(spec.features)
    y = _labels(frame, features, rng)
    cats = trainer.categories_of(frame, features)
    proto = LeadModel(name, booster=None, features=features, categories=cats,  # type: ignore[arg-type]
                      calibrator=Calibrator("none"))
    # one thread: OpenMP's spinning threads crawl on a busy machine (45 s instead of 0.3 s)
    params = trainer.booster_params(spec, features, seed=0, num_threads=1)
    params["metric"] = ["binary_logloss"]
    booster = lgb.train(params, lgb.Dataset(proto.frame(frame), label=y,
                                            categorical_feature=list(cats)),
                        num_boost_round=30)
    model = LeadModel(name=name, booster=lgb.Booster(model_str=booster.model_to_string()),
                      features=features, categories=cats, calibrator=Calibrator("none"),
                      grades=spec.grades, label=spec.label.describe())
    model.calibrator = trainer.fit_calibrator(spec.calibration, model.raw(frame), y)
    return model


def _training_frames(data_dir: Path, rng) -> tuple[dict[str, pd.DataFrame], pd.Timestamp]:
    ds = contract.load(data_dir)
    end = pd.Timestamp(ds.con.execute("SELECT max(ts) FROM events").df().iloc[0, 0]).floor("D")
    cutoffs = [end - pd.Timedelta(days=d) for d in (60, 30, 0)]
    feats = job.to_pandas(job.compute(ds.con, cutoffs))
    ds.con.close()
    sample = feats.sample(4000, replace=True, random_state=0).reset_index(drop=True)
    slot_start = pd.to_datetime(sample["as_of"], utc=True) + pd.to_timedelta(
        rng.integers(1, 72, len(sample)), unit="h")
    slots = add_slot_features(sample, slot_start, sample["tz"],
                              pd.Series(rng.choice(list(CHANNELS), len(sample))))
    return {"lead": feats, "slot": slots}, end


def quick_registry(base: Path, data_dir: Path) -> SimpleNamespace:
    """All four models registered as champions in ``base/mlruns.db`` (built once per base
    folder), plus ``base/nochurn.db``: a copy whose churn model has no champion."""
    uri = f"sqlite:///{base / 'mlruns.db'}"
    nochurn = f"sqlite:///{base / 'nochurn.db'}"
    info = base / "registry.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        return SimpleNamespace(uri=uri, nochurn_uri=nochurn, as_of=pd.Timestamp(meta["as_of"]),
                               versions=meta["versions"])
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    frames, end = _training_frames(data_dir, rng)
    versions = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(base)  # MLflow's default artifact root
        for name in models.NAMES:
            frame = frames["slot" if name == SLOT_MODEL else "lead"]
            model = _quick_model(name, frame, rng)
            spec = models.get(name)
            days = {m: d for d, m in intent.HORIZON_MODELS.items()}.get(name)
            if days is not None:  # as training stores it: a quantile of its scores
                model.meta[intent.META_KEY] = intent.threshold_meta(
                    model.predict_proba(frame), days)
            _, version = registry.log_model(model, frame[model.features].head(20),
                                            spec.registered_name)
            registry.set_alias(name, registry.CHAMPION, version)
            versions[name] = version
        with sqlite3.connect(base / "mlruns.db") as src, \
                sqlite3.connect(base / "nochurn.db") as dst:
            src.backup(dst)
        mp.setenv("MLFLOW_TRACKING_URI", nochurn)
        registry.client().delete_registered_model_alias(
            registry.registered_name("churn"), registry.CHAMPION)
    info.write_text(json.dumps({"as_of": str(end), "versions": versions}))
    return SimpleNamespace(uri=uri, nochurn_uri=nochurn, as_of=end, versions=versions)


def small_data(base: Path, data_dir: Path) -> Path:
    """A quarter of the simulated leads (by a hash of the id), with their events and
    contacts: the same kinds of rows, scored in a quarter of the time."""
    if (base / "contacts.parquet").is_file():
        return base
    base.mkdir(parents=True, exist_ok=True)
    con = contract.connect()
    for table in ("leads", "events", "contacts"):
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{data_dir / table}.parquet') "
            f"WHERE hash(lead_id) % 4 = 0) TO '{base / table}.parquet' (FORMAT parquet)")
    con.close()
    return base


@pytest.fixture(scope="module")
def reg(sim_data, tmp_path_factory):
    return quick_registry(tmp_path_factory.getbasetemp() / "quick_registry", sim_data)


@pytest.fixture(scope="module")
def data(sim_data, tmp_path_factory):
    return small_data(tmp_path_factory.getbasetemp() / "small_data", sim_data)


@pytest.fixture
def env(reg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    return reg


@pytest.fixture(scope="module")
def reference(reg, data, tmp_path_factory):
    """One uninterrupted embedded run with default settings, and its output frame."""
    out = tmp_path_factory.mktemp("reference") / "scores"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", reg.uri)
        res = batch.rescore(data, reg.as_of, out)
    return SimpleNamespace(out=out, res=res, frame=read_sorted(out))


# --------------------------------------------------------------------------- helpers


def assert_same_scores(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same rows and values; probabilities equal to 1e-12, everything else exactly."""
    assert list(a.columns) == list(b.columns)
    assert a.dtypes.to_dict() == b.dtypes.to_dict()
    assert a["lead_id"].tolist() == b["lead_id"].tolist()
    for c in PROBAS:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=0,
                                   atol=1e-12, equal_nan=True, err_msg=c)
    rest = [c for c in a.columns if c not in PROBAS]
    pd.testing.assert_frame_equal(a[rest].reset_index(drop=True),
                                  b[rest].reset_index(drop=True), check_exact=True)


def first_night(scored: pd.DataFrame) -> pd.DataFrame:
    """The scorer's rows as a run with no previous run to compare with writes them."""
    return scored.assign(**changes.compare(scored, None))


def read_sorted(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("lead_id").reset_index(drop=True)


def visible_parts(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.parquet") if not p.name.startswith((".", "_")))


def assert_readable(out: Path) -> int:
    """Every file a reader can see is a whole part, and the folder reads as one table."""
    parts = visible_parts(out)
    for p in parts:
        pq.read_table(p)  # raises on a truncated file
    if not parts:
        return 0
    return len(pd.read_parquet(out))


def copy_data(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("leads.parquet", "events.parquet", "contacts.parquet"):
        shutil.copy(src / name, dst / name)
    return dst


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


# --------------------------------------------------------------------------- tests


def test_output_is_one_row_per_open_lead_or_owner_with_the_contract_columns(
        reference, reg, data, monkeypatch):
    df = reference.frame
    assert list(df.columns) == list(OUTPUT_COLUMNS)
    # DuckDB reads the same folder as one table
    (n_duck,) = duckdb.sql(
        f"SELECT count(*), count(DISTINCT lead_id) FROM read_parquet('{reference.out}/*.parquet')"
    ).fetchall()
    assert n_duck == (len(df), len(df)) == (reference.res.rows, reference.res.rows)

    # entities, computed independently over the whole (unbucketed) data set
    ds = contract.load(data)
    feats = job.to_pandas(job.compute(ds.con, [reg.as_of]))
    entities = feats[feats["is_open"] | feats["is_owner"]].sort_values("lead_id")
    assert df["lead_id"].tolist() == entities["lead_id"].tolist()
    assert df["dealer_id"].tolist() == entities["dealer_id"].astype(str).tolist()

    # timestamps are UTC
    assert str(df["as_of"].dtype) == "datetime64[us, UTC]"
    assert str(df["best_slot_start"].dtype) == "datetime64[us, UTC]"
    assert (df["as_of"] == reg.as_of).all()
    has_slot = df["best_slot_start"].notna()
    assert has_slot.any()
    assert (df.loc[has_slot, "best_slot_start"] >= reg.as_of).all()
    # beside them, the local time in each lead's zone (the entities' ``tz``, set by the contract)
    zones = entities.set_index("lead_id")["tz"].astype(str)
    assert (df["best_slot_local"].notna() == has_slot).all()
    for r in df[has_slot].itertuples():
        want = r.best_slot_start.tz_convert(zones[r.lead_id]).isoformat(timespec="seconds")
        assert r.best_slot_local == want

    # scores where they belong: lead models for open leads, churn for everyone
    open_ = df["lead_id"].isin(entities.loc[entities["is_open"], "lead_id"]).to_numpy()
    assert open_.any() and (~open_).any()
    for c in ("p_convert", "p_order_7d", "p_order_15d", "p_order_30d", "p_order_90d",
              "p_inquiry", "lead_score", "intent_grade", "contact_urgency"):
        assert df.loc[open_, c].notna().all(), c
        assert df.loc[~open_, c].isna().all(), c
    assert df["p_churn"].notna().all()
    for c in PROBAS:
        v = df[c].dropna()
        assert ((v >= 0) & (v <= 1)).all(), c
    assert (df.loc[open_, "lead_score"] == np.rint(df.loc[open_, "p_convert"] * 100)).all()
    assert set(df.loc[open_, "intent_grade"]) <= set("HABCN")
    # time to order: p_order_30d is p_convert; non-decreasing in the horizon
    assert (df.loc[open_, "p_order_30d"] == df.loc[open_, "p_convert"]).all()
    horizons = df.loc[open_, ["p_order_7d", "p_order_15d", "p_order_30d", "p_order_90d"]]
    assert (horizons.diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert set(df.loc[has_slot, "best_channel"]) <= set(CHANNELS)

    # reasons are JSON lists of whole reasons; model versions are JSON
    churn_rows = 0
    for text, is_open in zip(df["reasons"], open_, strict=True):
        rs = json.loads(text)
        assert isinstance(rs, list) and rs
        assert all(set(r) == REASON_KEYS and r["sentence"] for r in rs)
        per_model = pd.Series([r["model"] for r in rs]).value_counts()
        assert (per_model <= 3).all()  # at most 3 per model, for and against together
        assert len({r["sentence"] for r in rs}) == len(rs)  # each sentence once per row
        assert ("conversion" in per_model) == is_open
        # churn's own words for an owner; for an open lead they may all have been said by
        # the models before it
        assert "churn" in per_model or is_open
        churn_rows += "churn" in per_model
    assert churn_rows > len(df) / 2
    assert {json.dumps(reg.versions, sort_keys=True)} == {
        json.dumps(json.loads(v), sort_keys=True) for v in df["model_versions"]}

    # bucketing and the batch TreeSHAP change nothing: the scorer as HTTP uses it (LightGBM's
    # pred_contrib), over the whole feature frame, gives the same rows and reasons
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    scorer = Scorer.from_registry()
    sample = entities.head(400)
    direct = pd.concat([
        scorer.score(sample[sample["is_open"]]),
        scorer.score(sample[~sample["is_open"]], only={"churn"}),
    ]).sort_values("lead_id")
    got = df.set_index("lead_id").loc[direct["lead_id"]].reset_index()
    assert_same_scores(got, per_bucket.fmt_types(first_night(direct)).reset_index(drop=True))


def _watch(proc: subprocess.Popen, out: Path, until_first_part: bool) -> int:
    """Read the output folder as a reader would, every 20 ms, while ``proc`` runs (until its
    first recorded part, or to its end); returns how many times the folder was read."""
    manifest = out / batch.MANIFEST
    reads = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file():
            parts = json.loads(manifest.read_text())["parts"]
            assert_readable(out)
            reads += 1
            if until_first_part and parts:
                break
        time.sleep(0.02)
    return reads


def test_killed_run_resumes_to_the_same_result_and_readers_never_see_partial_files(
        reference, env, data, tmp_path):
    out = tmp_path / "scores"
    cmd = [sys.executable, "-m", "leadscore.cli", "rescore", "--data", str(data), "--as-of",
           str(env.as_of), "--out", str(out), "--bucket-leads", "100"]
    run_env = dict(os.environ, PYTHONPATH=str(ROOT))
    manifest = out / batch.MANIFEST
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert _watch(proc, out, until_first_part=True) > 0
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    m = json.loads(manifest.read_text())
    assert not m["complete"] and m["buckets"] >= 5 and 1 <= len(m["parts"]) < m["buckets"]
    assert assert_readable(out) == sum(p["rows"] for p in m["parts"].values())

    with open(tmp_path / "second.log", "w") as log:
        proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _watch(proc, out, until_first_part=False)  # readers during the resumed run too
            assert proc.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    resumed = json.loads(manifest.read_text())
    assert resumed["complete"] and len(resumed["parts"]) == m["buckets"]
    assert f"({len(m['parts'])} resumed)" in (tmp_path / "second.log").read_text()
    for b, part in m["parts"].items():  # parts written before the kill are kept, not redone
        assert resumed["parts"][b] == part
    assert not list(out.glob(".*.tmp")) and not (out / "_work").exists()

    got = read_sorted(out)
    assert len(got) == reference.res.rows == resumed["rows"]
    assert not got["lead_id"].duplicated().any()
    pd.testing.assert_frame_equal(got, reference.frame, check_exact=True)


def test_rerun_is_a_noop_unless_forced_and_other_inputs_are_refused(env, data, tmp_path):
    data = copy_data(data, tmp_path / "data")
    out = tmp_path / "scores"
    kw = {"bucket_leads": 250, "reasons": 0}
    first = batch.rescore(data, env.as_of, out, **kw)
    assert not first.noop and first.buckets >= 2
    before = mtimes(out)
    again = batch.rescore(data, env.as_of, out, **kw)
    assert again.noop and again.rows == first.rows and again.skipped_buckets == first.buckets
    assert again.seconds < first.seconds
    assert mtimes(out) == before  # not a byte touched

    forced = batch.rescore(data, env.as_of, out, force=True, **kw)
    assert not forced.noop and forced.rows == first.rows
    after = mtimes(out)
    assert set(after) == set(before)
    assert all(after[p.name] > before[p.name] for p in visible_parts(out))

    # another cutoff, other settings or other data into the same folder: refused
    with pytest.raises(FileExistsError, match="--force"):
        batch.rescore(data, env.as_of - pd.Timedelta(days=1), out, **kw)
    with pytest.raises(FileExistsError):
        batch.rescore(data, env.as_of, out, bucket_leads=250, reasons=1)
    ev = pd.read_parquet(data / "events.parquet")
    ev.iloc[:-1].to_parquet(data / "events.parquet", index=False)
    res = CliRunner().invoke(app, ["rescore", "--data", str(data), "--as-of", str(env.as_of),
                                   "--out", str(out), "--bucket-leads", "250",
                                   "--reasons", "0"])
    assert res.exit_code == 2 and "--force" in res.output
    assert mtimes(out) == after
    replaced = batch.rescore(data, env.as_of, out, force=True, **kw)
    assert not replaced.noop
    assert json.loads((out / batch.MANIFEST).read_text())["complete"]


@pytest.mark.parametrize(("where", "step"), [("per_bucket", "score_features"),
                                             ("batch", "_bucket_features")])
def test_a_rerun_after_a_crash_scores_from_the_validated_buckets(
        reference, env, data, tmp_path, monkeypatch, where, step):
    """The inputs are validated and bucketed once and kept: the rerun after a crash and the
    no-op rerun after it never read the inputs again, and the result is the uninterrupted
    run's. The crash comes while scoring a bucket, or while computing the features of one
    ahead of its turn."""
    data = copy_data(data, tmp_path / "data")
    out = tmp_path / "scores"
    mod = {"per_bucket": per_bucket, "batch": batch}[where]
    real = getattr(mod, step)
    calls = []

    def crash_on_the_third_bucket(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the machine went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, step, crash_on_the_third_bucket)
    with pytest.raises(RuntimeError, match="went away"):
        batch.rescore(data, env.as_of, out, bucket_leads=100)
    kept = json.loads((intake.default_cache(data) / intake.STATE).read_text())
    assert kept["buckets"] >= 5 and len(kept["segments"]) == 1
    assert not any(c["quarantined"] for c in kept["segments"][0]["counts"].values())

    monkeypatch.setattr(mod, step, real)
    loads = []
    monkeypatch.setattr(contract, "load", lambda *a, **kw: loads.append(1))
    res = batch.rescore(data, env.as_of, out, bucket_leads=100)
    assert loads == [] and res.skipped_buckets == 2 and res.buckets == kept["buckets"]
    assert {p.name for p in out.iterdir()} == {
        batch.MANIFEST, watch.DRIFT_FILE, last_run.FEATURES_DIR} | {
        f"part-{b:05d}.parquet" for b in range(res.buckets)}
    # tomorrow's changes find the features of every part, those before the crash included
    assert {p.name for p in (out / last_run.FEATURES_DIR).iterdir()} == {
        last_run.features_path(out, b).name for b in range(res.buckets)}
    again = batch.rescore(data, env.as_of, out, bucket_leads=100)
    assert again.noop and loads == []
    assert_same_scores(read_sorted(out), reference.frame)


def test_a_night_validates_only_its_new_files_and_scores_as_if_it_had_read_them_all(
        reference, env, data, tmp_path, monkeypatch):
    """Inputs as an operator's folders fill up: yesterday's history, then today's drop. The
    second night validates only the drop (against the rows kept from the first) and scores
    exactly what a rescoring of the same rows from scratch scores."""
    folders, cut = tmp_path / "data", env.as_of - pd.Timedelta(days=2)
    today = {}
    for table, col in (("leads", "created_at"), ("events", "ingested_at"), ("contacts", "ts")):
        df = pd.read_parquet(data / f"{table}.parquet")
        (folders / table).mkdir(parents=True)
        old = df[col].fillna(df.get("ts", df[col])) < cut
        df[old].to_parquet(folders / table / "2025-01-01.parquet", index=False)
        today[table] = df[~old]
    today = {t: df for t, df in today.items() if len(df)}  # (the simulated leads came early)
    assert {"events", "contacts"} <= set(today)
    first = batch.rescore(folders, cut, tmp_path / "night-1", reasons=0)
    assert first.rows > 0
    for table, df in today.items():
        df.to_parquet(folders / table / "2025-01-02.parquet", index=False)

    real, seen = contract.load, []
    monkeypatch.setattr(contract, "load", lambda *a, **kw: seen.append(kw.get("files")) or
                        real(*a, **kw))
    batch.rescore(folders, env.as_of, tmp_path / "night-2", previous=False)  # as the reference
    assert [{t: [p.name for p in fs] for t, fs in f.items()} for f in seen] == [
        {t: ["2025-01-02.parquet"] for t in today}]
    assert_same_scores(read_sorted(tmp_path / "night-2"), reference.frame)


def test_a_resume_after_the_intake_was_bucketed_anew_redoes_the_parts(
        reference, env, data, tmp_path, monkeypatch):
    """Buckets are sized when the intake starts, so the same inputs can be bucketed two ways:
    kept since a night with half the leads, or validated anew (the cache deleted). A run that
    crashed under one and resumes under the other must not keep parts that split the leads
    the other way: one row per lead, the reference's rows."""
    folders = tmp_path / "data"
    leads = pd.read_parquet(data / "leads.parquet").sort_values("created_at")
    first = set(leads["lead_id"].iloc[: len(leads) // 2])
    for table in ("leads", "events", "contacts"):
        df = pd.read_parquet(data / f"{table}.parquet")
        (folders / table).mkdir(parents=True)
        early = df["lead_id"].isin(first)
        df[early].to_parquet(folders / table / "2025-01-01.parquet", index=False)
        df[~early].to_parquet(folders / table / "2025-01-02.parquet.later", index=False)
    night = batch.rescore(folders, env.as_of, tmp_path / "night-1", bucket_leads=100)
    for f in folders.rglob("*.later"):
        f.rename(f.with_suffix(""))

    real, calls = per_bucket.score_features, []

    def crash_on_the_third_bucket(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the machine went away")
        return real(*args, **kwargs)

    out = tmp_path / "scores"
    monkeypatch.setattr(per_bucket, "score_features", crash_on_the_third_bucket)
    with pytest.raises(RuntimeError, match="went away"):
        batch.rescore(folders, env.as_of, out, bucket_leads=100)
    monkeypatch.setattr(per_bucket, "score_features", real)
    crashed = json.loads((out / batch.MANIFEST).read_text())
    assert crashed["buckets"] == night.buckets and len(crashed["parts"]) == 2

    shutil.rmtree(intake.default_cache(folders))  # validated anew: more, smaller buckets
    res = batch.rescore(folders, env.as_of, out, bucket_leads=100)
    assert res.buckets > night.buckets and res.skipped_buckets == 0
    assert len(visible_parts(out)) == res.buckets
    got = read_sorted(out)
    assert not got["lead_id"].duplicated().any()
    assert_same_scores(got, reference.frame)


@pytest.mark.parametrize("hours", [0, 6])
def test_scores_equal_scoring_the_feature_jobs_rows(reference, env, data, tmp_path, hours):
    """At a midnight the features come from the kept rollups, at any other cutoff from the
    events: either way the scores are those of the feature job's rows over the whole data
    set (unbucketed) put through the same scorer."""
    as_of = env.as_of + pd.Timedelta(hours=hours)
    got = reference.frame if hours == 0 else None
    if got is None:
        batch.rescore(data, as_of, tmp_path / "scores", cache=tmp_path / "kept")
        got = read_sorted(tmp_path / "scores")
        assert (tmp_path / "kept" / intake.STATE).is_file()
    ds = contract.load(data)
    feats = job.to_pandas(job.compute(ds.con, [as_of]))
    ds.con.close()
    rows = feats[feats["is_open"] | feats["is_owner"]].reset_index(drop=True)
    (tmp_path / "want").mkdir()
    batch._write_part(tmp_path / "want", 0,
                      first_night(per_bucket.score_features(rows, Scorer.from_registry(), 3)))
    assert_same_scores(got, read_sorted(tmp_path / "want"))


def test_a_part_is_the_file_pandas_would_write(env, data, tmp_path):
    """Parts go straight to Arrow: the same schema (pandas metadata included) and values as
    writing the type-fixed frame with pandas, for open leads, owners (lead columns null) and
    the two mixed (slot starts beside nulls)."""
    ds = contract.load(data)
    feats = job.to_pandas(job.compute(ds.con, [env.as_of]))
    ds.con.close()
    rows = feats[feats["is_open"] | feats["is_owner"]].reset_index(drop=True)
    scorer = Scorer.from_registry()
    for name, part in (("mixed", rows), ("open", rows[rows["is_open"]]),
                       ("owners", rows[~rows["is_open"]])):
        scored = per_bucket.score_features(part.reset_index(drop=True), scorer, 1)
        (tmp_path / name).mkdir()
        batch._write_part(tmp_path / name, 0, scored)
        ours = tmp_path / name / "part-00000.parquet"
        theirs = tmp_path / f"{name}.parquet"
        per_bucket.fmt_types(scored).to_parquet(theirs, index=False)
        assert pq.read_schema(ours).equals(pq.read_schema(theirs), check_metadata=True), name
        assert pq.read_table(ours).equals(pq.read_table(theirs)), name
        pd.testing.assert_frame_equal(pd.read_parquet(ours), pd.read_parquet(theirs),
                                      check_exact=True)


def test_csv_export_reads_back_with_the_same_rows_and_reasons_as_sentences(reference, tmp_path):
    csv = tmp_path / "scores.csv"
    n = batch.export_csv(reference.out, csv)
    text = csv.read_bytes().decode("utf-8")  # strict UTF-8
    back = pd.read_csv(csv, encoding="utf-8", keep_default_na=False, na_values=[""])
    assert n == len(back) == len(reference.frame)
    assert list(back.columns) == list(OUTPUT_COLUMNS)
    pq_ = reference.frame
    assert back["lead_id"].astype(str).tolist() == pq_["lead_id"].tolist()
    for c in PROBAS:
        np.testing.assert_array_equal(back[c].to_numpy(float), pq_[c].to_numpy(float))
    assert (pd.to_datetime(back["as_of"], utc=True) == pq_["as_of"]).all()
    expected = ["; ".join(f"[{r['model'].replace('-', ' ')} {r['sign']}] {r['sentence']}"
                          for r in json.loads(s)) for s in pq_["reasons"]]
    assert back["reasons"].tolist() == expected
    assert "[{" not in text  # no JSON left in the CSV's reasons


def test_csv_in_chinese_every_sentence_chinese_and_once_per_row(env, data, tmp_path):
    """The issue's goal: ``rescore --lang zh-CN`` to CSV, every reason labelled with its model
    (in Chinese) and sign, every sentence Chinese, none twice in a row, at most --reasons per
    model."""
    csv = tmp_path / "scores.csv"
    got = CliRunner().invoke(app, ["rescore", "--data", str(data), "--as-of", str(env.as_of),
                                   "--out", str(csv), "--format", "csv", "--lang", "zh-CN",
                                   "--reasons", "2"])
    assert got.exit_code == 0, got.output
    back = pd.read_csv(csv, encoding="utf-8", keep_default_na=False)
    cjk = re.compile(r"[\u4e00-\u9fff]")
    label = re.compile(r"^\[(成交|主动联系|流失|联系时段) ([+-])\] (.+)$")
    rows = 0
    for text in back["reasons"]:
        if not text:
            continue
        rows += 1
        parts = [label.match(p) for p in text.split("; ")]
        assert all(parts), text
        sentences = [m.group(3) for m in parts]
        assert all(cjk.search(x) for x in sentences), text
        assert len(sentences) == len(set(sentences)), text
        per_model = pd.Series([m.group(1) for m in parts]).value_counts()
        assert (per_model <= 2).all(), text
    assert rows > 0.9 * len(back)
    assert "none recorded" not in csv.read_text(encoding="utf-8")


def test_corrupt_input_rows_are_quarantined_and_the_job_completes(
        reference, env, data, tmp_path):
    data = copy_data(data, tmp_path / "data")
    ev = pd.read_parquet(data / "events.parquet")
    good = ev.iloc[0]
    as_text = ev.astype("object").where(ev.notna(), None)
    for c in ("ts", "ingested_at"):
        as_text[c] = ev[c].map(lambda t: None if pd.isna(t) else t.isoformat())
    bad = pd.DataFrame([
        {**as_text.iloc[0].to_dict(), "ts": "yesterday-ish"},  # unparseable time
        {**as_text.iloc[0].to_dict(), "lead_id": "NO-SUCH-LEAD"},  # unknown lead
    ])
    pd.concat([as_text, bad], ignore_index=True).to_csv(data / "events.csv", index=False)
    (data / "events.parquet").unlink()

    res = batch.rescore(data, env.as_of, tmp_path / "scores")
    assert res.quarantined == 2
    q = pd.read_parquet(data / "quarantine" / "events.parquet")
    assert sorted(q["_reason"]) == ["unknown_lead", "unparseable_ts"]
    assert set(q["lead_id"]) == {good["lead_id"], "NO-SUCH-LEAD"}
    got = read_sorted(tmp_path / "scores")
    assert "NO-SUCH-LEAD" not in set(got["lead_id"])
    pd.testing.assert_frame_equal(got, reference.frame, check_exact=True)


def test_models_not_registered_are_skipped_and_their_columns_are_null(
        reference, env, data, tmp_path, monkeypatch):
    ref = reference.frame.set_index("lead_id")
    # only conversion asked for
    out = tmp_path / "conversion_only"
    res = CliRunner().invoke(app, ["rescore", "--data", str(data), "--as-of",
                                   str(env.as_of), "--out", str(out), "--models", "conversion",
                                   "--cache", str(tmp_path / "kept")])
    assert res.exit_code == 0, res.output[-2000:]
    assert (tmp_path / "kept" / intake.STATE).is_file()
    df = read_sorted(out).set_index("lead_id")
    assert df.index.equals(ref.index)
    for c in ("p_inquiry", "contact_urgency", "best_slot_start", "best_slot_local",
              "best_channel", "p_response", "p_churn", "p_order_7d", "p_order_15d",
              "p_order_90d"):
        assert df[c].isna().all(), c
    pd.testing.assert_series_equal(df["p_convert"], ref["p_convert"], check_exact=True)
    # without the horizon models: the 30-day model alone grades, B or N
    open_ = df["p_convert"].notna()
    assert (df.loc[open_, "p_order_30d"] == df.loc[open_, "p_convert"]).all()
    assert set(df.loc[open_, "intent_grade"]) == {"B", "N"}
    assert set(df["model_versions"]) == {json.dumps({"conversion": env.versions["conversion"]})}
    models_in_reasons = {r["model"] for s in df["reasons"] for r in json.loads(s)}
    assert models_in_reasons == {"conversion"}

    # a registry where churn has no champion: everything else as before, churn null
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env.nochurn_uri)
    out = tmp_path / "no_churn"
    res = batch.rescore(data, env.as_of, out)
    assert "churn" not in res.model_versions
    assert len(res.model_versions) == len(models.NAMES) - 1
    df = read_sorted(out).set_index("lead_id")
    assert df.index.equals(ref.index)  # owners keep their row, with nothing scored
    assert df["p_churn"].isna().all()
    for c in ("p_convert", "p_inquiry", "lead_score", "best_slot_start", "p_response"):
        pd.testing.assert_series_equal(df[c], ref[c], check_exact=True)
    assert all(r["model"] != "churn" for s in df["reasons"] for r in json.loads(s))


def test_unknown_engine_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="engine"):
        batch.rescore(data, "2026-01-01", tmp_path / "x", engine="flink",
                      scorer=Scorer({}, rules=None))
    assert not (tmp_path / "x").exists()
