"""The Spark engine agrees with the embedded one: same rows, same scores, same reasons, same
features, and the same resume behaviour (it shares the part writer and the manifest).

One local Spark session serves the module (started on first use, stopped at the end).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_batch import (
    ROOT,
    _watch,
    assert_readable,
    assert_same_scores,
    quick_registry,
    read_sorted,
    small_data,
)
from typer.testing import CliRunner

from leadscore import contract
from leadscore.cli import app
from leadscore.features import job
from leadscore.nightly import batch
from leadscore.scoring.scorer import Scorer

pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def reg(sim_data, tmp_path_factory):
    return quick_registry(tmp_path_factory.getbasetemp() / "quick_registry", sim_data)


@pytest.fixture(scope="module")
def data(sim_data, tmp_path_factory):
    return small_data(tmp_path_factory.getbasetemp() / "small_data", sim_data)


@pytest.fixture(scope="module")
def spark_engine():
    from leadscore.nightly import spark

    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def scorer(reg):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", reg.uri)
        return Scorer.from_registry(num_threads=2)


@pytest.fixture(scope="module")
def both(spark_engine, scorer, reg, data, tmp_path_factory):
    """The fixture data rescored by each engine, in 5 or more buckets of leads."""
    root = tmp_path_factory.mktemp("engines")
    kw = {"bucket_leads": 120, "scorer": scorer}
    emb = batch.rescore(data, reg.as_of, root / "embedded", **kw)
    spk = batch.rescore(data, reg.as_of, root / "spark", engine="spark", **kw)
    return root, emb, spk, kw


def test_spark_rescore_matches_the_embedded_engine(both):
    root, emb, spk, _ = both
    assert spk.buckets == emb.buckets >= 5 and spk.rows == emb.rows
    a, b = read_sorted(root / "embedded"), read_sorted(root / "spark")
    assert len(a) == emb.rows and not b["lead_id"].duplicated().any()
    assert b["best_slot_start"].notna().any() and b["p_churn"].notna().all()
    assert_same_scores(a, b)
    # same parts, same rows per part, same file schema: one manifest format for both engines
    ma = json.loads((root / "embedded" / batch.MANIFEST).read_text())
    mb = json.loads((root / "spark" / batch.MANIFEST).read_text())
    assert ma["parts"] == mb["parts"] and ma["run_key"] == mb["run_key"] and mb["complete"]
    for part in ma["parts"].values():
        sa = pq.read_schema(root / "embedded" / part["file"])
        sb = pq.read_schema(root / "spark" / part["file"])
        assert sa.equals(sb, check_metadata=True)


def test_spark_resumes_from_the_manifest_and_reruns_as_a_noop(both, reg, data):
    root, _, _, kw = both
    out = root / "spark"
    m = json.loads((out / batch.MANIFEST).read_text())
    # a crash that left two buckets unrecorded (one of them never written): Spark redoes
    # exactly those two and leaves the recorded parts alone
    kept = {k: v for k, v in m["parts"].items() if k not in ("1", "3")}
    (out / "part-00003.parquet").unlink()
    (out / batch.MANIFEST).write_text(json.dumps({**m, "parts": kept, "complete": False}))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    res = batch.rescore(data, reg.as_of, out, engine="spark", **kw)
    assert not res.noop and res.skipped_buckets == m["buckets"] - 2
    for name, t in before.items():
        if name != "part-00001.parquet":
            assert (out / name).stat().st_mtime_ns == t, name
    assert json.loads((out / batch.MANIFEST).read_text()) == {**m, "parts": m["parts"]}
    assert_same_scores(read_sorted(root / "embedded"), read_sorted(out))
    again = batch.rescore(data, reg.as_of, out, engine="spark", **kw)
    assert again.noop


def test_spark_features_match_the_embedded_engine(spark_engine, data, tmp_path):
    runner = CliRunner()
    cut = "2026-04-06,2026-05-04T12:00:00Z"
    files = {}
    for engine in ("duckdb", "spark"):
        files[engine] = tmp_path / f"features_{engine}.parquet"
        # with a vocabulary type (the simulator's one non-standard type)
        res = runner.invoke(app, ["features", "--data", str(data), "--as-of", cut,
                                  "--out", str(files[engine]), "--engine", engine,
                                  "--vocabulary", "brochure_download"])
        assert res.exit_code == 0, res.output[-2000:]
    a, b = (pd.read_parquet(files[e]) for e in ("duckdb", "spark"))
    assert len(a) > 0 and a["as_of"].nunique() == 2
    assert a["type__brochure_download__count_all"].sum() > 0
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert pq.read_schema(files["duckdb"]).equals(pq.read_schema(files["spark"]))

    # several buckets, open leads only
    ds = contract.load(data)
    cutoffs = [pd.Timestamp("2026-05-04T12:00:00Z")]
    expected = job.compute(ds.con, cutoffs, only_open=True).to_pandas()
    rows, cols = spark_engine.compute_features(ds, cutoffs, tmp_path / "open.parquet",
                                               only_open=True, bucket_leads=200)
    got = pd.read_parquet(tmp_path / "open.parquet")
    assert (rows, cols) == expected.shape
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert not list(tmp_path.glob(".*"))  # no work folders or temp files left behind


@pytest.mark.slow
def test_spark_cli_run_killed_mid_way_resumes_to_the_same_result(reg, data, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    ref = tmp_path / "embedded"
    batch.rescore(data, reg.as_of, ref, bucket_leads=100)
    out = tmp_path / "spark"
    cmd = [sys.executable, "-m", "leadscore.cli", "rescore", "--data", str(data),
           "--as-of", str(reg.as_of), "--out", str(out), "--bucket-leads", "100",
           "--engine", "spark"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            assert _watch(proc, out, until_first_part=True) > 0
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    m = json.loads((out / batch.MANIFEST).read_text())
    assert not m["complete"] and 1 <= len(m["parts"]) < m["buckets"]
    assert_readable(out)
    with open(tmp_path / "second.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _watch(proc, out, until_first_part=False)
        assert proc.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-2000:]
    assert f"({len(m['parts'])} resumed)" in (tmp_path / "second.log").read_text()
    assert_same_scores(read_sorted(ref), read_sorted(out))


def test_spark_compares_with_the_previous_night_as_the_embedded_engine_does(
        spark_engine, scorer, reg, data, tmp_path):
    """The Spark engine's buckets get score_delta, trend and changes on the driver (their
    features recomputed there): the same rows as the embedded engine's."""
    kw = {"bucket_leads": 120, "scorer": scorer, "reasons": 0, "cache": tmp_path / "kept"}
    night1 = tmp_path / "night-1"
    batch.rescore(data, reg.as_of - pd.Timedelta(days=3), night1, **kw)
    emb = batch.rescore(data, reg.as_of, tmp_path / "embedded", previous=night1, **kw)
    spk = batch.rescore(data, reg.as_of, tmp_path / "spark", previous=night1, engine="spark",
                        **kw)
    assert spk.buckets == emb.buckets >= 2
    a, b = read_sorted(tmp_path / "embedded"), read_sorted(tmp_path / "spark")
    assert (a["score_delta"].abs() >= 5).sum() > 0 and (a["changes"].str.len() > 2).any()
    assert_same_scores(a, b)
