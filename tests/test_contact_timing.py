"""Contact timing: slot rules, time zones, channel choice and off-policy evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leadscore.scoring.contact_policy import ChannelHours, ContactRules, RulesFile, slot_grid
from leadscore.training.policy_eval import doubly_robust


def test_quiet_hours_never_get_a_call():
    rules = ContactRules(quiet_hours=(20, 10),
                         channels={"phone": ChannelHours(start=0, end=24),
                                   "wechat": ChannelHours(start=0, end=24)})
    g = slot_grid(pd.Timestamp("2026-05-04 03:20", tz="UTC"), "Asia/Shanghai", rules)
    local = pd.DatetimeIndex(g["slot_start"]).tz_convert("Asia/Shanghai")
    phone = (g["channel"] == "phone").to_numpy()
    assert phone.any()
    hours = np.asarray(local.hour)[phone]
    assert ((hours >= 10) & (hours < 20)).all()
    # messages may still go out in quiet hours
    msg_hours = np.asarray(local.hour)[~phone]
    assert ((msg_hours >= 20) | (msg_hours < 10)).any()


def test_slots_follow_the_dealer_zone_across_midnight():
    # wechat allowed 22:00-02:00 local only: a window that crosses local midnight
    rules = ContactRules(channels={"wechat": ChannelHours(start=22, end=2)})
    as_of = pd.Timestamp("2026-05-04 00:00", tz="UTC")
    for zone in ("Asia/Shanghai", "Europe/Berlin", "Asia/Urumqi"):
        g = slot_grid(as_of, zone, rules)
        local = pd.DatetimeIndex(g["slot_start"]).tz_convert(zone)
        assert set(np.asarray(local.hour)) == {22, 23, 0, 1}, zone
        assert len(g) == 12  # 4 hours a night, 3 nights in 72 hours
        assert (g["slot_start"] >= as_of).all()
        assert (g["slot_start"] < as_of + pd.Timedelta(hours=73)).all()
    sh = slot_grid(as_of, "Asia/Shanghai", rules)["slot_start"].min()
    be = slot_grid(as_of, "Europe/Berlin", rules)["slot_start"].min()
    assert sh != be  # same local rule, different UTC instants


def test_weekend_rule_and_per_dealer_override():
    rf = RulesFile(dealers={"D09": ContactRules(
        channels={"phone": ChannelHours(start=9, end=18, weekends=False)})})
    g = slot_grid(pd.Timestamp("2026-05-08 00:00", tz="UTC"), "Asia/Shanghai",
                  rf.for_dealer("D09"))  # Friday: the grid spans Sat and Sun
    local = pd.DatetimeIndex(g["slot_start"]).tz_convert("Asia/Shanghai")
    assert set(g["channel"]) == {"phone"}
    assert (np.asarray(local.weekday) < 5).all()
    assert len(slot_grid(pd.Timestamp("2026-05-08", tz="UTC"), "Asia/Shanghai",
                         rf.for_dealer("D01"))) > len(g)


def test_doubly_robust_is_unbiased_with_known_propensities():
    """Synthetic bandit log with a known logging policy: the DR estimate of a fixed target
    policy matches its true value, whether or not the outcome model is right."""
    rng = np.random.default_rng(3)
    n, k = 200_000, 4
    x = rng.integers(0, 3, n)  # context
    true_p = np.array([[0.1, 0.3, 0.5, 0.2], [0.6, 0.2, 0.1, 0.3], [0.2, 0.2, 0.7, 0.4]])
    logging = np.array([0.4, 0.3, 0.2, 0.1])
    a = rng.choice(k, size=n, p=logging)
    r = rng.random(n) < true_p[x, a]
    target = np.array([2, 0, 2])  # the policy to evaluate: an action per context
    truth = np.mean(true_p[np.arange(3), target][x])
    for q in (true_p, np.full_like(true_p, 0.3)):  # right and wrong outcome models
        est = doubly_robust(q[x, target[x]], q[x, a], r.astype(float), a == target[x],
                            logging[a])
        assert est == pytest.approx(truth, abs=0.01)


def test_logging_policy_learns_propensities_that_depend_on_the_lead():
    """Advisors message night browsers in the evening and call the others by day: the learned
    propensity of the coarse action follows the lead, not just the dealer's average."""
    from leadscore.training.policy_eval import LoggingPolicy, action_id

    rng = np.random.default_rng(5)
    n = 20_000
    night = rng.random(n) < 0.3
    p_evening_msg = np.where(night, 0.8, 0.1)  # else a call at 10:00
    evening = rng.random(n) < p_evening_msg
    log = pd.DataFrame({
        "dealer_id": "D1", "night_share_30d": np.where(night, 0.9, 0.05),
        "channel": np.where(evening, "wechat", "phone"),
        "slot_hour": np.where(evening, 21.0, 10.0),
    })
    pol = LoggingPolicy.fit(log)
    msg = action_id(["wechat"] * n, np.full(n, 21.0))
    p = pol.propensity(log, msg)
    assert p[night].mean() == pytest.approx(0.8, abs=0.03)
    assert p[~night].mean() == pytest.approx(0.1, abs=0.03)
    # the same hour block and channel is the same coarse action
    assert action_id(["wechat"], [20.0])[0] == action_id(["wechat"], [23.0])[0] == msg[0]
    assert action_id(["sms"], [21.0])[0] != msg[0] != action_id(["wechat"], [19.0])[0]


