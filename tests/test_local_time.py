"""Local times of contact slots: ``best_slot_local`` and ``start_local`` beside the UTC times
(batch, HTTP, CSV), the slot sentence in local time, one timestamp format, and an HTTP
request's slot search starting from its ``as_of``.

A tiny contact-slot model (LightGBM on slot hour and weekday plus one lead feature) stands in
for the trained one: what is tested is where the slots fall and how times are written, not
how well the model ranks them.
"""

from __future__ import annotations

import asyncio
import json
import re

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from leadscore.artifact import Calibrator, LeadModel
from leadscore.nightly import batch, per_bucket
from leadscore.schema import DEFAULT_TZ
from leadscore.scoring.scorer import OUTPUT_COLUMNS, SLOT_MODEL, Scorer
from leadscore.serving import store as online
from leadscore.serving.api import create_app
from leadscore.serving.auth import KeyRing, write_key_file
from leadscore.serving.coalesce import Coalescer
from leadscore.serving.runtime import Runtime

FEATURES = ["slot_hour", "slot_weekday", "page_view_7d"]
UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
LOCAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
KEY = "local-time-test-key"
# Berlin springs forward at 2026-03-29 01:00 UTC: a 72-hour search from here spans it
BEFORE_DST = pd.Timestamp("2026-03-27 09:20", tz="UTC")


@pytest.fixture(scope="module")
def slot_model() -> LeadModel:
    """Answers are likelier late in the local morning, and on weekends for busy browsers."""
    rng = np.random.default_rng(0)
    n = 4000
    x = pd.DataFrame({"slot_hour": rng.integers(0, 24, n).astype(float),
                      "slot_weekday": rng.integers(0, 7, n).astype(float),
                      "page_view_7d": rng.poisson(3, n).astype(float)})
    z = (-np.abs(x["slot_hour"] - 11) / 3 + (x["slot_weekday"] >= 5) * x["page_view_7d"] / 3)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1,
                         "min_data_in_leaf": 20}, lgb.Dataset(x, label=y), num_boost_round=20)
    return LeadModel(SLOT_MODEL, booster=booster, features=FEATURES, categories={},
                     calibrator=Calibrator("sigmoid", a=1.0, b=0.0))


def _leads(as_of: pd.Timestamp, zones: list, n_per: int = 6) -> pd.DataFrame:
    rows = []
    for z, zone in enumerate(zones):
        for k in range(n_per):
            rows.append({"lead_id": f"L{z:02d}{k:03d}", "dealer_id": "D1",
                         "as_of": as_of + pd.Timedelta(hours=7 * k), "tz": zone,
                         "page_view_7d": float(3 * k)})
    return pd.DataFrame(rows)


def _zone(tz) -> str:
    return DEFAULT_TZ if pd.isna(tz) or tz == "Mars/Olympus_Mons" else tz


def _local(utc, tz) -> str:
    """The expected local text, worked out the plain way (one row at a time)."""
    return pd.Timestamp(utc).tz_convert(_zone(tz)).isoformat(timespec="seconds")


ZONES = ["Asia/Shanghai", "Europe/Berlin", None, "Mars/Olympus_Mons"]


def test_batch_best_slot_local_is_the_utc_start_in_the_leads_zone(slot_model):
    feats = _leads(BEFORE_DST, ZONES)
    out = Scorer({SLOT_MODEL: slot_model}).score(feats, reasons=1)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert out["best_slot_start"].notna().all()
    for (_, r), tz in zip(out.iterrows(), feats["tz"], strict=True):
        assert LOCAL.match(r["best_slot_local"]), r["best_slot_local"]
        assert r["best_slot_local"] == _local(r["best_slot_start"], tz)
        assert pd.Timestamp(r["best_slot_local"]) == r["best_slot_start"]  # the same instant
    berlin = out[feats["tz"] == "Europe/Berlin"]["best_slot_local"].str[-6:]
    assert set(berlin) <= {"+01:00", "+02:00"}
    assert set(out[feats["tz"] != "Europe/Berlin"]["best_slot_local"].str[-6:]) == {"+08:00"}


def test_http_records_local_times_for_every_slot_across_a_dst_change(slot_model):
    feats = _leads(BEFORE_DST, ZONES, n_per=3)
    recs = Scorer({SLOT_MODEL: slot_model}).score_records(
        feats.to_dict("records"), reasons=1, slots=500, now=BEFORE_DST)
    offsets = set()
    for r, tz in zip(recs, feats["tz"], strict=True):
        assert UTC_Z.match(r["as_of"]) and UTC_Z.match(r["best_slot_start"]), r
        assert r["best_slot_local"] == _local(r["best_slot_start"], tz)
        assert len(r["next_slots"]) > 50  # every allowed slot of the 72 hours
        for s in r["next_slots"]:
            assert UTC_Z.match(s["start"]), s
            assert LOCAL.match(s["start_local"]), s
            assert s["start_local"] == _local(s["start"], tz)
            if tz == "Europe/Berlin":
                offsets.add(s["start_local"][-6:])
    assert offsets == {"+01:00", "+02:00"}  # both sides of the change, each with its own


