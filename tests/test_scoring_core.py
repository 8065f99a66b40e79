"""The one scoring core from its public faces: a request's records and a frame give the
same matrix (LightGBM's numbers) and the same reasons, as dicts and as JSON text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def _tiny_scorer():
    """Two small models trained in a blink on catalogue features, a category among them."""
    import lightgbm as lgb

    from leadscore.artifact import Calibrator, LeadModel
    from leadscore.scoring.scorer import Scorer

    rng = np.random.default_rng(3)
    n = 400
    levels = ["web", "walk-in", "phone"]
    df = pd.DataFrame({
        "days_since_any": rng.exponential(10, n), "sessions_7d": rng.integers(0, 9, n) * 1.0,
        "night_share_14d": rng.random(n),
        "source": pd.Categorical(rng.choice(levels, n), categories=levels)})
    y = (df["sessions_7d"] + 3 * (df["source"] == "web") - df["days_since_any"] / 5
         + rng.normal(size=n) > 2).astype(int)
    models = {}
    for name, feats in (("conversion", list(df.columns)), ("churn", list(df.columns[:2]))):
        booster = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 5,
                             "num_leaves": 7}, lgb.Dataset(df[feats], y), num_boost_round=8)
        models[name] = LeadModel(name, booster, feats,
                                 {"source": levels} if "source" in feats else {},
                                 Calibrator("none"))
    return Scorer(models)


def test_http_and_batch_write_the_same_reasons_for_the_same_rows():
    """The public faces, on one set of rows: ``score_records`` (HTTP) and ``score`` (batch,
    JSON text) give the same reasons, as parsed JSON and as json.dumps' bytes, for a
    request's few rows and for a block; odd values included."""
    scorer = _tiny_scorer()
    rng = np.random.default_rng(8)
    n = 150
    records = [{"lead_id": f"L{i}", "dealer_id": "D1", "as_of": "2025-03-01T00:00:00Z",
                "days_since_any": [None, -0.0, 1e-7, 2, float(rng.exponential(10))][i % 5],
                "sessions_7d": float(rng.integers(0, 9)),
                "night_share_14d": float(rng.random()),
                "source": ["web", "walk-in", "phone", "kiosk", None][i % 5]}
               for i in range(n)]
    frame = pd.DataFrame(records).assign(as_of=lambda d: pd.to_datetime(d["as_of"], utc=True))
    frame.index = frame.index[::-1]  # positions count, not labels
    for rows in (slice(0, 3), slice(0, n)):
        batch = scorer.score(frame.iloc[rows], reasons=2)["reasons"].tolist()
        http = [r["reasons"] for r in scorer.score_records(records[rows], reasons=2)]
        assert [json.loads(t) for t in batch] == http
        assert batch == [json.dumps(rs, ensure_ascii=False) for rs in http]
    named = {(d["feature"], d["value"]) for rs in http for d in rs}
    assert ("source", "kiosk") in named and ("days_since_any", None) in named
    assert {d["model"] for rs in http for d in rs} == {"conversion", "churn"}


def test_record_columns_and_frames_give_the_matrix_lightgbm_builds():
    """Records as columns of Python values and a frame of the same values: one matrix, with
    the numbers LightGBM makes of :meth:`LeadModel.frame` (categories by training level,
    anything else missing)."""
    model = _tiny_scorer().models["conversion"]
    cols = {"days_since_any": (None, -0.0, 3, "4.5", float("nan"), "x", 2.5),
            "sessions_7d": (1.0, 2, None, 0.0, 7.0, 3.0, "2"),
            "night_share_14d": (0.5, 0.25, 1, None, 0.0, 0.75, 0.1),
            "source": ("web", "kiosk", None, "phone", "walk-in", "web", "phone")}
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in cols.items()})
    x = model.matrix(cols)
    np.testing.assert_array_equal(x, model.matrix(frame))
    assert x.flags.c_contiguous and x.shape == (7, 4)
    assert np.isnan(x[1, 3]) and np.isnan(x[2, 3]) and x[3, 0] == 4.5  # unseen category
    want = model.booster.predict(model.frame(frame), raw_score=True)
    np.testing.assert_array_equal(model.booster.predict(x, raw_score=True), want)
    np.testing.assert_array_equal(model.raw(x), want)
    # a value that is no training level (not even hashable) is missing, as LightGBM has it
    odd = model.matrix({**cols, "source": (["web"], *cols["source"][1:])})
    assert np.isnan(odd[0, 3]) and (odd[1:] == x[1:])[~np.isnan(x[1:])].all()
    typed = frame.astype({"sessions_7d": "float64"}).iloc[[6, 0, 2]]  # labels in any order
    np.testing.assert_array_equal(model.matrix(typed), model.matrix(
        {k: tuple(v[i] for i in (6, 0, 2)) for k, v in cols.items()}))