def test_night_browser_who_never_answers_calls_gets_a_message(trained):
    from leadscore import registry
    from leadscore.scoring.contact_policy import recommend

    lm, _ = registry.load("contact-slot")
    row = trained["features"].head(1).copy()
    for c in [c for c in row.columns if c.startswith("activity_share_")]:
        row[c] = 0.0
    row["activity_share_20_24"] = 0.6
    row["activity_share_00_04"] = 0.4
    row["night_share_14d"] = row["night_share_30d"] = 1.0
    row["contact_attempts"], row["contact_responses"] = 6.0, 2.0
    row["phone_attempts"], row["message_attempts"] = 4.0, 2.0
    row["phone_response_rate"], row["message_response_rate"] = 0.0, 1.0
    row["price_inquiry_90d"] = row["call_inbound_90d"] = 0.0
    rec = recommend(lm, row, None, RulesFile())[0]
    assert rec["best_channel"] in ("wechat", "sms"), rec
    assert "message" in rec["reason"] or "22:00" in rec["reason"]


def test_slot_model_run_logs_policy_metrics(trained):
    res = trained["contact-slot"]
    m = res.metrics
    for k in ("policy_dr_estimate", "policy_true_model", "policy_true_logged",
              "policy_true_oracle", "policy_gain_share"):
        assert k in m
    assert m["policy_true_oracle"] >= m["policy_true_model"] - 1e-9
    assert m["policy_true_model"] > m["policy_true_logged"]  # beats the advisors' habits


