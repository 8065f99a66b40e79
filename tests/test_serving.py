"""HTTP contract of POST /score, in process (FastAPI TestClient over the real Runtime).

The runtime loads the session's registered champions through the BentoML model store (as the
service does), the online store holds the open leads' features at ``trained["as_of"]``, and two
tenants split the simulated dealers between them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leadscore import contract, registry
from leadscore.features import catalog
from leadscore.schema import CHANNELS
from leadscore.scoring.scorer import NO_REASONS, PROBA_COLUMN, SLOT_MODEL, Scorer
from leadscore.serving import store as online
from leadscore.serving.api import (
    MAX_BODY_BYTES,
    MAX_EVENTS,
    MAX_LEADS,
    ZONES,
    ScoreResponse,
    create_app,
)
from leadscore.serving.auth import KeyRing, write_key_file
from leadscore.serving.runtime import Runtime

NORTH_KEY = "north-4f1c9e2a-key"
SOUTH_KEY = "south-b83d07aa-key"
NORTH = {"X-API-Key": NORTH_KEY}
SOUTH = {"X-API-Key": SOUTH_KEY}
GRADES = {"H", "A", "B", "C", "N"}
URGENCIES = {"now", "within_3_days", "nurture"}


class Served(SimpleNamespace):
    def __repr__(self) -> str:  # hypothesis prints its arguments on failure
        return "served"


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """Runtime + TestClient; north owns the first half of the dealers, south the rest."""
    root = tmp_path_factory.mktemp("serving")
    feats = trained["features"]
    dealers = sorted(feats["dealer_id"].astype(str).unique())
    north, south = dealers[: len(dealers) // 2], dealers[len(dealers) // 2:]
    path = root / "features.db"
    online.write(feats, path)
    keys = write_key_file(root / "keys.json", {"north": (NORTH_KEY, north),
                                               "south": (SOUTH_KEY, south)})
    runtime = Runtime(online.OnlineStore(path), KeyRing.from_file(keys), reload_seconds=0)
    assert runtime.reload()  # the production loader: MLflow registry -> BentoML store
    by_dealer = feats.assign(dealer_id=feats["dealer_id"].astype(str))
    ids = {
        "north": sorted(by_dealer.loc[by_dealer["dealer_id"].isin(north), "lead_id"].astype(str)),
        "south": sorted(by_dealer.loc[by_dealer["dealer_id"].isin(south), "lead_id"].astype(str)),
    }
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield Served(client=client, runtime=runtime, store_path=path, root=root,
                     north=north, south=south, ids=ids, as_of=trained["as_of"])


def score(served, body, headers=NORTH):
    return served.client.post("/score", json=body, headers=headers)


def by_id(served, ids, headers=NORTH, reasons=3, as_of=None) -> list[dict]:
    body = {"leads": [{"lead_id": i} for i in ids], "reasons": reasons}
    if as_of is not None:  # the slot search starts from it (else from now)
        body["as_of"] = pd.Timestamp(as_of).isoformat()
    r = score(served, body, headers)
    assert r.status_code == 200, r.text
    return r.json()["results"]


# --- the contract ----------------------------------------------------------------------------

def test_score_by_id_returns_calibrated_scores_grades_reasons_and_versions(served):
    ids = served.ids["north"][:4]
    asked = pd.Timestamp.now(tz="UTC")
    r = score(served, {"leads": [{"lead_id": i} for i in ids]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    ScoreResponse.model_validate(body)  # the documented response model
    results = body["results"]
    assert [x["lead_id"] for x in results] == ids  # request order

    champions = {}
    for name in served.runtime.scorer.models:
        res = registry.resolve(name)
        champions[name] = res.version
    for x in results:
        assert x["status"] == "ok"
        assert x["dealer_id"] in served.north
        assert pd.Timestamp(x["as_of"]) == served.as_of
        for col in ("p_convert", "p_inquiry", "p_churn"):
            assert 0.0 <= x[col] <= 1.0
        assert isinstance(x["lead_score"], int) and 0 <= x["lead_score"] <= 100
        assert x["lead_score"] == round(100 * x["p_convert"])
        assert x["intent_grade"] in GRADES and x["p_order_30d"] == x["p_convert"]
        assert x["contact_urgency"] in URGENCIES
        assert x["model_versions"] == champions
        models_with_reasons = {rs["model"] for rs in x["reasons"]}
        assert set(PROBA_COLUMN) - NO_REASONS <= models_with_reasons  # horizons: no reasons
        for rs in x["reasons"]:
            assert set(rs) == {"model", "feature", "value", "contribution", "sign",
                               "sentence"}
            assert isinstance(rs["sentence"], str) and rs["sentence"]
            assert rs["contribution"] != 0
            assert rs["sign"] == ("+" if rs["contribution"] > 0 else "-")
            assert rs["value"] is None or isinstance(rs["value"], (float, str))
        if SLOT_MODEL in champions:  # contact timing is served when its model is registered
            assert x["best_channel"] in CHANNELS
            # the snapshot is old: slots still start after the request, never in the past
            assert pd.Timestamp(x["best_slot_start"]) > asked > served.as_of
            assert 0.0 <= x["p_response"] <= 1.0
            assert [s["channel"] for s in x["next_slots"]][:1] == [x["best_channel"]]
            assert all(pd.Timestamp(s["start"]) > asked for s in x["next_slots"])
            local = pd.Timestamp(x["best_slot_local"])  # the same instant, the lead's offset
            assert local == pd.Timestamp(x["best_slot_start"]) and local.utcoffset() is not None


def test_reasons_are_exact_contributions_that_rebuild_the_calibrated_probability(served):
    ids = served.ids["north"][:6]
    results = {x["lead_id"]: x for x in by_id(served, ids, reasons=3)}
    frame = served.runtime.store.get(ids)
    scorer = served.runtime.scorer
    # the served models with reasons (the time-to-order horizons have none, and their
    # columns are monotone-corrected: tests/test_intent.py)
    explained = [(n, c) for n, c in PROBA_COLUMN.items() if n not in NO_REASONS]
    assert {n for n, _ in explained} <= set(scorer.models)
    for name, col in explained:
        model = scorer.models[name]
        contrib = model.contributions(frame)  # per feature, then the base value
        raw = model.booster.predict(model.frame(frame), raw_score=True)
        np.testing.assert_allclose(contrib.sum(axis=1), raw, rtol=0, atol=1e-9)
        # the trees' margin plus the classical start when churn's btyd.use auto kept it
        p = model.calibrator(model.raw(frame))
        for i, lead_id in enumerate(frame["lead_id"]):
            got = results[lead_id]
            assert got[col] == pytest.approx(p[i], abs=1e-9)
            ci = contrib[i, :-1]
            mine = [rs for rs in got["reasons"] if rs["model"] == name]
            # the listed reasons are the largest |contribution|, biggest first, signs
            # together; passed over: missing values without words, sentences said before
            row = frame.iloc[i]
            shown = [j for j, f in enumerate(model.features) if ci[j] != 0 and not (
                pd.isna(row[f]) and catalog.feature(f).sentence(None) is None)]
            top = sorted(shown, key=lambda j: (-abs(ci[j]), j))[:3]
            listed = [model.features.index(rs["feature"]) for rs in mine]
            assert len(mine) <= 3 and [j for j in top if j in listed] == listed
            said = {rs["sentence"] for rs in got["reasons"]}  # by this model or before
            for f in (model.features[j] for j in top):
                assert catalog.feature(f).sentence(None if pd.isna(row[f]) else row[f]) in said
            for rs in mine:
                j = model.features.index(rs["feature"])
                assert rs["contribution"] == pytest.approx(ci[j], abs=1e-6)
                v = frame[rs["feature"]].iloc[i]
                expect = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                if isinstance(expect, (int, float, np.floating)):
                    assert rs["value"] == pytest.approx(float(expect))
                else:
                    assert rs["value"] == expect
                assert rs["sentence"] == catalog.feature(rs["feature"]).sentence(rs["value"])


def test_records_and_frames_score_the_same_bit_for_bit(served):
    """The API's records path (no DataFrame on the way) and the batch frame path go through
    the one scorer core: the same numbers, slots and reasons, in one piece and split over
    threads, with and without reasons; the batch's reasons text is what ``json.dumps``
    writes of the API's."""
    from leadscore.scoring.scorer import iso_utc

    scorer = served.runtime.scorer
    ids = (served.ids["north"] + served.ids["south"])[::5][:160]
    records = served.runtime.store.get_records(ids)
    frame = served.runtime.store.get(ids)

    def same(a, b):
        a = None if a is None or (isinstance(a, float) and math.isnan(a)) else a
        b = None if b is None or b is pd.NaT or (isinstance(b, float) and math.isnan(b)) else b
        assert a == b

    for reasons in (3, 0):
        want = {r["lead_id"]: r for r in scorer.score(frame, reasons=reasons)
                .to_dict(orient="records")}
        assert len(want) == len(records) > 100
        for split in (1, 3):
            got = scorer.score_records(records, reasons=reasons, split=split)
            assert [g["lead_id"] for g in got] == [r["lead_id"] for r in records]
            for g in got:
                w = want[g["lead_id"]]
                for col in ("p_convert", "lead_score", "intent_grade", "p_inquiry",
                            "contact_urgency",
                            "best_channel", "p_response", "p_churn"):
                    same(g[col], w[col])
                same(g["best_slot_start"],
                     None if pd.isna(w["best_slot_start"]) else iso_utc(w["best_slot_start"]))
                same(g["best_slot_local"], w["best_slot_local"])
                assert g["reasons"] == json.loads(w["reasons"])
                # the batch output writes reasons as JSON text directly: json.dumps' bytes
                assert w["reasons"] == json.dumps(g["reasons"], ensure_ascii=False)
                assert (len(g["reasons"]) > 0) == (reasons > 0)
                assert len(g["next_slots"]) == 3
                assert g["next_slots"][0]["channel"] == g["best_channel"]