def test_the_slot_sentence_names_the_local_time(slot_model):
    feats = _leads(BEFORE_DST, ["Asia/Shanghai", "Europe/Berlin"], n_per=3)
    recs = Scorer({SLOT_MODEL: slot_model}).score_records(
        feats.to_dict("records"), reasons=1, slots=0, now=BEFORE_DST)
    for r in recs:
        t = pd.Timestamp(r["best_slot_local"])
        off = t.utcoffset()
        hours, minutes = divmod(int(off.total_seconds()) // 60, 60)
        when = f"{t:%a} {t:%H:%M} (UTC+{hours:02d}:{minutes:02d})"
        (sentence,) = [x["sentence"] for x in r["reasons"] if x["model"] == SLOT_MODEL]
        assert f"by {r['best_channel']} at {when}" in sentence, sentence
        assert "UTC " not in sentence and sentence[0].isupper()


def test_csv_writes_utc_with_z_and_the_local_column(slot_model, tmp_path):
    feats = _leads(BEFORE_DST, ZONES, n_per=3)
    scored = per_bucket.fmt_types(Scorer({SLOT_MODEL: slot_model}).score(feats, reasons=1))
    out = tmp_path / "scores"
    out.mkdir()
    batch._write_part(out, 0, scored)  # the parts' own schema
    assert pd.read_parquet(out)["best_slot_local"].tolist() == scored["best_slot_local"].tolist()
    csv = tmp_path / "scores.csv"
    assert batch.export_csv(out, csv) == len(feats)
    back = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(back.columns) == list(OUTPUT_COLUMNS)
    assert back["as_of"].str.match(UTC_Z).all() and back["best_slot_start"].str.match(UTC_Z).all()
    by_id = feats.set_index("lead_id")
    for r in back.itertuples():
        assert r.best_slot_local == _local(r.best_slot_start, by_id.loc[r.lead_id, "tz"])
        assert pd.Timestamp(r.as_of) == by_id.loc[r.lead_id, "as_of"]


# --- HTTP: the slot search starts from the request's as_of -----------------------------------

@pytest.fixture(scope="module")
def client(slot_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("local-time")
    now = pd.Timestamp.now(tz="UTC")
    snapshot = _leads((now - pd.Timedelta(days=40)).floor("D"), ["Asia/Shanghai"], n_per=3)
    snapshot["as_of"] = snapshot["as_of"].min()
    online.write(snapshot, root / "features.db")
    keys = write_key_file(root / "keys.json", {"t": (KEY, ["D1"])})
    runtime = Runtime(online.OnlineStore(root / "features.db"), KeyRing.from_file(keys),
                      loader=lambda: Scorer({SLOT_MODEL: slot_model}), reload_seconds=0)
    assert runtime.reload()
    with TestClient(create_app(runtime), raise_server_exceptions=False) as c:
        yield c, snapshot


def _post(c, body) -> list[dict]:
    r = c.post("/score", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _assert_slots_follow(results: list[dict], t: pd.Timestamp) -> None:
    for x in results:
        assert x["status"] == "ok", x
        starts = [x["best_slot_start"], *(s["start"] for s in x["next_slots"])]
        for s in starts:
            assert UTC_Z.match(s), s
            assert t < pd.Timestamp(s) <= t + pd.Timedelta(hours=73), (s, t)
        assert x["best_slot_local"] == _local(x["best_slot_start"], "Asia/Shanghai")


def test_http_back_dated_request_gets_slots_after_its_as_of_not_after_now(client):
    c, snapshot = client
    as_of = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(days=30, minutes=40)
    ids = [{"lead_id": i} for i in snapshot["lead_id"]]
    # by id: the coalesced path (few leads), and the thread-pool path (more than four)
    _assert_slots_follow(_post(c, {"leads": ids[:2], "as_of": as_of.isoformat()}), as_of)
    _assert_slots_follow(_post(c, {"leads": ids * 1 + [
        {"lead_id": "web-1", "dealer_id": "D1", "tz": "Asia/Shanghai",
         "created_at": (as_of - pd.Timedelta(days=3)).isoformat(),
         "events": [{"ts": (as_of - pd.Timedelta(hours=h)).isoformat(),
                     "event_type": "page_view"} for h in (30, 5, 2)]},
        {"lead_id": "web-2", "dealer_id": "D1", "tz": "Asia/Shanghai",
         "created_at": (as_of - pd.Timedelta(days=1)).isoformat(), "events": []},
    ], "as_of": as_of.isoformat()}), as_of)
    # without an as_of: after now, as before
    asked = pd.Timestamp.now(tz="UTC")
    _assert_slots_follow(_post(c, {"leads": ids[:2]}), asked)


def test_coalesced_requests_keep_their_own_slot_start(slot_model):
    """Requests gathered into one pass with different as_of each get slots after their own."""
    scorer = Scorer({SLOT_MODEL: slot_model})
    recs = _leads(BEFORE_DST, ["Asia/Shanghai"], n_per=2).to_dict("records")
    later = BEFORE_DST + pd.Timedelta(days=2)

    async def both():
        co = Coalescer()
        return await asyncio.gather(co.score(scorer, recs, reasons=0, not_before=later),
                                    co.score(scorer, recs, reasons=0, not_before=None))

    with_as_of, without = asyncio.run(both())
    assert all(pd.Timestamp(x["best_slot_start"]) > later for x in with_as_of)
    now = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=1)
    assert all(pd.Timestamp(x["best_slot_start"]) > now for x in without)
    json.dumps(with_as_of)  # plain JSON values


def test_the_worklist_label_reads_the_local_text_with_its_own_offset():
    """What the demo prints for ``best_slot_local``: weekday, time and offset as written."""
    from leadscore.scoring.contact_policy import local_label

    assert local_label("2026-07-03T11:00:00+08:00") == "Fri 11:00 (UTC+08:00)"
    assert local_label("2026-03-29T03:00:00-04:00") == "Sun 03:00 (UTC-04:00)"
    kathmandu = pd.Timestamp("2026-07-03 05:15", tz="UTC").tz_convert("Asia/Kathmandu")
    assert local_label(kathmandu.isoformat()) == "Fri 11:00 (UTC+05:45)"
