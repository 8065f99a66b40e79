"""Drift, every night: the PSI maths, the reference a model carries from training, and
``_drift.json`` from the nightly job (no alert the night after training, alerts naming the
shifted features after a realistic shift, ``--fail-on-drift``, resume, old artifacts)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from leadscore import drift, registry
from leadscore import simulate as sim
from leadscore.cli import DRIFT_EXIT, app
from leadscore.nightly import batch, watch
from leadscore.scoring.scorer import Scorer
from leadscore.training import reference

MODELS = ("conversion", "contact", "churn", "contact-slot")
COMPARED = ("conversion", "contact", "churn")
FINANCE = tuple(f"finance_calc_{w}d" for w in (1, 3, 7, 30, 90))
HOURS = ("night_share_14d", "night_share_30d",
         *(f"activity_share_{a:02d}_{b:02d}" for a, b in
           ((0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24))))


# --------------------------------------------------------------------------- the maths


def test_bins_put_edges_up_missing_apart_and_unseen_levels_in_their_own_bin():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, np.inf, np.nan])
    assert drift.numeric_bins(x, [0.0, 1.0, 3.0]).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    col = pd.Series(["a", "b", None, "z", "a"], dtype="object")
    assert drift.categorical_bins(col, ["a", "b"]).tolist() == [0, 1, 3, 2, 0]
    # a category column (the feature frame's dtype) bins the same
    assert drift.categorical_bins(col.astype("category"), ["a", "b"]).tolist() == \
        [0, 1, 3, 2, 0]


def test_edges_are_merged_quantiles_of_the_non_missing_values():
    x = np.r_[np.zeros(70), np.ones(10), np.full(20, 5.0), np.full(30, np.nan)]
    assert drift.numeric_edges(x) == [0.0, 1.0, 5.0]
    assert drift.numeric_edges(np.full(5, np.nan)) == []


def test_psi_is_zero_for_the_same_shares_and_finite_with_empty_bins():
    e = [0.25, 0.25, 0.5, 0.0]
    assert drift.psi(e, [25, 25, 50, 0]) == pytest.approx(0.0, abs=1e-12)
    # by hand: all rows in the empty bin
    a = np.array([drift.EPS, drift.EPS, drift.EPS, 1.0])
    want = sum((ai - ei) * math.log(ai / ei)
               for ai, ei in zip(a, np.maximum(e, drift.EPS), strict=True))
    assert drift.psi(e, [0, 0, 0, 7]) == pytest.approx(want)
    assert math.isnan(drift.psi(e, [0, 0, 0, 0]))


def test_compare_reports_psi_missing_unseen_and_ranked_alerts():
    ref = {"rows": 100, "features": {
        "n": {"edges": [1.0], "shares": [0.5, 0.4, 0.1]},
        "c": {"levels": ["x", "y"], "shares": [0.5, 0.5, 0.0, 0.0]},
        "same": {"edges": [1.0], "shares": [0.5, 0.5, 0.0]}},
        "score": {"edges": [0.5], "shares": [0.5, 0.5, 0.0]}}
    counts = {"rows": 10, "score": [5, 5, 0], "features": {
        "n": [1, 1, 8], "c": [2, 2, 6, 0], "same": [5, 5, 0]}}
    got = drift.compare(ref, counts, alert=0.25)
    assert got["score_psi"] == pytest.approx(0.0, abs=1e-9)
    assert got["features"]["same"] == pytest.approx(0.0, abs=1e-9)
    assert got["missing"] == {"n": [0.1, 0.8]}
    assert got["unseen"] == {"c": 0.6}
    assert got["alerts"] == sorted(["n", "c"], key=lambda f: -got["features"][f])
    assert got["rows"] == 10 and got["reference_rows"] == 100
    assert drift.compare(ref, counts, alert=100.0)["alerts"] == []


def test_bucket_counts_add_up_to_the_counts_of_all_rows():
    rng = np.random.default_rng(0)
    n = 400
    feats = pd.DataFrame({"is_open": rng.random(n) < 0.7,
                          "x": np.where(rng.random(n) < 0.1, np.nan, rng.poisson(2, n)),
                          "s": pd.Series(rng.choice(["a", "b", "c"], n)).astype("category")})
    scored = pd.DataFrame({"p_convert": np.where(feats["is_open"], rng.random(n), np.nan),
                           "p_churn": rng.random(n)})
    ref = {"population": "open", "rows": 1, "features": {
        "x": drift.entry(feats["x"]), "s": drift.entry(feats["s"], levels=["a", "b"])},
        "score": drift.entry(rng.random(50))}
    w = watch.Watch({m: SimpleNamespace(meta={drift.REFERENCE_KEY: ref})
                     for m in ("conversion", "churn")})
    whole = w.count(feats, scored)
    halves = [w.count(feats.iloc[:150], scored.iloc[:150]),
              w.count(feats.iloc[150:], scored.iloc[150:])]
    for m in ("conversion", "churn"):
        summed = {f: (np.add(halves[0][m]["features"][f], halves[1][m]["features"][f])
                      .tolist()) for f in ("x", "s")}
        assert summed == whole[m]["features"]
        assert np.add(halves[0][m]["score"], halves[1][m]["score"]).tolist() == \
            whole[m]["score"]
    # lead models count open leads only, churn every row it scored
    assert whole["conversion"]["rows"] == int(feats["is_open"].sum())
    assert sum(whole["conversion"]["features"]["x"]) == int(feats["is_open"].sum())
    assert sum(whole["churn"]["features"]["s"]) == n == whole["churn"]["rows"]
    assert sum(whole["conversion"]["score"]) == int(feats["is_open"].sum())


def segmented_world(n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features and scores of ``n`` rows in three dealers and three sources (a few sources
    missing, one dealer too small to be a segment); D2's x is one higher than the others'."""
    rng = np.random.default_rng(seed)
    dealer = rng.choice(["D1", "D2", "D3"], n, p=[0.5, 0.45, 0.05])
    feats = pd.DataFrame({
        "lead_id": [f"L{i}" for i in range(n)],
        "dealer_id": pd.Series(dealer, dtype="string"),
        "is_open": rng.random(n) < 0.8,
        "source": pd.Series(np.where(rng.random(n) < 0.02, None,
                                     rng.choice(["web", "app", "walk"], n)),
                            dtype="object").astype("category"),
        "x": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 1, n) + (dealer == "D2"))})
    scored = pd.DataFrame({"lead_id": feats["lead_id"], "p_churn": rng.random(n)})
    return feats, scored.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_the_reference_holds_the_latest_cutoffs_with_enough_rows():
    """A night looks like the latest training cutoffs: tenure grows with the data, so the
    pooled cutoffs would alert on it every night. The latest four, and more until the
    reference holds ``MIN_ROWS`` rows."""
    cuts = pd.date_range("2026-01-04", periods=12, freq="7D", tz="UTC")
    big = pd.DataFrame({"as_of": np.repeat(cuts, reference.MIN_ROWS // 2),
                        "x": np.repeat(np.arange(12.0), reference.MIN_ROWS // 2)})
    got = reference.latest(big)
    assert sorted(got["as_of"].unique()) == list(cuts[-4:])
    small = big.groupby("as_of").head(reference.MIN_ROWS // 5)
    got = reference.latest(small)
    assert sorted(got["as_of"].unique()) == list(cuts[-5:])
    assert len(got) >= reference.MIN_ROWS
    few = small.groupby("as_of").head(10)
    assert len(reference.latest(few)) == len(few)  # never enough: every cutoff
    assert reference.latest(big.drop(columns="as_of")).shape == (len(big), 1)
    model = SimpleNamespace(features=["x"], categories={}, meta={})
    ref = reference.build(model, got, np.full(len(got), 0.5), "open")
    assert ref["cutoffs"] == [t.isoformat() for t in cuts[-5:]]


def test_a_segment_needs_enough_distinct_leads_not_just_rows():
    """Training rows repeat each lead at every cutoff it was open: a source of 100 leads
    seen at 6 cutoffs has 600 rows but the noise of 100 leads, so it is not a segment; one
    of 400 leads is. Without lead ids (one row per lead), rows count."""
    per = {"few": 100, "many": 400}
    leads = np.concatenate([np.repeat([f"{v}-{i}" for i in range(n)], 6)
                            for v, n in per.items()])
    source = np.concatenate([np.repeat(v, n * 6) for v, n in per.items()])
    assert drift.segment_values(source, leads=leads) == ["many"]
    assert drift.segment_values(source) == ["many", "few"]
    rows = pd.DataFrame({"lead_id": leads, "source": source,
                         "x": np.random.default_rng(0).normal(size=len(leads))})
    model = SimpleNamespace(features=["x"], categories={}, meta={})
    ref = reference.build(model, rows, np.full(len(rows), 0.5), "open")
    assert list(ref["segments"]["source"]) == ["many"]
    assert ref["segments"]["source"]["many"]["leads"] == 400
    assert ref["segments"]["source"]["many"]["rows"] == 2400


def test_segment_counts_are_each_values_bin_counts():
    """Per kept value, the bin counts of its rows alone; rows of other values (code -1) in
    no row of the result."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 4, 5000)
    bins = rng.integers(0, 7, 5000)
    got = drift.segment_counts(bins, codes, 4, 7)
    assert got.shape == (4, 7)
    for v in range(4):
        assert got[v].tolist() == np.bincount(bins[codes == v], minlength=7).tolist()
    rows = drift.SegmentRows(codes, 4)  # reused for another feature's bins
    other = rng.integers(0, 3, 5000)
    assert rows.counts(other, 3)[2].tolist() == np.bincount(other[codes == 2],
                                                            minlength=3).tolist()


def test_segment_references_and_counts_add_up_and_alert_on_one_shifted_dealer():
    """The reference keeps each large enough dealer's and source's shares in the population's
    bins; tonight's counts per segment add up over buckets and to the population's; a shift
    in one dealer is diluted over all rows but alerts as ``x@dealer_id=D1``; dealers that
    swap their rows (the population unchanged) do not alert."""

    feats, scored = segmented_world()
    model = SimpleNamespace(features=["x", "source"], categories={"source": ["app", "web"]},
                            meta={})
    ref = reference.build(model, feats, scored.set_index("lead_id")
                          .loc[feats["lead_id"], "p_churn"].to_numpy(), "open_or_owner")
    assert ref["version"] == drift.REFERENCE_VERSION == 2
    assert set(ref["segments"]) == {"dealer_id", "source"}
    assert set(ref["segments"]["dealer_id"]) == {"D1", "D2"}  # D3: under MIN_SEGMENT_ROWS
    assert set(ref["segments"]["source"]) == {"web", "app", "walk"}
    for column, values in ref["segments"].items():
        for v, seg in values.items():
            assert seg["rows"] >= drift.MIN_SEGMENT_ROWS
            assert seg["rows"] == int((feats[column].astype("string") == v).sum())
            for f, spec in ref["features"].items():
                assert len(seg["features"][f]) == drift.n_bins(spec)
                assert sum(seg["features"][f]) == pytest.approx(1.0, abs=1e-4)
    w = watch.Watch({"churn": SimpleNamespace(meta={drift.REFERENCE_KEY: ref})})
    whole = w.count(feats, scored)["churn"]
    halves = [w.count(feats.iloc[:1500], scored)["churn"],
              w.count(feats.iloc[1500:], scored)["churn"]]
    summed: dict = {}
    for h in halves:
        watch._add_segments(summed, h["segments"])
    assert summed == whole["segments"]
    # every row in one source or none: the sources' counts and the missing ones add up
    src = whole["segments"]["source"]
    missing = feats["source"].isna().to_numpy()
    for f in ("x", "source"):
        total = np.sum([src[v]["features"][f] for v in src], axis=0)
        alone = np.bincount(drift.bins_of(feats.loc[missing, f], ref["features"][f]),
                            minlength=len(total))
        assert (total + alone).tolist() == whole["features"][f]
    assert sum(src[v]["rows"] for v in src) == len(feats) - missing.sum()
    assert sum(np.sum([src[v]["score"] for v in src], axis=0)) == len(feats) - missing.sum()
    # the training rows against themselves: nothing moved
    same = drift.compare(ref, whole)
    assert same["alerts"] == []
    assert set(same["segments"]["dealer_id"]) == {"D1", "D2"}
    assert all(abs(v) < 1e-3 for v in same["segments"]["dealer_id"]["D1"]["features"].values())
    # D1's x moves by one standard deviation: over all rows under the alert, in D1 over it
    moved = feats.copy()
    d1 = moved["dealer_id"] == "D1"
    moved.loc[d1, "x"] = moved.loc[d1, "x"] + 1.0
    got = drift.compare(ref, w.count(moved, scored)["churn"], alert=0.25)
    assert got["features"]["x"] < 0.25 <= got["segments"]["dealer_id"]["D1"]["features"]["x"]
    assert "x@dealer_id=D1" in got["alerts"] and "x" not in got["alerts"]
    assert not [a for a in got["alerts"] if "D2" in a or "source=" in a]
    # D1 and D2 swap their rows: each differs from its training rows, the population does
    # not (the others offset it): no alert, the PSIs kept under offset
    swapped = feats.copy()
    swapped["dealer_id"] = feats["dealer_id"].replace({"D1": "D2", "D2": "D1"})
    got = drift.compare(ref, w.count(swapped, scored)["churn"], alert=0.25)
    d1 = got["segments"]["dealer_id"]["D1"]
    assert d1["features"]["x"] >= 0.25 and "x" in d1["offset"]
    assert got["alerts"] == []
    # a segment with too few rows tonight is left out
    few = drift.compare(ref, w.count(moved.iloc[:600], scored)["churn"])
    assert set(few["segments"].get("dealer_id", {})) <= {"D1", "D2"}
    assert all(r["rows"] >= drift.MIN_SEGMENT_ROWS
               for vals in few["segments"].values() for r in vals.values())


def test_a_version_1_reference_without_segments_is_still_compared():
    feats, scored = segmented_world(n=800)
    ref = {"version": 1, "population": "open_or_owner", "rows": 800,
           "features": {"x": drift.entry(feats["x"])}, "score": drift.entry(scored["p_churn"])}
    w = watch.Watch({"churn": SimpleNamespace(meta={drift.REFERENCE_KEY: ref})})
    counts = w.count(feats, scored)["churn"]
    assert "segments" not in counts
    got = drift.compare(ref, counts)
    assert got["segments"] == {} and got["alerts"] == []


# --------------------------------------------------------------------------- a held-out world


@pytest.fixture(scope="module")
def world(trained, tmp_path_factory):
    """A world the models never saw (same simulator, another seed), its last full day, and
    the registry's champions as the nightly job loads them."""
    base = tmp_path_factory.mktemp("drift-world")
    data = base / "clean"
    # other leads of the training world's dealer group (conftest's seed 11): each world
    # draws its dealers' contact habits, which a per-dealer reference rightly tells apart
    sim.write(sim.simulate(sim.SimConfig(n_leads=2500, days=150, seed=12, dealer_seed=11)),
              data)
    ev = pd.read_parquet(data / "events.parquet")
    as_of = pd.Timestamp(ev["ts"].max()).floor("D")
    return SimpleNamespace(base=base, data=data, as_of=as_of,
                           scorer=Scorer.from_registry(MODELS, num_threads=2))


def shifted(world, name: str, change) -> Path:
    """A copy of the world's data whose events went through ``change(events, leads)``."""
    out = world.base / name
    if not out.is_dir():
        out.mkdir()
        leads = pd.read_parquet(world.data / "leads.parquet")
        events = change(pd.read_parquet(world.data / "events.parquet"), leads)
        events.to_parquet(out / "events.parquet", index=False)
        for t in ("leads", "contacts"):
            pd.read_parquet(world.data / f"{t}.parquet").to_parquet(out / f"{t}.parquet",
                                                                    index=False)
    return out


def finance_twice(events: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """The largest lead source starts tagging every finance-calculator event twice (the
    copy a second later: exact duplicates would be dropped at validation)."""
    source = leads["source"].value_counts().index[0]
    ids = set(leads.loc[leads["source"] == source, "lead_id"])
    dup = events[(events["event_type"] == "finance_calc") & events["lead_id"].isin(ids)].copy()
    dup["ts"] += pd.Timedelta(seconds=1)
    if "ingested_at" in dup:
        dup["ingested_at"] += pd.Timedelta(seconds=1)
    return pd.concat([events, dup], ignore_index=True)


def clock_shift(events: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """The largest dealer's event clock runs 8 hours ahead."""
    dealer = leads["dealer_id"].value_counts().index[0]
    ids = set(leads.loc[leads["dealer_id"] == dealer, "lead_id"])
    out = events.copy()
    hit = out["lead_id"].isin(ids)
    out.loc[hit, "ts"] += pd.Timedelta(hours=8)
    if "ingested_at" in out:
        out.loc[hit, "ingested_at"] += pd.Timedelta(hours=8)
    return out


def night(world, data: Path, out: Path, **kw) -> batch.RescoreResult:
    return batch.rescore(data, world.as_of, out, reasons=0, scorer=world.scorer, **kw)


def test_the_model_carries_the_reference_of_its_training_rows(trained):
    import mlflow

    for name in MODELS:
        model, _ = registry.load(name, registry.CHAMPION)
        ref = model.meta[drift.REFERENCE_KEY]
        assert set(ref["features"]) == set(model.features)
        for f, spec in ref["features"].items():
            assert sum(spec["shares"]) == pytest.approx(1.0, abs=1e-4), f
            assert len(spec["shares"]) == drift.n_bins(spec)
            if f in model.categories:
                assert spec["levels"] == model.categories[f]
            else:
                assert len(spec["edges"]) <= drift.BINS - 1
        assert sum(ref["score"]["shares"]) == pytest.approx(1.0, abs=1e-4)
        assert ref["population"] == ("contact_attempt" if name == "contact-slot" else
                                     "open_or_owner" if name == "churn" else "open")
        if name != "contact-slot":  # the latest training cutoffs, not all of them
            run_id = registry.resolve(name, registry.CHAMPION).run_id
            trained_at = sorted(pd.Timestamp(t) for t in json.loads(
                mlflow.artifacts.load_text(f"runs:/{run_id}/cutoffs.json")))
            held = [pd.Timestamp(t) for t in ref["cutoffs"]]
            assert len(held) >= reference.LATEST_CUTOFFS
            assert set(pd.Series(held).diff().dropna()) == {pd.Timedelta(days=7)}
            assert held[-1] >= trained_at[-1]  # a small world needs every cutoff's rows
        # logged with the run too
        run_id = registry.resolve(name, registry.CHAMPION).run_id
        logged = mlflow.artifacts.load_text(f"runs:/{run_id}/drift_reference.json")
        assert json.loads(logged) == ref


def reference_cutoffs(name: str) -> list[pd.Timestamp]:
    """The training cutoffs the registered model's drift reference holds (its latest)."""
    model, _ = registry.load(name, registry.CHAMPION)
    return [pd.Timestamp(t) for t in model.meta[drift.REFERENCE_KEY]["cutoffs"]]


def pooled(world, data: Path) -> dict:
    """The nightly job run on ``data`` at every training cutoff the compared models'
    references hold (open leads at their latest weekly cutoffs), each model's counts summed
    over its own cutoffs (per segment too) and compared with its reference."""
    cutoffs = {m: reference_cutoffs(m) for m in COMPARED}
    counts: dict = {}
    for t in sorted(set().union(*cutoffs.values())):
        out = data.parent / f"{data.name}-nights" / t.strftime("%Y%m%d")
        batch.rescore(data, t, out, reasons=0, scorer=world.scorer,
                      cache=data.parent / f"{data.name}-intake")
        for path in sorted((out / watch.COUNTS_DIR).glob("*.json")):
            for m, c in json.loads(path.read_text()).items():
                if m not in cutoffs or t not in cutoffs[m]:
                    continue
                got = counts.setdefault(m, {"rows": 0, "features": {}, "score": None})
                got["rows"] += c["rows"]
                got["score"] = watch._add(got["score"], c["score"])
                for f, v in c["features"].items():
                    got["features"][f] = watch._add(got["features"].get(f), v)
                watch._add_segments(got.setdefault("segments", {}), c.get("segments") or {})
    return {m: drift.compare(world.scorer.models[m].meta[drift.REFERENCE_KEY], c)
            for m, c in counts.items()}


def psi_of(report: dict, names) -> dict:
    return {m: {f: r["features"][f] for f in names if f in r["features"]}
            for m, r in report.items()}


def test_no_alert_on_a_held_out_world_scored_as_the_models_were_trained(world):
    """The same population as the training rows (open leads at the training cutoffs), in a
    world the models never saw: every feature and score within the alert threshold. (The
    simulator's own last night is not that population: it creates leads over the first two
    thirds of its days only, so by its end the open leads are older and more contacted than
    at any training cutoff, and the job rightly reports it: see the next test.)"""
    report = pooled(world, world.data)
    assert set(report) == set(COMPARED)
    for name, r in report.items():
        assert r["alerts"] == [], (name, r["alerts"], r["score_psi"])
        assert r["score_psi"] < 0.1, name
        assert set(r["features"]) == set(world.scorer.models[name].features)


def test_the_simulators_last_night_reports_its_schema_and_the_slot_model_skipped(
        world, tmp_path):
    res = night(world, world.data, tmp_path / "out")
    report = json.loads((tmp_path / "out" / watch.DRIFT_FILE).read_text())
    assert report == res.drift
    for name in COMPARED:
        r = report[name]
        assert set(r) >= {"score_psi", "features", "missing", "unseen", "alerts"}
        model = world.scorer.models[name]
        assert set(r["features"]) == set(model.features)
        assert set(r["unseen"]) == set(model.categories)
        assert all(len(v) == 2 for v in r["missing"].values())
        assert r["rows"] > 0
        # no lead created for 50 days: the open leads are older than in training
        assert "lead_age_days" in r["alerts"]
    # the slot model was trained on contact attempts, not on the leads the job scores
    assert set(report["contact-slot"]) == {"skipped"}


@pytest.fixture(scope="module")
def unshifted(world):
    return pooled(world, world.data)


def rises(before: dict, after: dict) -> dict[str, list[tuple[float, str]]]:
    """Per model, each feature's PSI rise over the unshifted world, largest first."""
    return {m: sorted(((after[m]["features"][f] - v, f) for f, v in r["features"].items()),
                      reverse=True) for m, r in before.items()}


def largest(world, column: str) -> str:
    """The world's largest lead source or dealer (the one the shifts below change)."""
    return str(pd.read_parquet(world.data / "leads.parquet")[column].value_counts().index[0])


def segment_alerts(report: dict, names, column: str, value: str) -> dict[str, list[str]]:
    """Per model using any of ``names``, its alerts naming one of them in ``column=value``."""
    return {m: [a for a in r["alerts"] if a.split("@")[0] in names
                and a.endswith(f"@{column}={value}")]
            for m, r in report.items() if set(names) & set(r["features"])}


def test_a_source_tagging_finance_events_twice_alerts_on_that_source(world, unshifted):
    """The largest source (about a quarter of the leads) tags every finance-calculator event
    twice: the finance features are the ones that move, most for every model. Over the whole
    population their PSI stays under the alert (the other sources dilute it); within the
    source, every model using finance features alerts on one of them, named with the
    source."""
    report = pooled(world, shifted(world, "finance", finance_twice))
    for name, ranked in rises(unshifted, report).items():
        assert ranked[0][1] in FINANCE, (name, ranked[:5])
        # it stands out: several times any other feature's rise
        other = max(v for v, f in ranked if f not in FINANCE)
        assert ranked[0][0] > max(5 * other, 0.005), (name, ranked[:5])
    source = largest(world, "source")
    named = segment_alerts(report, FINANCE, "source", source)
    assert set(named) == set(COMPARED), named
    for name, got in named.items():
        assert got, (name, report[name]["alerts"],
                     report[name]["segments"].get("source", {}).get(source))
    # the unshifted world has no alert at all (see above), segments included
    assert not any(r["alerts"] for r in unshifted.values())


def test_a_dealer_clock_shift_alerts_on_the_hour_features_of_that_dealer(world, unshifted):
    """The largest dealer's clock runs 8 hours ahead: the hour features (local-time activity
    shares) are the ones that move, most for every model; as above, under the alert over all
    dealers, over it within the dealer, named with the dealer."""
    report = pooled(world, shifted(world, "clock", clock_shift))
    for name, ranked in rises(unshifted, report).items():
        assert ranked[0][1] in HOURS, (name, ranked[:5])
        assert {f for _, f in ranked[:3]} <= set(HOURS), (name, ranked[:5])
        assert ranked[0][0] > 0.05, (name, ranked[:5])
    dealer = largest(world, "dealer_id")
    named = segment_alerts(report, HOURS, "dealer_id", dealer)
    assert set(named) == set(COMPARED), named
    for name, got in named.items():
        assert got, (name, report[name]["alerts"],
                     report[name]["segments"].get("dealer_id", {}).get(dealer))


def test_fail_on_drift_exits_3_after_writing_everything(world, tmp_path):
    out = tmp_path / "out"
    args = ["rescore", "--data", str(world.data), "--as-of", str(world.as_of), "--out",
            str(out), "--reasons", "0", "--models", ",".join(MODELS), "--fail-on-drift"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == DRIFT_EXIT, res.output
    assert json.loads((out / batch.MANIFEST).read_text())["complete"]
    assert json.loads((out / watch.DRIFT_FILE).read_text())["conversion"]["alerts"]
    # a higher threshold on the same night (a no-op rerun): no alert, exit 0
    res = CliRunner().invoke(app, [*args, "--drift-alert", "100"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / watch.DRIFT_FILE).read_text())["conversion"]["alerts"] == []


def test_a_resumed_run_writes_the_same_drift_report(world, tmp_path, monkeypatch):
    data = shifted(world, "finance", finance_twice)
    straight = night(world, data, tmp_path / "straight", bucket_leads=400)
    assert straight.buckets >= 3
    real, calls = batch._write_part, []

    def crash_on_third(out, bucket, scored):
        calls.append(bucket)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(out, bucket, scored)

    monkeypatch.setattr(batch, "_write_part", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        night(world, data, tmp_path / "resumed", bucket_leads=400)
    monkeypatch.setattr(batch, "_write_part", real)
    resumed = night(world, data, tmp_path / "resumed", bucket_leads=400)
    assert resumed.skipped_buckets == 2
    assert resumed.drift == straight.drift
    assert (tmp_path / "resumed" / watch.DRIFT_FILE).read_text() == \
        (tmp_path / "straight" / watch.DRIFT_FILE).read_text()


def test_an_artifact_without_a_reference_is_skipped_with_one_log_line(world, tmp_path,
                                                                     caplog):
    old = {n: (dataclasses.replace(m, meta={k: v for k, v in m.meta.items()
                                            if k != drift.REFERENCE_KEY})
               if n == "contact" else m) for n, m in world.scorer.models.items()}
    scorer = Scorer(old, num_threads=2)
    with caplog.at_level(logging.INFO, logger="leadscore.nightly.watch"):
        res = batch.rescore(world.data, world.as_of, tmp_path / "out", reasons=0,
                            scorer=scorer)
    assert set(res.drift["contact"]) == {"skipped"}
    assert "conversion" in res.drift and "score_psi" in res.drift["conversion"]
    lines = [r for r in caplog.records if "contact skipped" in r.getMessage()]
    assert len(lines) == 1


def test_a_night_where_everything_moved_logs_one_readable_line():
    """The log names the largest alerts and counts the rest (all are in _drift.json)."""
    from leadscore.nightly import watch

    assert watch.describe(["score", "a"]) == "score, a"
    many = ["score", *(f"f{i}" for i in range(30))]
    line = watch.describe(many)
    assert line.startswith("score, f0, f1") and line.endswith("and 23 more (see _drift.json)")