def test_contributions_computed_ahead_give_the_serial_frame(served, monkeypatch):
    """Big batch frames compute the models' contributions on a side thread while reasons are
    written: the output is the serial path's, cell for cell."""
    from leadscore.scoring.scorer import Scorer

    scorer = served.runtime.scorer
    ids = served.ids["north"] + served.ids["south"]
    frame = served.runtime.store.get(ids)
    monkeypatch.setattr(Scorer, "AHEAD_ROWS", 10**9)
    serial = scorer.score(frame, reasons=3)
    monkeypatch.setattr(Scorer, "AHEAD_ROWS", 1)
    ahead = scorer.score(frame, reasons=3)
    assert len(ahead) == len(frame) > 100
    pd.testing.assert_frame_equal(ahead, serial)


# --- id path == inline path ------------------------------------------------------------------

def _clean(v):
    if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


def inline_leads(sim_data, ids: list[str], as_of: pd.Timestamp, quarantine) -> list[dict]:
    """The leads as a CRM would send them: attributes plus every event and contact before
    ``as_of``, from the same validated tables the feature job read."""
    ds = contract.load(sim_data, quarantine_dir=quarantine)
    try:
        leads = ds.frame("leads").set_index("lead_id")
        ev = ds.con.execute("SELECT * FROM events WHERE ts < ? AND list_contains(?, lead_id)",
                            [as_of.to_pydatetime(), ids]).df()
        ct = ds.con.execute("SELECT * FROM contacts WHERE ts < ? AND list_contains(?, lead_id)",
                            [as_of.to_pydatetime(), ids]).df()
    finally:
        ds.con.close()
    out = []
    for lead_id in ids:
        lead = leads.loc[lead_id]
        out.append({
            "lead_id": lead_id,
            **{k: _clean(lead[k]) for k in ("dealer_id", "created_at", "source",
                                            "intended_model", "city", "budget", "tz")},
            "events": [{k: _clean(e[k]) for k in ("ts", "event_type", "model", "value",
                                                  "ingested_at")}
                       for _, e in ev[ev["lead_id"] == lead_id].iterrows()],
            "contacts": [{k: _clean(c[k]) for k in ("ts", "channel", "outcome")}
                         for _, c in ct[ct["lead_id"] == lead_id].iterrows()],
        })
    return out


