"""The point-in-time feature job on tiny inline data: values computed by hand, window
boundaries, point-in-time invariance, many cutoffs in one call."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from leadscore import contract
from leadscore.features import catalog as cat
from leadscore.features import job

T = pd.Timestamp("2025-03-01", tz="UTC")  # the cutoff of most tests (Berlin is on UTC+1)
US = pd.Timedelta(microseconds=1)
MIN = pd.Timedelta(minutes=1)
H = pd.Timedelta(hours=1)
D = pd.Timedelta(days=1)


# --------------------------------------------------------------------------- helpers


def lead(lead_id, created, tz="Asia/Shanghai", source="website", intended_model=None,
         budget=None, dealer_id="D1"):
    return dict(lead_id=lead_id, dealer_id=dealer_id, created_at=created, source=source,
                intended_model=intended_model, city=None, budget=budget, tz=tz)


def ev(lead_id, ts, event_type="page_view", model=None, ingested_at=None):
    return dict(lead_id=lead_id, ts=ts, event_type=event_type, model=model, value=None,
                ingested_at=ingested_at)


def ct(lead_id, ts, channel="phone", outcome="connected"):
    return dict(lead_id=lead_id, ts=ts, channel=channel, outcome=outcome)


def _utc(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, utc=True).astype("datetime64[us, UTC]")


def frames(leads, events=(), contacts=()):
    lf = pd.DataFrame(leads, columns=[c.name for c in contract.TABLES["leads"]])
    ef = pd.DataFrame(list(events), columns=[c.name for c in contract.TABLES["events"]])
    cf = pd.DataFrame(list(contacts), columns=[c.name for c in contract.TABLES["contacts"]])
    lf["created_at"] = _utc(lf["created_at"])
    lf["budget"] = lf["budget"].astype("float64")
    for col in ("ts", "ingested_at"):
        ef[col] = _utc(ef[col])
    ef["value"] = ef["value"].astype("float64")
    cf["ts"] = _utc(cf["ts"])
    return lf, ef, cf


def features(con, leads, events=(), contacts=(), as_of=(T,), feats=cat.CATALOG):
    contract.register_frames(con, *frames(leads, events, contacts))
    return run(con, as_of, feats)


def run(con, as_of, feats=cat.CATALOG) -> pd.DataFrame:
    df = job.to_pandas(job.compute(con, list(as_of), feats), feats)
    return df.set_index(["lead_id", "as_of"], drop=False)


def row(df: pd.DataFrame, lead_id: str, as_of=T) -> pd.Series:
    return df.loc[(lead_id, as_of)]


def assert_values(r: pd.Series, expected: dict) -> None:
    got = {k: r[k] for k in expected}
    for k, v in expected.items():
        g = got[k]
        if v is None:
            assert g is None or (isinstance(g, float) and math.isnan(g)), (k, got)
        elif isinstance(v, float | int) and not isinstance(v, bool):
            assert g == pytest.approx(v, rel=1e-12, abs=1e-12), (k, got)
        else:
            assert g == v, (k, got)


# --------------------------------------------------------------------------- hand-computed


def test_counts_recency_models_and_trend(con):
    leads = [lead("A", T - 40 * D, source="website", intended_model="X5", budget=300000.0)]
    events = [
        ev("A", T - 1 * H, "page_view", "M1"),
        ev("A", T - 2 * D, "page_view", "M1"),
        ev("A", T - 3 * D, "brochure"),  # not a standard type: counted as "other"
        ev("A", T - 5 * D, "config_view", "M2"),
        ev("A", T - 6 * D, "finance_calc"),
        ev("A", T - 10 * D, "page_view", "M1"),
        ev("A", T - 20 * D, "price_inquiry"),
        ev("A", T - 60 * D, "page_view", "M3"),
        ev("A", T - 100 * D, "finance_calc"),  # beyond the 90-day lookback
    ]
    r = row(features(con, leads, events), "A")
    assert_values(r, {
        "page_view_1d": 1, "page_view_3d": 2, "page_view_7d": 2, "page_view_30d": 3,
        "page_view_90d": 4,
        "config_view_1d": 0, "config_view_7d": 1, "config_view_90d": 1,
        "finance_calc_7d": 1, "finance_calc_90d": 1,
        "price_inquiry_7d": 0, "price_inquiry_30d": 1,
        "browse_1d": 1, "browse_3d": 2, "browse_7d": 3, "browse_30d": 4, "browse_90d": 5,
        "high_intent_7d": 0, "high_intent_30d": 1, "high_intent_90d": 1,
        "events_1d": 1, "events_3d": 3, "events_7d": 5, "events_30d": 7, "events_90d": 8,
        "other_events_30d": 1,
        "store_visit_90d": 0, "wechat_reply_30d": 0,
        "days_since_any": 1 / 24, "days_since_finance_calc": 6.0,
        "days_since_config_view": 5.0, "days_since_price_inquiry": 20.0,
        "days_since_store_visit": None,
        "models_viewed_30d": 2, "top_model_share_30d": 0.75,
        "trend_7_30": (5 * 30 / 7) / 7,
        "source": "website", "intended_model": "X5", "budget": 300000.0,
        "lead_age_days": 40.0,
    })
    assert r["dealer_id"] == "D1" and bool(r["is_open"]) and not bool(r["is_owner"])


def test_empty_history_is_zero_counts_and_missing_rates(con):
    leads = [lead("A", T - 2 * D), lead("B", T - 5 * D)]
    events = [ev("B", T - 40 * D, "page_view", "M1")]  # outside every window but the 90d one
    df = features(con, leads, events)
    for lid in ("A", "B"):
        assert_values(row(df, lid), {
            "page_view_30d": 0, "events_30d": 0, "browse_7d": 0, "sessions_7d": 0,
            "sessions_30d": 0, "models_viewed_30d": 0, "contact_attempts": 0,
            "contact_responses": 0, "contact_replies": 0,
            "top_model_share_30d": None, "night_share_14d": None, "trend_7_30": None,
            "contact_response_rate": None, "phone_response_rate": None,
            "days_since_contact": None,
        })
    assert_values(row(df, "A"), {"days_since_any": None, "uncontacted_hours": 48.0})
    assert_values(row(df, "B"), {"days_since_any": 40.0, "page_view_90d": 1})


def test_lead_created_after_cutoff_is_absent_and_created_at_cutoff_present(con):
    leads = [lead("A", T), lead("B", T + US), lead("C", T - D)]
    df = features(con, leads)
    assert sorted(df["lead_id"]) == ["A", "C"]
    assert_values(row(df, "A"), {"lead_age_days": 0.0, "uncontacted_hours": 0.0})


def _day(d: pd.Timestamp, hh: int, mm: int = 0) -> pd.Timestamp:
    return d + pd.Timedelta(hours=hh, minutes=mm)


def test_night_share_uses_dealer_local_time(con):
    d1, d2, d3 = T - 1 * D, T - 2 * D, T - 3 * D
    leads = [
        lead("SH", T - 30 * D, tz="Asia/Shanghai"),  # UTC+8
        lead("BER", T - 30 * D, tz="Europe/Berlin"),  # UTC+1 in winter
        lead("DEF", T - 30 * D, tz=None),  # default zone: Asia/Shanghai
        lead("UTC", T - 30 * D, tz="UTC"),
    ]
    events = [
        ev("SH", _day(d2, 14), "page_view"),  # 22:00 local: night (start inclusive)
        ev("SH", _day(d2, 21, 59), "page_view"),  # 05:59 local next day: night
        ev("SH", _day(d2, 22), "page_view"),  # 06:00 local: day (end exclusive)
        ev("SH", _day(d3, 13, 59), "page_view"),  # 21:59 local: day
        ev("SH", _day(d3, 17), "page_view"),  # 01:00 local, across local midnight: night
        ev("BER", _day(d2, 21), "page_view"),  # 22:00 local: night
        ev("BER", _day(d2, 23, 30), "page_view"),  # 00:30 local (next local day): night
        ev("BER", _day(d1, 4, 59), "page_view"),  # 05:59 local: night
        ev("BER", _day(d1, 5), "page_view"),  # 06:00 local: day
        ev("BER", _day(d1, 12), "page_view"),  # 13:00 local: day
        ev("DEF", _day(d1, 14), "page_view"),  # 22:00 Shanghai (but 14:00 UTC): night
        ev("DEF", _day(d1, 10), "page_view"),  # 18:00 Shanghai: day
        ev("DEF", _day(d1, 23), "page_view"),  # 07:00 Shanghai (23:00 UTC): day
        ev("UTC", _day(d1, 23), "page_view"),  # 23:00: night
        ev("UTC", _day(T - 20 * D, 3), "page_view"),  # night, but only in the 30-day window
        ev("UTC", _day(d1, 12), "page_view"),
    ]
    df = features(con, leads, events)
    assert_values(row(df, "SH"), {"night_share_14d": 3 / 5, "night_share_30d": 3 / 5})
    assert_values(row(df, "BER"), {"night_share_14d": 3 / 5})
    assert_values(row(df, "DEF"), {"night_share_14d": 1 / 3})
    assert_values(row(df, "UTC"), {"night_share_14d": 1 / 2, "night_share_30d": 2 / 3})


def test_night_share_follows_daylight_saving_time(con):
    summer = pd.Timestamp("2025-07-01", tz="UTC")  # Berlin on UTC+2
    leads = [lead("BER", summer - 30 * D, tz="Europe/Berlin")]
    events = [
        ev("BER", _day(summer - D, 20), "page_view"),  # 22:00 CEST: night
        ev("BER", _day(summer - D, 3, 59), "page_view"),  # 05:59 CEST: night
        ev("BER", _day(summer - D, 4), "page_view"),  # 06:00 CEST: day
        ev("BER", _day(summer - 2 * D, 19, 30), "page_view"),  # 21:30 CEST: day
    ]
    df = features(con, leads, events, as_of=[summer])
    assert_values(row(df, "BER", summer), {"night_share_14d": 2 / 4})


def test_sessions_open_after_a_30_minute_gap(con):
    d = T - 2 * D
    leads = [lead("S", T - 60 * D)]
    events = [
        ev("S", d, "page_view"),  # session 1
        ev("S", d + 10 * MIN, "config_view"),
        ev("S", d + 40 * MIN, "page_view"),  # exactly 30 minutes after the previous: same
        ev("S", d + 70 * MIN + US, "page_view"),  # 30 min + 1 us after: session 2
        ev("S", d + 70 * MIN + US, "finance_calc"),  # same instant: still session 2
        ev("S", d + 5 * H, "page_view"),  # session 3
        ev("S", T - 10 * D, "page_view"),  # session 4: in the 30-day window only
        ev("S", T - 10 * D + 29 * MIN, "page_view"),
        ev("S", T - 8 * D - 1 * MIN, "page_view"),  # session 5: in the 30-day window only
        ev("S", T - 7 * D + 10 * MIN, "page_view"),  # session 6: 71 minutes later, in 7d
    ]
    df = features(con, leads, events)
    assert_values(row(df, "S"), {"sessions_7d": 4, "sessions_30d": 6})


def test_sessions_start_is_point_in_time(con):
    """An event whose predecessor within 30 minutes is not yet ingested opens a session."""
    d = T - 3 * D
    leads = [lead("S", T - 60 * D)]
    events = [
        ev("S", d, "page_view", ingested_at=T + 1 * H),  # late: invisible at T
        ev("S", d + 20 * MIN, "page_view"),
        ev("S", d + 45 * MIN, "page_view"),
    ]
    later = T + 2 * H
    df = features(con, leads, events, as_of=[T, later])
    assert_values(row(df, "S", T), {"sessions_7d": 1, "events_7d": 2})
    assert_values(row(df, "S", later), {"sessions_7d": 1, "events_7d": 3})
    # a late event bridging two visible ones: two sessions at T, one once it is ingested
    events2 = [
        ev("S", d, "page_view"),
        ev("S", d + 25 * MIN, "page_view", ingested_at=T + 1 * H),
        ev("S", d + 50 * MIN, "page_view"),  # 50 min after the first, 25 after the late one
    ]
    df2 = features(con, leads, events2, as_of=[T, later])
    assert_values(row(df2, "S", T), {"sessions_7d": 2})
    assert_values(row(df2, "S", later), {"sessions_7d": 1})


def test_unanswered_streak_counts_attempts_since_the_last_answer(con):
    leads = [lead("A", T - 40 * D), lead("B", T - 40 * D)]
    contacts = [
        ct("A", T - 6 * D, "phone", "connected"),
        ct("A", T - 4 * D, "phone", "no_answer"),
        ct("A", T - 3 * D, "wechat", "ignored"),
        ct("A", T - 2 * D, "sms", "ignored"),
        # a miss and an answer at the same instant: the answer counts as the later attempt
        ct("B", T - 2 * D, "phone", "connected"),
        ct("B", T - 2 * D, "phone", "no_answer"),
    ]
    df = features(con, leads, (), contacts, as_of=[T - 3 * D - H, T])
    assert_values(row(df, "A"), {"unanswered_streak": 3, "days_since_response": 6.0})
    assert_values(row(df, "A", T - 3 * D - H), {"unanswered_streak": 1})
    assert_values(row(df, "B"), {"unanswered_streak": 0, "days_since_response": 2.0})
    one = _sql_frame(con, [T - 3 * D - H, T]).set_index(["lead_id", "as_of"], drop=False)
    for key in (("A", T), ("A", T - 3 * D - H), ("B", T)):  # the one-statement engine agrees
        assert one.loc[key, "unanswered_streak"] == df.loc[key, "unanswered_streak"]


def test_contact_history(con):
    leads = [lead("A", T - 40 * D), lead("N", T - 3 * D)]
    contacts = [
        ct("A", T - 39 * D, "phone", "no_answer"),
        ct("A", T - 38 * D, "phone", "connected"),
        ct("A", T - 10 * D, "wechat", "replied"),
        ct("A", T - 5 * D, "sms", "ignored"),
        ct("A", T, "phone", "connected"),  # at the cutoff: not yet visible
        ct("A", T + D, "sms", "replied"),
    ]
    before_first = T - 39 * D - 12 * H
    df = features(con, leads, (), contacts, as_of=[before_first, T])
    assert_values(row(df, "A"), {
        "contact_attempts": 4, "contact_responses": 2, "contact_response_rate": 0.5,
        "contact_replies": 1, "phone_response_rate": 0.5, "message_response_rate": 0.5,
        "phone_attempts": 2, "message_attempts": 2, "unanswered_streak": 1,
        "days_since_response": 10.0, "days_since_contact": 5.0, "uncontacted_hours": 24.0,
    })
    assert_values(row(df, "A", before_first), {
        "contact_attempts": 0, "contact_responses": 0, "contact_response_rate": None,
        "days_since_contact": None, "uncontacted_hours": 12.0, "unanswered_streak": 0,
        "days_since_response": None,
    })
    # never contacted: waiting since creation
    assert_values(row(df, "N"), {"contact_attempts": 0, "uncontacted_hours": 72.0,
                                 "phone_attempts": 0, "message_response_rate": None})
    assert ("N", before_first) not in df.index  # not created yet


def test_open_and_owner_status(con):
    leads = [lead(x, T - 200 * D) for x in ("OWN", "LOST", "FUT", "LATE", "OPEN")]
    events = [
        ev("OWN", T - 150 * D, "order"),  # long before the lookback: still an owner
        ev("OWN", T - 2 * D, "service_visit"),
        ev("LOST", T - 5 * D, "lost"),
        ev("FUT", T, "order"),  # at the cutoff: not visible
        ev("LATE", T - D, "order", ingested_at=T + US),  # not ingested by the cutoff
        ev("OPEN", T - D, "page_view"),
    ]
    df = features(con, leads, events)
    status = {lid: (bool(row(df, lid)["is_open"]), bool(row(df, lid)["is_owner"]))
              for lid in ("OWN", "LOST", "FUT", "LATE", "OPEN")}
    assert status == {"OWN": (False, True), "LOST": (False, False), "FUT": (True, False),
                      "LATE": (True, False), "OPEN": (True, False)}
    # how long ago the order became visible, however far back; missing until then
    assert row(df, "OWN")["days_since_order"] == pytest.approx(150.0)
    for lid in ("LOST", "FUT", "LATE", "OPEN"):
        assert math.isnan(row(df, lid)["days_since_order"]), lid
    sql = _sql_frame(con, [T]).set_index("lead_id")
    assert sql.loc["OWN", "days_since_order"] == pytest.approx(150.0)
    assert sql.loc[["LOST", "FUT", "LATE", "OPEN"], "days_since_order"].isna().all()
    only_open = job.to_pandas(job.compute(con, [T], only_open=True))
    assert sorted(only_open["lead_id"]) == ["FUT", "LATE", "OPEN"]


# --------------------------------------------------------------------------- boundaries


def test_window_and_visibility_boundaries(con):
    leads = [lead("Z", T - 100 * D)]
    events = [
        ev("Z", T - 7 * D, "page_view"),  # exactly as_of - 7d: in the 7d window
        ev("Z", T - 7 * D - US, "config_view"),  # a microsecond earlier: not
        ev("Z", T - 90 * D, "test_drive_done"),  # exactly the lookback: in the 90d window
        ev("Z", T - 90 * D - US, "call_inbound"),  # beyond the lookback
        ev("Z", T, "finance_calc"),  # at as_of: not visible
        ev("Z", T - H, "price_inquiry", ingested_at=T),  # ingested exactly at as_of: visible
        ev("Z", T - H, "store_visit", ingested_at=T + US),  # a microsecond later: not
        ev("Z", T - 1 * D, "wechat_reply"),  # exactly 1 day: in the 1d window
    ]
    r = row(features(con, leads, events), "Z")
    assert_values(r, {
        "page_view_7d": 1, "page_view_3d": 0,
        "config_view_7d": 0, "config_view_30d": 1,
        "test_drive_done_90d": 1, "test_drive_done_30d": 0,
        "days_since_test_drive_done": 90.0,
        "call_inbound_90d": 0, "days_since_call_inbound": None,
        "finance_calc_1d": 0, "finance_calc_90d": 0, "days_since_finance_calc": None,
        "price_inquiry_1d": 1, "days_since_price_inquiry": 1 / 24,
        "store_visit_1d": 0, "store_visit_90d": 0, "days_since_store_visit": None,
        "wechat_reply_1d": 1, "events_1d": 2, "events_7d": 3, "events_90d": 5,
    })


def test_whole_history_by_hand(con):
    """Events 400, 200, 100 and 10 days back (the last ingested 8 days late): counts, tenure,
    recency, rhythm, value and pace over the whole history, beyond the 90-day lookback."""
    leads = [lead("A", T - 500 * D)]
    events = [
        ev("A", T - 400 * D, "order"), ev("A", T - 400 * D + H, "delivery"),  # one active day
        ev("A", T - 200 * D, "service_visit"), ev("A", T - 100 * D, "service_visit"),
        ev("A", T - 10 * D, "price_inquiry", ingested_at=T - 2 * D),
    ]
    lf, ef, cf = frames(leads, events)
    ef["value"] = [30000.0, None, 400.0, 600.0, None]
    contract.register_frames(con, lf, ef, cf)
    hist = [f for f in cat.CATALOG if isinstance(f, cat.History)]
    hist += cat.get(["events_90d", "days_since_any"])
    r = row(run(con, [T], hist), "A")
    assert_values(r, {
        "events_count_all": 5, "events_count_365d": 3, "events_count_180d": 2,
        "events_tenure_days": 400, "events_days_since_last": 10,
        "events_active_days": 4,
        # (last - first) / (active days - 1): the order and its delivery are one return
        "events_typical_gap_days": (400 - 10) / 3, "events_overdue": 10 / 130,
        # 1 event in 90 days against 5 over max(400, 90) days
        "events_pace_trend": (1 / 90) / (5 / 400),
        "orders_count_all": 1, "orders_count_365d": 0, "orders_days_since_last": 400,
        "orders_typical_gap_days": None, "orders_overdue": None,
        "orders_value_sum": 30000, "orders_value_mean": 30000,
        "service_count_all": 2, "service_count_180d": 1, "service_tenure_days": 200,
        "service_days_since_last": 100, "service_typical_gap_days": 100,
        "service_overdue": 1.0, "service_value_sum": 1000,
        "inbound_count_all": 3, "inbound_tenure_days": 200, "inbound_days_since_last": 10,
        "inbound_typical_gap_days": 95, "inbound_pace_trend": (1 / 90) / (3 / 200),
        "high_intent_hist_count_all": 1, "high_intent_hist_days_since_last": 10,
        # the 90-day features do not see any of it but the price inquiry
        "events_90d": 1, "days_since_any": 10,
    })
    before = row(run(con, [T - 9 * D], hist), "A", T - 9 * D)  # the inquiry is not yet in
    assert_values(before, {"events_count_all": 4, "events_days_since_last": 91,
                           "inbound_count_all": 2, "high_intent_hist_count_all": 0,
                           "events_typical_gap_days": (400 - 100) / 2})


def test_vocabulary_types_get_their_own_features_and_still_count_as_other(con):
    """A vocabulary type (here one whose name needs escaping) is counted by its own features;
    a type outside the vocabulary only by ``other_events_30d``, which counts every
    non-standard type whether or not a vocabulary names it."""
    odd = "offer returned/signed"
    vocab = cat.vocabulary_features(["trade_in_valuation", odd])
    names = [f.name for f in vocab]
    assert all(cat.feature(n) == f for n, f in zip(names, vocab, strict=True))
    evs = [ev("A", T - 2 * D, "trade_in_valuation"), ev("A", T - 10 * D, "trade_in_valuation"),
           ev("A", T - 400 * D, "trade_in_valuation"), ev("A", T - H, odd),
           ev("A", T - 3 * D, "never_seen_in_training"), ev("A", T - D, "page_view")]
    df = features(con, [lead("A", T - 500 * D)], evs, feats=[*cat.CATALOG, *vocab])
    t = cat.vocabulary_features(["trade_in_valuation"])
    o = cat.vocabulary_features([odd])
    assert_values(row(df, "A"), {
        t[0].name: 1.0, t[1].name: 2.0, t[2].name: 2.0, t[3].name: 3.0, t[4].name: 2.0,
        o[0].name: 1.0, o[3].name: 1.0, "other_events_30d": 4.0, "events_30d": 5.0})
    plain = features(con, [lead("A", T - 500 * D)], evs)
    assert row(plain, "A")["other_events_30d"] == 4.0
    # the sentence names the type as the data spells it
    assert t[1].sentence(2.0) == "Did trade_in_valuation 2 times in the last 30 days"
    assert o[4].sentence(1.0) == f"Last did {odd} 1 day ago"
    assert t[1].sentence(2.0, "zh-CN") == "近 30 天做了 trade_in_valuation 2 次"
    with pytest.raises(KeyError):
        cat.feature("type__page_view__30d")  # a standard type is no vocabulary type
    with pytest.raises(KeyError):
        cat.get(["type__x__12d"])


def test_whole_history_is_point_in_time(con):
    """An event ingested after the cutoff is not counted; one older than the lookback is."""
    leads = [lead("A", T - 800 * D)]
    events = [ev("A", T - 700 * D, "order"),  # far beyond the 90-day lookback: counted
              ev("A", T - 300 * D, "order", ingested_at=T + US),  # ingested after the cutoff
              ev("A", T, "order")]  # at the cutoff
    feats = cat.get(["orders_count_all", "events_90d", "orders_days_since_last"])
    r = row(features(con, leads, events, feats=feats), "A")
    assert_values(r, {"orders_count_all": 1, "events_90d": 0, "orders_days_since_last": 700})
    later = row(run(con, [T + D], cat.get(["orders_count_all", "orders_typical_gap_days"])),
                "A", T + D)
    assert_values(later, {"orders_count_all": 3, "orders_typical_gap_days": 700 / 2})


# --------------------------------------------------------------------------- invariance

TZS = ["Asia/Shanghai", "Europe/Berlin", None, "America/New_York", "Asia/Kolkata"]
TYPES = [*cat.STANDARD_EVENT_TYPES, "brochure", "share"]


def _np(stamps) -> np.ndarray:
    return np.array([t.tz_convert(None).to_datetime64() for t in stamps], dtype="datetime64[us]")


def random_data(seed: int, cutoffs: list[pd.Timestamp], n_leads: int = 120,
                n_events: int = 4000, n_contacts: int = 500):
    """Random leads/events/contacts concentrated around the cutoffs and the window edges, with
    ties, late ingestion, ingestion exactly at a cutoff and events exactly at a cutoff; a share
    of the events years back (whole-history features), and values on half of them."""
    rng = np.random.default_rng(seed)
    lo, hi = min(cutoffs) - 100 * D, max(cutoffs) + 5 * D
    span_us = int((hi - lo) / US)
    edges = [c - w * D for c in cutoffs for w in (0, 1, 3, 7, 14, 30, 90, 180, 365)]

    def times(n):
        t = lo + pd.to_timedelta(rng.integers(0, span_us, n), unit="us")
        # a third of the times snap to a cutoff or window edge, +-1 us or +-(29..31) minutes
        snap = rng.random(n) < 0.35
        base = pd.DatetimeIndex(rng.choice(_np(edges), n)).tz_localize("UTC")
        jitter = rng.choice([0, 0, 1, -1, 29 * 60_000_000, 30 * 60_000_000, 31 * 60_000_000,
                             -30 * 60_000_000], n)
        t = t.where(~snap, base + pd.to_timedelta(jitter, unit="us"))
        return pd.Series(t)

    ids = [f"L{i}" for i in range(n_leads)]
    created = times(n_leads) - 20 * D
    leads = pd.DataFrame({
        "lead_id": ids, "dealer_id": rng.choice(["D1", "D2"], n_leads), "created_at": created,
        "source": rng.choice(["website", "autohome", "douyin"], n_leads),
        "intended_model": rng.choice(["M1", "M2", None], n_leads),
        "city": None, "budget": rng.choice([np.nan, 2e5, 3e5], n_leads),
        "tz": rng.choice(np.array(TZS, dtype=object), n_leads),
    })
    ts = times(n_events)
    # sessions: a share of events follow another event of the same lead by 0..40 minutes
    ev_lead = rng.choice(ids, n_events)
    follow = rng.random(n_events) < 0.3
    prev = np.roll(np.arange(n_events), 1)
    ev_lead = np.where(follow, ev_lead[prev], ev_lead)
    shifted = ts.iloc[prev].reset_index(drop=True) + pd.Series(pd.to_timedelta(
        rng.choice([0, 10, 29, 30, 31, 40], n_events), unit="min"))
    ts = ts.where(~follow, shifted)
    # history beyond the lookback: whole days back (window edges stay edges), some of them
    # on the same day as another of the lead's events
    old = rng.random(n_events) < 0.2
    ts = ts.where(~old, ts - pd.Series(pd.to_timedelta(rng.integers(60, 800, n_events), "D")))
    kind = rng.random(n_events)
    ingested = pd.Series(pd.NaT, index=ts.index, dtype="datetime64[us, UTC]")
    on_time = kind < 0.6
    ingested[on_time] = ts[on_time] + pd.to_timedelta(rng.integers(0, 600, n_events),
                                                      unit="s")[on_time]
    late = kind > 0.85
    ingested[late] = ts[late] + pd.to_timedelta(rng.integers(0, 10 * 86400, n_events),
                                                unit="s")[late]
    at_cut = (kind > 0.8) & (kind <= 0.85)  # ingested exactly at a cutoff (when after ts)
    cut = pd.Series(rng.choice(_np(cutoffs), n_events)).dt.tz_localize("UTC")
    ingested[at_cut] = cut[at_cut].where(cut[at_cut] >= ts[at_cut], ts[at_cut])
    events = pd.DataFrame({
        "lead_id": ev_lead, "ts": ts, "event_type": rng.choice(TYPES, n_events),
        "model": rng.choice(np.array(["M1", "M2", "M3", None], dtype=object), n_events),
        "value": np.where(rng.random(n_events) < 0.5, rng.integers(1, 10**6, n_events) / 100,
                          np.nan),
        "ingested_at": ingested,
    })
    contacts = pd.DataFrame({
        "lead_id": rng.choice(ids, n_contacts), "ts": times(n_contacts),
        "channel": rng.choice(["phone", "wechat", "sms"], n_contacts),
        "outcome": rng.choice(["connected", "replied", "no_answer", "ignored", "refused"],
                              n_contacts),
    })
    for df, cols in ((leads, ["created_at"]), (events, ["ts", "ingested_at"]),
                     (contacts, ["ts"])):
        for c in cols:
            df[c] = _utc(df[c])
    return leads, events, contacts


CUTOFFS = [T - 14 * D, T - 7 * D, T, T + 5 * H + 7 * MIN]  # the last is not midnight-aligned


#: the catalogue and a data-driven vocabulary: one of random_data's non-standard types gets
#: features of its own, the other stays "other" (parity tests cover both)
FEATS = [*cat.CATALOG, *cat.vocabulary_features(["brochure"])]


def _frame(con, cutoffs, feats=FEATS):
    df = job.to_pandas(job.compute(con, cutoffs, feats), feats)
    return df.sort_values(["as_of", "lead_id"]).reset_index(drop=True)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [1, 2])
def test_features_only_see_visible_rows(con, seed):
    """Whole frames: at each cutoff, the features over the full data equal the features over
    only the rows visible at that cutoff (so rows at/after it, rows ingested after it and
    contacts at/after it change nothing)."""
    leads, events, contacts = random_data(seed, CUTOFFS)
    contract.register_frames(con, leads, events, contacts)
    full = _frame(con, CUTOFFS)
    assert len(full) > 100 and full["events_90d"].sum() > 1000  # the data is not trivial
    assert full["sessions_7d"].sum() > 0 and full["night_share_30d"].notna().sum() > 20
    # whole-history features see beyond the lookback, and values
    assert (full["events_count_all"] > full["events_90d"]).sum() > 100
    assert full["service_overdue"].notna().sum() > 20 and full["orders_value_sum"].sum() > 0
    for c in CUTOFFS:
        avail = events["ingested_at"].fillna(events["ts"])
        ev_vis = events[(events["ts"] < c) & (avail <= c)]
        ct_vis = contacts[contacts["ts"] < c]
        assert len(ev_vis) < len(events)
        contract.register_frames(con, leads, ev_vis, ct_vis)
        only_visible = _frame(con, [c])
        _assert_same(full[full["as_of"] == c].reset_index(drop=True), only_visible)


def test_adding_invisible_rows_changes_nothing(con):
    leads, events, contacts = random_data(3, [T])
    contract.register_frames(con, leads, events, contacts)
    before = _frame(con, [T])
    rng = np.random.default_rng(4)
    n = 3000
    ids = rng.choice(leads["lead_id"].to_numpy(), n)
    # (1) events at or after the cutoff, (2) events before it but ingested after it
    ts_future = T + pd.to_timedelta(rng.choice([0, 1, 60_000_000, 86_400_000_000], n),
                                    unit="us")
    ts_past = T - pd.to_timedelta(rng.integers(1, 100 * 86_400_000_000, n), unit="us")
    ing_late = T + pd.to_timedelta(rng.integers(1, 86_400_000_000, n), unit="us")
    extra = pd.DataFrame({
        "lead_id": np.concatenate([ids, ids]),
        "ts": _utc(pd.Series(np.concatenate([ts_future, ts_past]))),
        "event_type": rng.choice(TYPES, 2 * n),
        "model": rng.choice(np.array(["M1", "M9", None], dtype=object), 2 * n),
        "value": np.nan,
        "ingested_at": _utc(pd.Series(np.concatenate([ts_future, ing_late]))),
    })
    extra_ct = pd.DataFrame({
        "lead_id": ids, "ts": _utc(pd.Series(ts_future)),
        "channel": rng.choice(["phone", "sms"], n), "outcome": "connected",
    })
    contract.register_frames(con, leads, pd.concat([events, extra], ignore_index=True),
                             pd.concat([contacts, extra_ct], ignore_index=True))
    after = _frame(con, [T])
    _assert_same(before, after)


@pytest.mark.parametrize("days_grid", [True, False])
def test_many_cutoffs_equal_separate_calls(con, monkeypatch, days_grid):
    """Many cutoffs (totals carried from one to the next) equal one call per cutoff (a
    night's single pass), distinct active days counted on the grid of flags or by sorting."""
    if not days_grid:
        monkeypatch.setattr(job, "_DAYS_GRID", 0)
    leads, events, contacts = random_data(5, CUTOFFS)
    contract.register_frames(con, leads, events, contacts)
    together = _frame(con, CUTOFFS)
    separate = pd.concat([_frame(con, [c]) for c in CUTOFFS], ignore_index=True)
    _assert_same(together, separate)
    # the order of the cutoffs in the call does not matter either
    shuffled = _frame(con, [CUTOFFS[2], CUTOFFS[0], CUTOFFS[3], CUTOFFS[1]])
    _assert_same(together, shuffled)


def test_active_days_of_many_groups_equal_across_paths(con):
    """More history groups needing distinct active days than one scatter carries (eight):
    a night's single pass equals the totals carried over many cutoffs, group by group."""
    pairs = [(a, b) for i, a in enumerate(TYPES) for b in TYPES[i + 1:]][:11]
    feats = [cat.History(f"g{i}_active_days", says="{value:.0f}", stat="active_days",
                         events=p) for i, p in enumerate(pairs)]
    leads, events, contacts = random_data(7, CUTOFFS)
    contract.register_frames(con, leads, events, contacts)
    together = _frame(con, CUTOFFS, feats)
    assert (together[[f.name for f in feats]].sum() > 0).all()  # every group has days
    separate = pd.concat([_frame(con, [c], feats) for c in CUTOFFS], ignore_index=True)
    _assert_same(together, separate)


def test_feature_subset_equals_catalogue_columns(con):
    leads, events, contacts = random_data(6, [T], n_leads=40, n_events=800)
    contract.register_frames(con, leads, events, contacts)
    full = _frame(con, [T])
    some = cat.get(["night_share_14d", "sessions_7d", "top_model_share_30d", "lead_age_days",
                    "uncontacted_hours", "finance_calc_7d"])
    sub = job.to_pandas(job.compute(con, [T], some), some)
    sub = sub.sort_values(["as_of", "lead_id"]).reset_index(drop=True)
    cols = [*job.ID_COLUMNS, *(f.name for f in some)]
    assert list(sub.columns) == cols
    _assert_same(full[cols], sub)


def test_output_dtypes(con):
    df = features(con, [lead("A", T - D, intended_model="X5")],
                  [ev("A", T - H, "page_view", "M1")])
    assert df["source"].dtype == "category" and df["intended_model"].dtype == "category"
    assert df["page_view_7d"].dtype == "float64" and df["budget"].dtype == "float64"
    assert str(df["as_of"].dtype).endswith("UTC]")
    assert list(df.columns[:5]) == list(job.ID_COLUMNS)
    assert len(df.columns) == 5 + len(cat.CATALOG)


# --------------------------------------------------------------------------- engines agree


def _sql_frame(con, cutoffs):
    """The single-statement query of ``build_sql`` over its own ``_cutoffs`` table."""
    con.execute("CREATE OR REPLACE TEMP TABLE _cutoffs (as_of TIMESTAMPTZ)")
    con.executemany("INSERT INTO _cutoffs VALUES (?)", [[c.to_pydatetime()] for c in cutoffs])
    df = job.to_pandas(con.sql(job.build_sql(FEATS)).to_arrow_table(), FEATS)
    return df.sort_values(["as_of", "lead_id"]).reset_index(drop=True)


# cutoffs around the 2025 daylight-saving changes (US 9 Mar, EU 30 Mar, EU 26 Oct), some
# not at midnight: local hours must follow the offsets exactly
DST_CUTOFFS = [pd.Timestamp("2025-03-10 07:00", tz="UTC"), pd.Timestamp("2025-04-02", tz="UTC"),
               pd.Timestamp("2025-10-27 01:30", tz="UTC")]


@pytest.mark.parametrize("cutoffs", [CUTOFFS, DST_CUTOFFS, [T - 7 * D, T]],
                         ids=["mixed", "dst", "weekly"])
def test_compute_matches_the_single_statement_sql(con, cutoffs):
    """compute() (bucketed, staged) and build_sql() (one statement, microsecond resolution,
    local hours through ICU) are two implementations of the same definitions."""
    leads, events, contacts = random_data(7, cutoffs, n_leads=80, n_events=3000)
    contract.register_frames(con, leads, events, contacts)
    staged = _frame(con, cutoffs)
    assert staged["night_share_30d"].notna().sum() > 10
    assert (staged["inbound_count_all"] > staged["inbound_count_180d"]).sum() > 10
    _assert_same(staged, _sql_frame(con, cutoffs))


def test_pairs_match_compute(con):
    leads, events, contacts = random_data(8, CUTOFFS, n_leads=40, n_events=1500)
    contract.register_frames(con, leads, events, contacts)
    full = _frame(con, CUTOFFS)
    pairs = full[["lead_id", "as_of"]].sample(60, random_state=0)
    got = job.to_pandas(job.compute_pairs(con, pairs, FEATS), FEATS)
    got = got.sort_values(["as_of", "lead_id"]).reset_index(drop=True)
    want = full.merge(pairs, on=["lead_id", "as_of"]).sort_values(["as_of", "lead_id"])
    _assert_same(got, want.reset_index(drop=True))


def test_night_share_across_a_dst_change(con):
    cut = pd.Timestamp("2025-04-02", tz="UTC")  # Berlin moved to UTC+2 at 01:00 UTC on 30 Mar
    leads = [lead("BER", cut - 30 * D, tz="Europe/Berlin"),
             lead("NY", cut - 30 * D, tz="America/New_York")]  # UTC-4 from 9 Mar 07:00 UTC
    events = [
        ev("BER", pd.Timestamp("2025-03-30 00:30", tz="UTC")),  # 01:30 CET: night
        ev("BER", pd.Timestamp("2025-03-30 03:30", tz="UTC")),  # 05:30 CEST: night
        ev("BER", pd.Timestamp("2025-03-30 04:30", tz="UTC")),  # 06:30 CEST (05:30 CET): day
        ev("BER", pd.Timestamp("2025-03-29 21:30", tz="UTC")),  # 22:30 CET: night
        ev("NY", pd.Timestamp("2025-03-09 06:59:59", tz="UTC")),  # 01:59:59 EST: night
        ev("NY", pd.Timestamp("2025-03-09 10:30", tz="UTC")),  # 06:30 EDT (05:30 EST): day
        ev("NY", pd.Timestamp("2025-03-10 02:30", tz="UTC")),  # 22:30 EDT (21:30 EST): night
        ev("NY", pd.Timestamp("2025-03-10 01:30", tz="UTC")),  # 21:30 EDT: day
    ]
    df = features(con, leads, events, as_of=[cut])
    assert_values(row(df, "BER", cut), {"night_share_14d": 3 / 4})
    assert_values(row(df, "NY", cut), {"night_share_30d": 2 / 4, "night_share_14d": None})


def test_empty_inputs_keep_the_schema(con):
    contract.register_frames(con, *frames([lead("A", T - D)], [ev("A", T - H)]))
    full = job.compute(con, [T])
    contract.register_frames(con, *frames([]))
    empty = job.compute(con, [T])
    assert empty.num_rows == 0 and empty.schema == full.schema
    contract.register_frames(con, *frames([lead("A", T - D)]))  # a lead with no history
    alone = job.compute(con, [T, T + D])
    assert alone.schema == full.schema and alone.num_rows == 2


def test_many_models_take_the_sparse_path(con, monkeypatch):
    leads, events, contacts = random_data(9, CUTOFFS, n_leads=60, n_events=2000)
    contract.register_frames(con, leads, events, contacts)
    dense = _frame(con, CUTOFFS)
    monkeypatch.setattr(job, "_DENSE_MODELS", 0)
    _assert_same(dense, _frame(con, CUTOFFS))
