"""What changed since the previous night: two consecutive nightly runs of the small simulated
world (the quick registry of ``test_batch``), the previous run found beside ``--out`` or named,
``score_delta``/``trend``/``changes`` and the run key's part in a resume."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_batch import copy_data, quick_registry, read_sorted, small_data
from typer.testing import CliRunner

from leadscore import contract
from leadscore.cli import app
from leadscore.features import job
from leadscore.nightly import batch
from leadscore.nightly import previous as last_run
from leadscore.scoring import changes
from leadscore.scoring.scorer import Scorer


@pytest.fixture(scope="module")
def reg(sim_data, tmp_path_factory):
    return quick_registry(tmp_path_factory.getbasetemp() / "quick_registry", sim_data)


@pytest.fixture(scope="module")
def nights(reg, sim_data, tmp_path_factory):
    """Night 1 (a day before the registry's cutoff), then night 2, side by side in one folder:
    night 2 finds night 1 by itself."""
    base = tmp_path_factory.mktemp("nights")
    data = copy_data(small_data(tmp_path_factory.getbasetemp() / "small_data", sim_data),
                     base / "data")
    runs = base / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", reg.uri)
        kw = {"reasons": 0, "bucket_leads": 300}
        first = batch.rescore(data, reg.as_of - pd.Timedelta(days=3), runs / "night-1", **kw)
        # the simulated leads all came early: a few leads night 1 did not score, as if new
        part = runs / "night-1" / "part-00000.parquet"
        rows = pd.read_parquet(part)
        dropped = rows.loc[rows["lead_score"].notna(), "lead_id"].head(10)
        rows[~rows["lead_id"].isin(dropped)].to_parquet(part, index=False)
        second = batch.rescore(data, reg.as_of, runs / "night-2", **kw)
    return SimpleNamespace(data=data, runs=runs, first=first, second=second, kw=kw,
                           dropped=set(dropped),
                           one=read_sorted(runs / "night-1"), two=read_sorted(runs / "night-2"))


def test_first_night_without_an_earlier_run_has_every_lead_new(nights):
    df = nights.one
    scored = df["lead_score"].notna()
    assert scored.any() and (~scored).any()
    assert (df.loc[scored, "trend"] == "new").all()
    assert df["score_delta"].isna().all()
    assert (df.loc[scored, "changes"] == "[]").all()
    assert df.loc[~scored, ["trend", "changes"]].isna().all().all()  # owners: churn only
    manifest = json.loads((nights.runs / "night-1" / batch.MANIFEST).read_text())
    assert manifest["previous"] is None


def test_second_night_compares_with_the_first_found_beside_it(nights, reg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    one = nights.one.set_index("lead_id")["lead_score"]
    two = nights.two
    assert str(two["score_delta"].dtype) == "Int64"
    manifest = json.loads((nights.runs / "night-2" / batch.MANIFEST).read_text())
    assert manifest["previous"]["path"] == str((nights.runs / "night-1").resolve())
    assert pd.Timestamp(manifest["previous"]["as_of"]) == reg.as_of - pd.Timedelta(days=3)

    scored = two[two["lead_score"].notna()]
    before = one.reindex(scored["lead_id"])
    both = before.notna().to_numpy()
    assert both.sum() > 50 and (~both).any()  # leads scored both nights, and new ones
    # the delta is exactly the difference of the written scores
    want = scored["lead_score"].to_numpy()[both] - before.to_numpy()[both]
    assert (scored["score_delta"].to_numpy()[both] == want).all()
    assert scored["score_delta"][~both].isna().all()
    assert (scored["trend"][~both] == "new").all()
    assert set(scored["lead_id"][~both]) == nights.dropped
    d = scored["score_delta"][both].astype(int)
    expect = np.where(d >= changes.TREND_POINTS, "rising",
                      np.where(d <= -changes.TREND_POINTS, "falling", "steady"))
    assert (scored["trend"][both].to_numpy() == expect).all()
    assert set(expect) >= {"rising", "falling", "steady"}

    # every rising or falling lead has a change saying why; a steady one (a move of rounding
    # and noise) has none
    lists = scored["changes"].map(json.loads)
    moved = (scored["score_delta"].abs() >= changes.TREND_POINTS).fillna(False).to_numpy()
    assert moved.sum() >= 10
    assert all(len(c) >= 1 for c in lists[moved])
    steady = (scored["trend"] == "steady").fillna(False).to_numpy()
    assert (scored["score_delta"][steady] != 0).sum() >= 10  # some moved a point or two
    assert (lists[steady].map(len) == 0).all()
    for c in lists[moved]:
        assert len(c) <= changes.TOP_CHANGES
        assert {"feature", "value", "previous", "points", "sentence"} == set(c[0])
        assert all(x["sentence"].endswith(changes._fmt_points(x["points"])) for x in c)
        assert "(was " in c[0]["sentence"]
        assert [abs(x["points"]) for x in c] == sorted((abs(x["points"]) for x in c),
                                                        reverse=True)
    # the changes are the largest of all the features' point changes, which add up to the
    # move of the probability (tonight's model, both nights' features from the whole data)
    ids = scored["lead_id"][moved].head(40).tolist()
    scorer = Scorer.from_registry(["conversion"])
    model = scorer.models["conversion"]
    con = contract.load(nights.data).con
    feats = {t: job.to_pandas(job.compute(con, [t])).set_index("lead_id").loc[ids]
             .reset_index() for t in (reg.as_of - pd.Timedelta(days=3), reg.as_of)}
    con.close()
    every = changes.explain(model, feats[reg.as_of], feats[reg.as_of - pd.Timedelta(days=3)],
                            top=len(model.features), min_points=0)
    p1 = nights.one.set_index("lead_id").loc[ids, "p_convert"].to_numpy()
    p2 = scored.set_index("lead_id").loc[ids, "p_convert"].to_numpy()
    for i, lid in enumerate(ids):
        total = sum(x["points"] for x in every[i])
        assert abs(total - 100 * (p2[i] - p1[i])) < 0.005 * len(every[i]) + 1e-6
        got = json.loads(scored.set_index("lead_id").loc[lid, "changes"])
        shown = [x for x in every[i] if abs(x["points"]) >= changes.MIN_POINTS] or every[i]
        assert got == shown[:len(got)]


def test_change_sentence_says_what_it_is_and_was():
    s = changes.change_sentence("finance_calc_7d", 2.0, 0.0, 12.4)
    assert s.endswith("(was 0): +12") and s.startswith("Used the finance calculator 2 times")
    assert changes.change_sentence("finance_calc_7d", 0.0, None, -0.4).endswith(
        "(was none): -0.4")
    t = changes.trend(pd.Series([3, 2, -2, -3, None], dtype="Int64"))
    assert t.tolist() == ["rising", "steady", "steady", "falling", "new"]


def test_csv_shows_changes_as_sentences(nights, tmp_path):
    out = tmp_path / "night-2.csv"
    batch.export_csv(nights.runs / "night-2", out)
    back = pd.read_csv(out, keep_default_na=False)
    moved = nights.two.set_index("lead_id")["changes"].map(
        lambda t: "; ".join(c["sentence"] for c in json.loads(t)) if isinstance(t, str) else "")
    assert back.set_index("lead_id")["changes"].to_dict() == moved.to_dict()


def test_an_incomplete_previous_named_explicitly_exits_2_naming_it(nights, reg, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    bad = tmp_path / "half-run"
    shutil.copytree(nights.runs / "night-1", bad)
    m = json.loads((bad / batch.MANIFEST).read_text())
    (bad / batch.MANIFEST).write_text(json.dumps({**m, "complete": False}))
    res = CliRunner().invoke(app, ["rescore", "--data", str(nights.data), "--as-of",
                                   str(reg.as_of), "--out", str(tmp_path / "tonight"),
                                   "--reasons", "0", "--previous", str(bad)])
    assert res.exit_code == 2, res.output
    assert str(bad) in res.output and "incomplete" in res.output
    # found automatically instead, the same folder is passed over: every lead is new
    got = batch.rescore(nights.data, reg.as_of, tmp_path / "tonight", reasons=0)
    df = read_sorted(got.out)
    assert (df["trend"].dropna() == "new").all()


def test_an_explicit_previous_is_compared_with_and_is_part_of_the_run_key(
        nights, reg, tmp_path, monkeypatch):
    """Named with --previous from elsewhere: the same rows as found beside --out. A run
    killed half way resumes to the same output; another previous run is other output."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    out = tmp_path / "elsewhere" / "tonight"
    got = batch.rescore(nights.data, reg.as_of, out, previous=nights.runs / "night-1",
                        **nights.kw)
    pd.testing.assert_frame_equal(read_sorted(got.out), nights.two, check_exact=True)

    # a crash after the first parts: the resumed run gives the same output
    m = json.loads((out / batch.MANIFEST).read_text())
    assert got.buckets >= 2
    lost = sorted(m["parts"])[1:]
    for b in lost:
        (out / m["parts"].pop(b)["file"]).unlink()
    (out / batch.MANIFEST).write_text(json.dumps({**m, "complete": False}))
    again = batch.rescore(nights.data, reg.as_of, out, previous=nights.runs / "night-1",
                          **nights.kw)
    assert again.skipped_buckets == 1 and not again.noop
    pd.testing.assert_frame_equal(read_sorted(out), nights.two, check_exact=True)

    with pytest.raises(FileExistsError):  # compared with nothing: not this run
        batch.rescore(nights.data, reg.as_of, out, previous=False, **nights.kw)


def test_score_by_id_carries_last_night_for_the_tenants_leads_only(nights, reg, tmp_path,
                                                                   monkeypatch):
    from fastapi.testclient import TestClient

    from leadscore.serving import store as online
    from leadscore.serving.api import create_app
    from leadscore.serving.auth import KeyRing, write_key_file
    from leadscore.serving.last_night import beside
    from leadscore.serving.runtime import Runtime

    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    path = tmp_path / "features.db"
    res = CliRunner().invoke(app, ["rescore", "--data", str(nights.data), "--as-of",
                                   str(reg.as_of), "--out", str(nights.runs / "night-2"),
                                   "--reasons", "0", "--bucket-leads", "300",
                                   "--store", str(path)])
    assert res.exit_code == 0 and "no-op" in res.output, res.output  # the run was done
    assert beside(path).is_file()
    con = contract.load(nights.data).con
    feats = job.to_pandas(job.compute(con, [reg.as_of]))
    con.close()
    online.write(feats[feats["is_open"]], path)
    two = nights.two[nights.two["lead_score"].notna()].set_index("lead_id")
    dealers = sorted(two["dealer_id"].unique())
    north = dealers[: len(dealers) // 2]
    keys = write_key_file(tmp_path / "keys.json", {"north": ("north-key-123456", north),
                                                   "south": ("south-key-654321",
                                                             dealers[len(north):])})
    scorer = Scorer.from_registry()
    runtime = Runtime(online.OnlineStore(path), KeyRing.from_file(keys),
                      loader=lambda: scorer, reload_seconds=0)
    assert runtime.reload()
    mine = two[two["dealer_id"].isin(north)]
    moved = mine[mine["score_delta"].abs() >= 5].index[:3].tolist()
    new = mine[mine["trend"] == "new"].index[:1].tolist()
    theirs = two[~two["dealer_id"].isin(north)].index[:1].tolist()
    assert len(moved) == 3 and theirs
    body = {"leads": [{"lead_id": i} for i in [*moved, *new, *theirs]], "reasons": 0}
    with TestClient(create_app(runtime)) as client:
        def post():
            r = client.post("/score", json=body, headers={"X-API-Key": "north-key-123456"})
            assert r.status_code == 200, r.text
            return r.json()["results"]

        got = post()
        for rec in got[:len(moved) + len(new)]:
            row = two.loc[rec["lead_id"]]
            ln = rec["last_night"]
            assert ln["lead_score"] == row["lead_score"] and ln["trend"] == row["trend"]
            assert ln["score_delta"] == (None if pd.isna(row["score_delta"])
                                         else row["score_delta"])
            assert ln["changes"] == json.loads(row["changes"])
            assert pd.Timestamp(ln["as_of"]) == reg.as_of
        assert all(len(r["last_night"]["changes"]) >= 1 for r in got[:len(moved)])
        # another tenant's lead: not found, nothing of its last night either
        assert got[-1]["status"] == "not_found" and got[-1]["last_night"] is None
        # no last-night file: the service keeps serving, last_night unknown
        beside(path).unlink()
        again = post()
        assert [r["status"] for r in again] == [r["status"] for r in got]
        assert all(r["last_night"] is None for r in again)


def test_the_previous_nights_features_of_a_few_leads_are_theirs_of_all(nights, reg):
    """The kept rollups reduce only the rows of the leads asked for: the same features as
    reducing every lead's and picking theirs."""
    from leadscore.nightly import intake

    cache = intake.default_cache(nights.data)
    segments = json.loads((cache / intake.STATE).read_text())["segments"]
    at = reg.as_of - pd.Timedelta(days=3)
    full = batch._bucket_features(cache, 0, at, segments)
    ids = full["lead_id"].astype(str).iloc[::7].tolist()[:30]
    few = batch._bucket_features(cache, 0, at, segments, only=ids)
    assert sorted(few["lead_id"].astype(str)) == sorted(ids)
    want = full[full["lead_id"].astype(str).isin(ids)].reset_index(drop=True)
    def plain(df):  # categories are those of the rows present; compare the values
        return df.astype({c: object for c in df.columns if df[c].dtype == "category"})

    pd.testing.assert_frame_equal(plain(few.reset_index(drop=True)), plain(want),
                                  check_exact=True)


def _rerun_night_2(nights, reg, monkeypatch, previous, out):
    """Night 2 again into ``out`` against ``previous``, counting the feature recomputations
    for the leads whose score moved (``_bucket_features`` called with ``only``)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    real, calls = batch._bucket_features, []

    def counted(*a, **k):
        if k.get("only") is not None or len(a) > 5:
            calls.append(a[2])
        return real(*a, **k)

    monkeypatch.setattr(batch, "_bucket_features", counted)
    batch.rescore(nights.data, reg.as_of, out, previous=previous, **nights.kw)
    return read_sorted(out), calls


def test_the_previous_nights_kept_features_explain_the_changes(nights, reg, monkeypatch,
                                                                tmp_path):
    """Night 1 kept the features it scored with; night 2 reads them rather than recomputing
    the features at night 1's cutoff, with the same changes."""
    kept = sorted((nights.runs / "night-1" / last_run.FEATURES_DIR).iterdir())
    assert len(kept) == nights.first.buckets
    two, calls = _rerun_night_2(nights, reg, monkeypatch, nights.runs / "night-1",
                                tmp_path / "again")
    assert calls == []
    pd.testing.assert_series_equal(two["changes"], nights.two["changes"])
    assert (two["changes"].str.len() > 2).sum() >= 10


def test_a_previous_run_without_kept_features_has_them_recomputed(nights, reg, monkeypatch,
                                                                  tmp_path):
    old = tmp_path / "night-1"
    shutil.copytree(nights.runs / "night-1", old)
    shutil.rmtree(old / last_run.FEATURES_DIR)
    two, calls = _rerun_night_2(nights, reg, monkeypatch, old, tmp_path / "again")
    assert calls and all(t == reg.as_of - pd.Timedelta(days=3) for t in calls)
    pd.testing.assert_series_equal(two["changes"], nights.two["changes"])


def test_kept_features_are_found_by_lead_id_in_whichever_file_holds_them(tmp_path):
    """Tomorrow's bucketing may differ: a lead's kept row is found by its id, not its bucket;
    ids kept nowhere are left out; owners (not open) are not kept."""
    feats = pd.DataFrame({"lead_id": [f"L{i}" for i in range(10)],
                          "is_open": [i != 3 for i in range(10)],
                          "events_7d": np.arange(10, dtype=float),
                          "source": pd.Categorical(["web", "app"] * 5)})
    keep = [f for f in last_run.cat.CATALOG if f.name in ("events_7d", "source")]
    last_run.save_features(tmp_path, 0, feats.iloc[:6], keep)
    last_run.save_features(tmp_path, 1, feats.iloc[6:], keep)
    stored = last_run.Stored([last_run.features_path(tmp_path, b) for b in (0, 1)])
    got = stored.rows(["L8", "L1", "L3", "nobody", "L5"]).sort_values("lead_id")
    assert got["lead_id"].tolist() == ["L1", "L5", "L8"]
    assert got["events_7d"].tolist() == [1.0, 5.0, 8.0]
    assert got["source"].astype(str).tolist() == ["app", "app", "web"]
    assert stored.rows(["nobody"]).empty
    # a lead kept twice (a copy of a file): found once, its first row
    last_run.save_features(tmp_path, 2, feats.iloc[4:7], keep)
    again = last_run.Stored([last_run.features_path(tmp_path, b) for b in (0, 1, 2)])
    assert again.rows(["L5", "L6"])["lead_id"].tolist() == ["L5", "L6"]