def test_inline_events_score_exactly_like_the_snapshot_lookup(served, sim_data, tmp_path):
    if served.as_of > pd.Timestamp.now(tz="UTC"):
        pytest.skip("simulated data lies in the future of this clock")
    feats = served.runtime.store.get(served.ids["north"])
    busy = feats.sort_values(["events_30d", "contact_attempts"], ascending=False)
    ids = [*busy["lead_id"].head(4), *feats["lead_id"].head(2)]  # busy and quiet leads
    leads = inline_leads(sim_data, ids, served.as_of, tmp_path / "q")
    assert all(len(lead["events"]) <= MAX_EVENTS for lead in leads)
    assert sum(len(lead["events"]) for lead in leads) > 20
    r = score(served, {"as_of": served.as_of.isoformat(), "leads": leads})
    assert r.status_code == 200, r.text
    inline = {x["lead_id"]: x for x in r.json()["results"]}
    # the same as_of: both slot searches start from it (without it, from the wall clock)
    stored = {x["lead_id"]: x for x in by_id(served, ids, as_of=served.as_of)}
    for lead_id in ids:
        a, b = inline[lead_id], stored[lead_id]
        assert a["status"] == b["status"] == "ok"
        for col in ("p_convert", "p_inquiry", "p_churn", "p_response"):
            if b[col] is None:
                assert a[col] is None
            else:
                assert a[col] == pytest.approx(b[col], abs=1e-9), (lead_id, col)
        for col in ("lead_score", "intent_grade", "contact_urgency", "best_channel", "dealer_id",
                    "model_versions"):
            assert a[col] == b[col], (lead_id, col)
        assert pd.Timestamp(a["as_of"]) == pd.Timestamp(b["as_of"])
        assert [(x["model"], x["feature"]) for x in a["reasons"]] == \
            [(x["model"], x["feature"]) for x in b["reasons"]]
        for x, y in zip(a["reasons"], b["reasons"], strict=True):
            assert x["contribution"] == pytest.approx(y["contribution"], abs=2e-6)
            if isinstance(y["value"], float):
                assert x["value"] == pytest.approx(y["value"], abs=1e-9)
            else:
                assert x["value"] == y["value"]


# --- auth and tenancy ------------------------------------------------------------------------

def test_a_key_is_required_and_must_be_known(served):
    body = {"leads": [{"lead_id": served.ids["north"][0]}]}
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "not-a-key"},
                    {"X-API-Key": NORTH_KEY[:-1]}, {"x-api-key": NORTH_KEY.upper()}):
        r = score(served, body, headers)
        assert r.status_code == 401, headers
        assert "X-API-Key" in r.json()["error"]


def test_another_tenants_lead_is_indistinguishable_from_an_unknown_one(served):
    theirs, unknown = served.ids["south"][0], "L-NO-SUCH-LEAD"
    assert by_id(served, [theirs], SOUTH)[0]["status"] == "ok"  # it exists
    got = by_id(served, [theirs, unknown], NORTH)
    assert [x["status"] for x in got] == ["not_found", "not_found"]
    assert {k: v for k, v in got[0].items() if k != "lead_id"} == \
        {k: v for k, v in got[1].items() if k != "lead_id"}
    assert all(v in (None, [], {}, "not_found") for k, v in got[0].items() if k != "lead_id")


def test_inline_lead_of_a_dealer_outside_the_tenant_is_forbidden(served):
    lead = {"lead_id": "web-1", "dealer_id": served.south[0],
            "created_at": "2026-01-10T08:00:00Z", "events": []}
    r = score(served, {"leads": [{"lead_id": served.ids["north"][0]}, lead]})
    assert r.status_code == 403
    assert "leads.1.dealer_id" in r.json()["error"]
    r = score(served, {"leads": [{**lead, "dealer_id": "NO-SUCH-DEALER"}]})
    assert r.status_code == 403 and "leads.0.dealer_id" in r.json()["error"]