def test_slot_search_picks_lightgbms_best_candidate(trained):
    """End to end against LightGBM itself: each lead's candidates laid out in full (the
    general layout) and scored by ``Booster.predict``; the search (the lead's row read once,
    the candidates walked as a set) must report that best slot and its probability."""
    from leadscore import registry
    from leadscore.scoring import contact_policy as cp

    lm, _ = registry.load("contact-slot")
    feats = trained["features"].head(40).reset_index(drop=True)
    X = lm.matrix(feats, absent=cp.SLOT_FEATURES)
    rules = RulesFile()
    rec = cp.recommend_matrix(lm, X, feats["as_of"], feats["tz"], feats["dealer_id"], None,
                              rules, top=0, reasons=False, num_threads=2)
    hour = 3_600_000_000
    for i in range(len(feats)):
        t = pd.Timestamp(feats["as_of"][i]).value // 1000
        g = cp._grid(rules, -(-t // hour) * hour, str(feats["tz"][i]), "")
        p = lm.calibrator(lm.booster.predict(cp._slot_rows(lm, g, X[i:i + 1]), raw_score=True))
        best = int(np.argmax(p))
        assert rec.p_response[i] == p[best]
        assert rec.best_slot_start[i] == np.datetime64(int(g.start[best]), "us")
        assert rec.best_channel[i] == g.channel[best]


def test_recommendations_come_with_scores(trained):
    from leadscore.scoring.scorer import Scorer

    sc = Scorer.from_registry()
    out = sc.score(trained["features"].head(30))
    assert out["best_channel"].isin(["phone", "wechat", "sms"]).all()
    assert (out["p_response"].between(0, 1)).all()
    starts = pd.to_datetime(out["best_slot_start"], utc=True)
    assert (starts >= pd.to_datetime(out["as_of"], utc=True)).all()
    assert (starts <= pd.to_datetime(out["as_of"], utc=True) + pd.Timedelta(hours=73)).all()
    assert out["reasons"].str.contains('"model": "contact-slot"').all()


def test_slot_activity_share_is_the_share_of_the_daypart_the_hour_falls_in():
    """The vectorised look-up in ``slot_values`` against the plain definition: per daypart,
    the hours in [start, end) take that daypart's share; a missing hour or daypart column
    gives NaN."""
    from leadscore.features import catalog, slots

    rng = np.random.default_rng(0)
    n = 400
    hour = rng.integers(0, 24, n).astype(float)
    hour[:4] = [np.nan, 23.5, 3.99, 24.0]
    cols = {catalog.daypart_feature(a): rng.random(n) for a, _ in catalog.DAYPARTS}
    del cols[catalog.daypart_feature(catalog.DAYPARTS[2][0])]  # a snapshot lacking one
    expected = np.full(n, np.nan)
    for a, b in catalog.DAYPARTS:
        v = cols.get(catalog.daypart_feature(a))
        if v is not None:
            m = (hour >= a) & (hour < b)
            expected[m] = v[m]
    got = slots.slot_values(hour, np.zeros(n), np.zeros(n, bool), cols.get)
    np.testing.assert_array_equal(got["slot_activity_share"], expected)
    assert np.isnan(got["slot_activity_share"][[0, 3]]).all()
    assert got["slot_activity_share"][1] == cols[catalog.daypart_feature(20)][1]


def test_slot_fill_lays_out_candidates_exactly_as_slot_values(trained, monkeypatch):
    """The per-grid gather of :class:`_SlotFill` against :func:`slot_values` on repeated rows:
    bit-identical matrices for leads with missing and present values, on grids of several
    zones and rules; and a slot feature computed from lead values (not picked) falls back to
    the general layout."""
    from leadscore import registry
    from leadscore.scoring import contact_policy as cp

    lm, _ = registry.load("contact-slot")
    rng = np.random.default_rng(3)
    X = rng.random((7, len(lm.features))) * 10
    X[rng.random(X.shape) < 0.3] = np.nan
    rules = RulesFile(dealers={"D1": ContactRules(quiet_hours=(20, 9))})
    first = pd.Timestamp("2026-03-28T22:00Z")  # a DST change in Europe inside the window
    for zone, dealer in (("Europe/Berlin", ""), ("Asia/Shanghai", "D1"),
                         ("America/New_York", "")):
        g = cp._grid(rules, first.value // 1000, zone, dealer)
        fill = g.fill(lm)
        assert fill is not None and g.size > 0
        for lead in (X, X[:1]):
            rep = np.repeat(lead, g.size, axis=0)  # the candidates as the gather gives them
            rep[:, fill.dst] = fill.values(lead).reshape(len(rep), -1)
            np.testing.assert_array_equal(rep, cp._slot_rows(lm, g, lead))

    real = cp.slot_values

    def mixed(hour, weekday, is_phone, lead):
        out = real(hour, weekday, is_phone, lead)
        p = lead("phone_attempts")
        out["slot_channel_attempts"] = p * 2 if p is not None else out["slot_channel_attempts"]
        return out

    monkeypatch.setattr(cp, "slot_values", mixed)
    g = cp._grid(rules, first.value // 1000 + 3_600_000_000, "Europe/Berlin", "")
    assert g.fill(lm) is None


_D07_RULES = "dealers:\n  D07:\n    quiet_hours: [20, 10]\n"


def test_scorer_takes_its_rules_and_never_reads_the_environment(tmp_path, monkeypatch):
    """A scorer's contact rules are what its caller passed (the defaults otherwise): a rules
    file named in the environment does not change what a library caller scores with."""
    from leadscore.scoring.scorer import Scorer

    path = tmp_path / "rules.yaml"
    path.write_text(_D07_RULES)
    monkeypatch.setenv("LEADSCORE_CONTACT_RULES", str(path))
    assert Scorer({}).rules == RulesFile()
    assert RulesFile.load() == RulesFile()
    given = RulesFile(dealers={"D01": ContactRules(quiet_hours=(22, 8))})
    assert Scorer({}, rules=given).rules is given


def test_the_edges_read_the_rules_named_in_the_environment(tmp_path, monkeypatch):
    """``leadscore rescore`` passes the file named by LEADSCORE_CONTACT_RULES to the job; a bad
    file stops it with exit code 2 and the file's name, before any data is read."""
    from typer.testing import CliRunner

    from leadscore.cli import app
    from leadscore.nightly import batch
    from leadscore.scoring.contact_policy import RULES_ENV, rules_path_from_env

    seen = {}

    def fake_rescore(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(batch, "rescore", fake_rescore)
    path = tmp_path / "rules.yaml"
    path.write_text(_D07_RULES)
    monkeypatch.setenv(RULES_ENV, str(path))
    assert rules_path_from_env() == path
    args = ["rescore", "--data", str(tmp_path), "--as-of", "2026-05-04", "--out",
            str(tmp_path / "out")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert seen["rules"].for_dealer("D07").quiet_hours == (20, 10)

    path.write_text("dealers:\n  D07:\n    quiet_hour: [20, 10]\n")  # misspelt field
    seen.clear()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert str(path) in res.output and "quiet_hour" in res.output
    assert not seen  # stopped before the job