# --- bad input -------------------------------------------------------------------------------

def _ev(**kw):
    return {"ts": "2026-01-12T10:00:00Z", "event_type": "page_view", **kw}


def _inline(**kw):
    return {"lead_id": "web-9", "dealer_id": "D01", "created_at": "2026-01-10T08:00:00Z",
            "events": [_ev()], **kw}


FUTURE = "2099-01-01T00:00:00Z"
BAD_BODIES = [
    # (id, raw body or JSON-able, field the error names)
    ("malformed", b'{"leads": [{"lead_id": "a"}', "(body)"),
    ("not-json", b"leads=a", "(body)"),
    ("array", [{"lead_id": "a"}], "(body)"),
    ("empty-body", b"", "(body)"),
    ("missing-leads", {}, "leads"),
    ("leads-not-list", {"leads": "L0000001"}, "leads"),
    ("empty-leads", {"leads": []}, "leads"),
    ("lead-not-object", {"leads": ["L0000001"]}, "leads.0"),
    ("missing-lead-id", {"leads": [{}]}, "leads.0.lead_id"),
    ("lead-id-number", {"leads": [{"lead_id": 5}]}, "leads.0.lead_id"),
    ("lead-id-empty", {"leads": [{"lead_id": ""}]}, "leads.0.lead_id"),
    ("lead-id-long", {"leads": [{"lead_id": "x" * 129}]}, "leads.0.lead_id"),
    ("reasons-text", {"leads": [{"lead_id": "a"}], "reasons": "many"}, "reasons"),
    ("reasons-big", {"leads": [{"lead_id": "a"}], "reasons": 11}, "reasons"),
    ("reasons-negative", {"leads": [{"lead_id": "a"}], "reasons": -1}, "reasons"),
    ("extra-top", {"leads": [{"lead_id": "a"}], "debug": True}, "debug"),
    ("extra-lead", {"leads": [{"lead_id": "a", "colour": "red"}]}, "leads.0.colour"),
    ("extra-event", {"leads": [_inline(events=[_ev(page="x")])]}, "leads.0.events.0.page"),
    ("duplicate-ids", {"leads": [{"lead_id": "a"}, {"lead_id": "a"}]}, "leads"),
    ("too-many-leads", {"leads": [{"lead_id": f"L{i}"} for i in range(MAX_LEADS + 1)]},
     "leads"),
    ("too-many-events", {"leads": [_inline(events=[_ev()] * (MAX_EVENTS + 1))]},
     "leads.0.events"),
    ("nan-literal", b'{"leads": [{"lead_id": "a", "budget": NaN}]}', "leads.0.budget"),
    ("inf-literal", b'{"leads": [{"lead_id": "a", "budget": -Infinity}]}', "leads.0.budget"),
    ("huge-number", b'{"leads": [{"lead_id": "a", "budget": 1e999}]}', "leads.0.budget"),
    ("nan-event-value", json.dumps({"leads": [_inline(events=[_ev(value=float("nan"))])]})
     .encode(), "leads.0.events.0.value"),
    ("future-event", {"leads": [_inline(events=[_ev(ts=FUTURE)])]}, "leads.0.events.0.ts"),
    ("future-ingested", {"leads": [_inline(events=[_ev(ingested_at=FUTURE)])]},
     "leads.0.events.0.ingested_at"),
    ("future-created", {"leads": [_inline(created_at=FUTURE)]}, "leads.0.created_at"),
    ("future-as-of", {"leads": [{"lead_id": "a"}], "as_of": FUTURE}, "as_of"),
    ("created-after-as-of", {"leads": [_inline()], "as_of": "2026-01-01T00:00:00Z"},
     "leads.0.created_at"),
    ("bad-timestamp", {"leads": [_inline(events=[_ev(ts="yesterday")])]},
     "leads.0.events.0.ts"),
    ("unknown-tz", {"leads": [_inline(tz="Mars/Olympus_Mons")]}, "leads.0.tz"),
    ("unknown-channel", {"leads": [_inline(contacts=[
        {"ts": "2026-01-11T09:00:00Z", "channel": "fax", "outcome": "replied"}])]},
     "leads.0.contacts.0.channel"),
    ("inline-incomplete", {"leads": [{"lead_id": "a", "events": []}]}, "leads.0"),
]


@pytest.mark.parametrize("body,field", [(b, f) for _, b, f in BAD_BODIES],
                         ids=[i for i, _, _ in BAD_BODIES])
def test_bad_input_is_a_4xx_that_names_the_field(served, body, field):
    if isinstance(body, bytes):
        r = served.client.post("/score", content=body,
                               headers={**NORTH, "Content-Type": "application/json"})
    else:
        r = score(served, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert err.startswith(field) or f"{field}:" in err, err


# --- requests scored together (serving.coalesce) -----------------------------------------------

@pytest.fixture
def coalescing(served, monkeypatch):
    """The scorer with every ``score_records`` call recorded (row counts), the clock fixed,
    and each request's answer when scored alone."""
    from leadscore.serving import coalesce

    now = pd.Timestamp("2026-06-01T10:17:00Z")
    monkeypatch.setattr(coalesce, "now_utc", lambda: now)
    scorer = served.runtime.scorer
    real = scorer.score_records
    calls = []

    def recorded(records, **kw):
        calls.append(len(records))
        return real(records, **kw)

    monkeypatch.setattr(scorer, "score_records", recorded)
    store, north = served.runtime.store, frozenset(served.north)
    requests = [store.get_records(served.ids["north"][i: i + k], dealers=north)
                for i, k in ((0, 1), (1, 1), (2, 3), (5, 1), (6, 2))]

    def alone(records, reasons=3):
        return real(records, reasons=reasons, slots=3, now=now)

    return SimpleNamespace(scorer=scorer, calls=calls, requests=requests, alone=alone)


def _together(coalescer, scorer, requests, reasons=None):
    import asyncio

    async def main():
        return await asyncio.gather(*(
            coalescer.score(scorer, r, reasons=3 if reasons is None else reasons[k])
            for k, r in enumerate(requests)), return_exceptions=True)

    return asyncio.run(main())


def test_requests_arriving_together_are_scored_in_one_pass_each_getting_its_own_answer(
        coalescing):
    from leadscore.serving.coalesce import Coalescer

    got = _together(Coalescer(), coalescing.scorer, coalescing.requests)
    assert coalescing.calls == [8]  # five requests, eight leads, one pass
    assert got == [coalescing.alone(r) for r in coalescing.requests]  # to the bit


def test_a_lone_request_is_scored_at_once_and_full_batches_close_early(coalescing):
    from leadscore.serving.coalesce import Coalescer

    assert _together(Coalescer(), coalescing.scorer, coalescing.requests[:1]) == \
        [coalescing.alone(coalescing.requests[0])]
    assert coalescing.calls == [1]
    coalescing.calls.clear()
    got = _together(Coalescer(max_rows=3), coalescing.scorer, coalescing.requests)
    assert coalescing.calls == [5, 3]  # 1+1+3 and 1+2: closed once three rows or more wait
    assert got == [coalescing.alone(r) for r in coalescing.requests]


def test_requests_asking_for_different_reasons_are_scored_apart(coalescing):
    from leadscore.serving.coalesce import Coalescer

    reasons = [3, 0, 3, 0, 5]
    got = _together(Coalescer(), coalescing.scorer, coalescing.requests, reasons)
    assert sorted(coalescing.calls) == [2, 2, 4]  # reasons 3: 1+3 rows, 0: 1+1, 5: 2
    assert got == [coalescing.alone(r, k) for r, k in zip(coalescing.requests, reasons,
                                                          strict=True)]


def test_one_requests_failure_is_not_its_neighbours(coalescing):
    """A row the scorer cannot take fails the batch; each request is then scored on its own,
    so only the request it came in gets the error."""
    from leadscore.scoring.scorer import MissingFeatures
    from leadscore.serving.coalesce import Coalescer

    broken = [dict(coalescing.requests[2][0])]
    del broken[0][coalescing.scorer.required[0]]
    requests = [*coalescing.requests[:2], broken, *coalescing.requests[3:]]
    got = _together(Coalescer(), coalescing.scorer, requests)
    assert isinstance(got[2], MissingFeatures)
    for k in (0, 1, 3, 4):
        assert got[k] == coalescing.alone(requests[k])
    assert coalescing.calls[0] == 6 and len(coalescing.calls) == 1 + len(requests)


def test_a_request_whose_client_left_does_not_hold_up_the_others(coalescing):
    import asyncio

    from leadscore.serving.coalesce import Coalescer

    async def main():
        c = Coalescer()
        tasks = [asyncio.ensure_future(c.score(coalescing.scorer, r, reasons=3))
                 for r in coalescing.requests]
        await asyncio.sleep(0)  # all of them waiting in the gathering
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    got = asyncio.run(main())
    assert isinstance(got[1], asyncio.CancelledError)
    assert [got[k] for k in (0, 2, 3, 4)] == [coalescing.alone(coalescing.requests[k])
                                              for k in (0, 2, 3, 4)]


def test_concurrent_http_requests_are_scored_together_with_the_answers_they_get_alone(
        served, coalescing):
    """The whole way in: several tenants' requests at once through the ASGI app (fast path
    and route), scored in one pass, each answered as when it comes alone, and a tenant still
    sees nothing of another's leads."""
    import asyncio

    import httpx

    from leadscore.serving import api

    asked = (
        (served.ids["north"][:1], NORTH, "application/json"),
        (served.ids["south"][:2], SOUTH, "application/json"),
        (served.ids["south"][2:3], NORTH, "application/json"),  # another tenant's: not found
        (served.ids["north"][1:4], NORTH, "application/vnd.crm+json"),  # the route's way
    )
    bodies = [({"leads": [{"lead_id": i} for i in ids]}, headers, ctype)
              for ids, headers, ctype in asked]
    app = create_app(served.runtime)

    async def post(client, body, headers, ctype):
        r = await client.post("/score", content=json.dumps(body),
                              headers={**headers, "Content-Type": ctype})
        return r.status_code, r.json()

    async def main(together):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://leadscore") as client:
            if together:
                return await asyncio.gather(*(post(client, *b) for b in bodies))
            return [await post(client, *b) for b in bodies]

    one_by_one = asyncio.run(main(False))  # the clock is the fixture's, fixed
    assert coalescing.calls == [1, 2, 3]  # the other tenant's lead never reaches a scorer
    coalescing.calls.clear()
    together = asyncio.run(main(True))
    assert coalescing.calls == [6]
    assert together == one_by_one
    assert together[2] == (200, {"results": [api._not_found(served.ids["south"][2])]})


def test_oversize_bodies_get_413_with_or_without_a_length(served):
    big = b'{"leads": [{"lead_id": "' + b"x" * MAX_BODY_BYTES + b'"}]}'
    r = served.client.post("/score", content=big,
                           headers={**NORTH, "Content-Type": "application/json"})
    assert r.status_code == 413

    def chunks():  # chunked upload: no Content-Length to check up front
        yield b'{"leads": [{"lead_id": "'
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    r = served.client.post("/score", content=chunks(),
                           headers={**NORTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = served.client.post("/score", content=b"{}",
                           headers={**NORTH, "Content-Type": "application/json",
                                    "Content-Length": "nonsense"})
    assert 400 <= r.status_code < 500


def test_pathological_json_is_refused_not_crashed(served):
    deep = b"[" * 100_000 + b"]" * 100_000
    for raw in (deep, b"\xff\xfe\x00garbage", b'{"leads": [{"lead_id": "a"}]}' + b"\x00"):
        r = served.client.post("/score", content=raw,
                               headers={**NORTH, "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, raw[:20]
        assert r.json()["error"].startswith("(body)")


def test_the_app_keeps_serving_after_bad_requests(served):
    for _, body, _ in BAD_BODIES[:8]:
        if isinstance(body, bytes):
            served.client.post("/score", content=body, headers=NORTH)
        else:
            score(served, body)
    assert by_id(served, served.ids["north"][:1])[0]["status"] == "ok"


# --- property: nothing a client sends is a 5xx -----------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
odd_timestamps = st.sampled_from([
    "2026-01-12T10:00:00+08:00", "2026-01-12 10:00:00", "2026-01-12", "1970-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z", "2026-02-30",
    "2026-03-29T02:30:00", "", "now", 0, 1e12, -1, None,
])
good_timestamps = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2026, 6, 1),
                               timezones=st.just(UTC)).map(lambda d: d.isoformat())
timestamps = good_timestamps | good_timestamps | odd_timestamps
event_types = st.sampled_from(["page_view", "config_view", "finance_calc", "price_inquiry",
                               "order", "lost", "delivery", "brochure_download", "x" * 128])
events = st.fixed_dictionaries(
    {"ts": timestamps, "event_type": event_types | event_types | json_scalars},
    optional={"model": st.none() | st.sampled_from(["Aurora S", "Nope"]) | st.text(max_size=5),
              "value": st.none() | st.floats(-1e308, 1e308) | json_scalars,
              "ingested_at": timestamps})
contacts = st.fixed_dictionaries(
    {"ts": timestamps, "channel": st.sampled_from([*CHANNELS, *CHANNELS, "fax", None]),
     "outcome": st.sampled_from(["connected", "replied", "no_answer", "refused", "??"])})
zones = st.sampled_from(["Asia/Shanghai", "UTC", "Pacific/Chatham", "Asia/Kathmandu",
                         "Etc/GMT+12", "America/St_Johns", "Europe/Berlin", "Nowhere/X", "",
                         None])
ids = st.text(min_size=1, max_size=12) | st.sampled_from(["L0000001", "web-1", "", 7, None])
inline_leads_st = st.fixed_dictionaries(
    {"lead_id": ids, "dealer_id": st.sampled_from(["D01", "D02", "D03", "D01", "D04", None]),
     "created_at": timestamps, "events": st.lists(events, max_size=5) | json_values},
    optional={"source": st.sampled_from(["website", "douyin", "brand-new", None, ""]),
              "intended_model": st.none() | st.sampled_from(["Aurora S", "Unknown X"]),
              "city": st.none() | st.text(max_size=6),
              "budget": st.none() | st.floats() | st.integers() | json_scalars,
              "tz": zones, "contacts": st.lists(contacts, max_size=3),
              "extra": json_scalars})
id_leads = st.fixed_dictionaries({"lead_id": ids | st.sampled_from(["L0000001", "L0000003"])})
requests = st.fixed_dictionaries(
    {"leads": st.lists(inline_leads_st | id_leads, min_size=1, max_size=3,
                       unique_by=lambda lead: repr(lead.get("lead_id")))
     | json_values},
    optional={"as_of": st.just("2026-06-01T00:00:00Z") | timestamps,
              "reasons": st.integers(0, 10) | st.integers(-2, 12) | json_scalars})


# every field valid, values odd: any zone and offset, old times, unicode, extreme numbers
# (from 1980: before, some zones had offsets in seconds, which RFC 3339 cannot write)
any_time = st.datetimes(min_value=datetime(1980, 1, 1), max_value=datetime(2026, 5, 30),
                        timezones=st.timezones()).map(lambda d: d.isoformat())
text = st.text(min_size=1, max_size=128)
finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**15, 10**15)
valid_events = st.fixed_dictionaries(
    {"ts": any_time, "event_type": event_types | text},
    optional={"model": st.none() | text, "value": st.none() | finite,
              "ingested_at": st.none() | any_time})
valid_contacts = st.fixed_dictionaries(
    {"ts": any_time, "channel": st.sampled_from(CHANNELS),
     "outcome": st.sampled_from(["connected", "replied", "no_answer", "ignored", "refused"])})


def valid_request(dealers):
    lead = st.fixed_dictionaries(
        {"lead_id": st.text(min_size=1, max_size=128), "dealer_id": st.sampled_from(dealers),
         "created_at": any_time, "events": st.lists(valid_events, max_size=6)},
        optional={"source": st.none() | st.sampled_from(["website", "douyin"]) | text,
                  "intended_model": st.none() | text, "city": st.none() | text,
                  "budget": st.none() | finite,
                  "tz": st.none() | st.sampled_from(sorted(ZONES)),
                  "contacts": st.lists(valid_contacts, max_size=3)})
    return st.fixed_dictionaries(
        {"leads": st.lists(lead, min_size=1, max_size=3, unique_by=lambda x: x["lead_id"])},
        optional={"as_of": st.just("2026-06-01T00:00:00Z"), "reasons": st.integers(0, 10)})


def _post_any(served, raw: bytes):
    r = served.client.post("/score", content=raw,
                           headers={**NORTH, "Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text, raw[:300])
    event(f"HTTP {r.status_code}")
    body = r.json()
    if r.status_code == 200:
        ScoreResponse.model_validate(body)
    else:
        assert isinstance(body["error"], str) and body["error"]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=requests)
def test_no_near_valid_request_is_a_server_error(served, body):
    _post_any(served, json.dumps(body, allow_nan=True, default=str).encode())


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_valid_inline_request_is_scored(served, data):
    body = data.draw(valid_request(served.north))
    r = score(served, body)
    assert r.status_code == 200, (r.text, body)
    results = ScoreResponse.model_validate(r.json()).results
    assert [x.lead_id for x in results] == [lead["lead_id"] for lead in body["leads"]]
    for x in results:
        assert x.status == "ok"
        assert 0 <= x.p_convert <= 1 and 0 <= x.p_inquiry <= 1 and 0 <= x.p_churn <= 1


@settings(max_examples=120, deadline=None, derandomize=True)
@given(body=json_values | st.binary(max_size=40))
def test_no_arbitrary_body_is_a_server_error(served, body):
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    _post_any(served, raw)


# --- readiness and hot reload ----------------------------------------------------------------

def test_a_half_copied_model_in_the_store_is_waited_for_or_imported_again(served, monkeypatch):
    """BentoML copies an imported model into its store file by file: a worker starting beside
    an importing one can find the model listed but not whole. It must wait for the importer
    (which holds the import lock) rather than fail, and a model a crash left half copied is
    imported again."""
    import bentoml

    from leadscore.artifact import META_FILE, find_artifact_dir
    from leadscore.serving import runtime as rt

    res = registry.resolve("conversion")
    tag = rt.champion_model("conversion", res)[0].tag  # the champion, under its identity
    meta = find_artifact_dir(Path(bentoml.models.get(tag).path))
    meta = meta / META_FILE
    x = served.runtime.current().models["conversion"]
    rows = served.runtime.store.get_records(served.ids["north"][:5])
    expected = x.predict_proba(pd.DataFrame(rows))

    # (1) an importer is mid-copy: the loader waits for its lock, then loads, importing nothing
    monkeypatch.setattr(rt, "_LOADED", {})
    monkeypatch.setattr(bentoml.mlflow, "import_model", lambda *a, **k: pytest.fail("imported"))
    meta.rename(meta.with_suffix(".copying"))
    got: dict = {}
    with rt._import_lock():
        t = threading.Thread(target=lambda: got.update(
            m=rt.champion_model("conversion", res)[1]))
        t.start()
        time.sleep(0.5)
        assert t.is_alive()  # waiting on the lock, not failed
        meta.with_suffix(".copying").rename(meta)  # the importer's copy completes
    t.join(30)
    assert np.array_equal(got["m"].predict_proba(pd.DataFrame(rows)), expected)

    # (2) nobody is importing and the model will not load: deleted and imported again
    monkeypatch.undo()
    monkeypatch.setattr(rt, "_LOADED", {})
    meta.unlink()
    m = rt.champion_model("conversion", res)[1]
    assert np.array_equal(m.predict_proba(pd.DataFrame(rows)), expected)
    assert (find_artifact_dir(Path(bentoml.models.get(tag).path)) / META_FILE).is_file()


def test_a_worker_without_models_retries_even_with_reloading_off(served, monkeypatch):
    from leadscore.serving import runtime as rt

    monkeypatch.setattr(rt, "NOT_READY_RETRY_SECONDS", 0.05)
    calls = []

    def loader():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("registry busy")
        return served.runtime.current()

    r = Runtime(served.runtime.store, served.runtime.keys, loader=loader, reload_seconds=0)
    with pytest.raises(RuntimeError):
        r.reload()
    r.start_watcher()
    r._thread.join(10)
    assert r.ready and len(calls) == 3
    assert not r._thread.is_alive()  # reloading is off: once ready, the watcher stops


def test_not_ready_before_models_load(served):
    from leadscore.serving import service

    empty = Runtime(served.runtime.store, served.runtime.keys, loader=lambda: Scorer({}),
                    reload_seconds=0)
    assert not empty.ready
    empty.reload()
    assert not empty.ready
    inst = service.LeadScoreService.inner.__new__(service.LeadScoreService.inner)
    inst.runtime = empty
    assert inst.__is_ready__() is False
    inst.runtime = served.runtime
    assert inst.__is_ready__() is True
    body = {"leads": [{"lead_id": served.ids["north"][0]}]}
    with TestClient(create_app(empty), raise_server_exceptions=False) as c:
        assert c.post("/score", json=body, headers=NORTH).status_code == 503
    # the service's app before its worker has built the runtime
    with TestClient(create_app(service._CurrentRuntime()), raise_server_exceptions=False) as c:
        assert c.post("/score", json=body, headers=NORTH).status_code == 503


def test_champion_reload_swaps_versions_while_requests_keep_succeeding(served):
    rt = served.runtime
    before = dict(rt.scorer.versions)
    client = registry.client()
    name = registry.registered_name("churn")
    old = client.get_model_version_by_alias(name, registry.CHAMPION)
    new = client.create_model_version(name, old.source, run_id=old.run_id)
    registry.set_alias("churn", registry.CHAMPION, new.version)
    after = {**before, "churn": str(new.version)}
    body = {"leads": [{"lead_id": i} for i in served.ids["north"][:2]]}
    seen: list[tuple[float, float, int, list]] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            t0 = time.monotonic()
            r = score(served, body)
            versions = [x["model_versions"] for x in r.json()["results"]] \
                if r.status_code == 200 else []
            seen.append((t0, time.monotonic(), r.status_code, versions))

    span = {}

    def reload():
        span["start"] = time.monotonic()
        span["changed"] = rt.reload()
        span["end"] = time.monotonic()

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.3)
        loader = threading.Thread(target=reload)
        loader.start()
        loader.join(120)
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        registry.set_alias("churn", registry.CHAMPION, old.version)
    assert span["changed"] and rt.scorer.versions == after
    assert seen and {s for _, _, s, _ in seen} == {200}
    during = [v for t0, t1, _, v in seen if t1 > span["start"] and t0 < span["end"]]
    assert during, "no request overlapped the reload"
    for _, _, _, versions in seen:  # each request saw one set of models, old or new
        assert all(v in (before, after) for v in versions)
        assert len({json.dumps(v, sort_keys=True) for v in versions}) == 1
    assert by_id(served, served.ids["north"][:1])[0]["model_versions"] == after
    assert rt.reload() and rt.scorer.versions == before  # back to the session's champion


def test_a_replaced_store_file_is_picked_up(served, trained, tmp_path):
    path = tmp_path / "features.db"
    feats = trained["features"]
    online.write(feats, path)
    rt = Runtime(online.OnlineStore(path), served.runtime.keys, reload_seconds=0)
    rt.scorer = served.runtime.scorer
    gone = served.ids["north"][0]
    with TestClient(create_app(rt)) as c:
        first = c.post("/score", json={"leads": [{"lead_id": gone}]}, headers=NORTH).json()
        online.write(feats[feats["lead_id"] != gone], path)
        second = c.post("/score", json={"leads": [{"lead_id": gone}]}, headers=NORTH).json()
    assert first["results"][0]["status"] == "ok"
    assert second["results"][0]["status"] == "not_found"


def test_a_snapshot_missing_model_features_is_a_503_not_a_500(served, trained, tmp_path):
    feats = trained["features"]
    gone = served.runtime.scorer.models["conversion"].features[0]
    path = tmp_path / "stale.db"
    online.write(feats.drop(columns=[gone]), path)
    rt = Runtime(online.OnlineStore(path), served.runtime.keys, reload_seconds=0)
    rt.scorer = served.runtime.scorer
    ids = served.ids["north"]
    with TestClient(create_app(rt), raise_server_exceptions=False) as c:
        for n in (1, 40):  # on the event loop and in the thread pool
            r = c.post("/score", json={"leads": [{"lead_id": i} for i in ids[:n]]},
                       headers=NORTH)
            assert r.status_code == 503, r.text
            assert "feature snapshot" in r.json()["error"]


# --- logs ------------------------------------------------------------------------------------

def test_logs_carry_no_personal_data(served, caplog):
    lead_id, city, budget, model = "PII-LEAD-7f3a91", "Secretville-Xq9", 987654.5, "Zephyr-PII"
    lead = {"lead_id": lead_id, "dealer_id": served.north[0],
            "created_at": "2026-01-10T08:00:00Z", "city": city, "budget": budget,
            "source": "website", "intended_model": model,
            "events": [_ev(model=model, value=budget), _ev(event_type="finance_calc")]}
    with caplog.at_level(logging.DEBUG):
        ok = score(served, {"leads": [lead, {"lead_id": served.ids["north"][0]}],
                            "as_of": "2026-02-01T00:00:00Z"})
        bad = score(served, {"leads": [{**lead, "tz": "Nowhere/" + city}]})
        other = score(served, {"leads": [{**lead, "dealer_id": served.south[0]}]})
    assert ok.status_code == 200 and bad.status_code == 422 and other.status_code == 403
    assert caplog.records, "the request should log something (counts, timings)"
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
                     for r in caplog.records)
    for secret in (lead_id, city, str(budget), "987654", model, served.ids["north"][0],
                   NORTH_KEY):
        assert secret not in text, secret


def test_request_log_line_has_counts_and_tenant(served, caplog):
    with caplog.at_level(logging.INFO, logger="leadscore.http"):
        by_id(served, [*served.ids["north"][:2], "L-NO-SUCH"])
    lines = [r.getMessage() for r in caplog.records if r.name == "leadscore.http"]
    assert any("tenant=north" in m and "leads=3" in m and "found=2" in m for m in lines)


def test_timestamps_are_utc(served):
    x = by_id(served, served.ids["north"][:1])[0]
    assert x["as_of"].endswith("Z")
    assert datetime.fromisoformat(x["as_of"]).astimezone(UTC) == served.as_of
