"""Inline HTTP rows obey the batch's rules: out-of-range times are a 422, and a row the nightly
job would quarantine is left out of the lead's features and reported with the lead.

A small conversion model trained here (not the session's four champions) keeps this quick."""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from leadscore import contract, models
from leadscore import simulate as sim
from leadscore.features import job
from leadscore.scoring.scorer import Scorer
from leadscore.serving import store as online
from leadscore.serving.api import create_app
from leadscore.serving.auth import KeyRing, write_key_file
from leadscore.serving.runtime import Runtime
from leadscore.training import dataset
from leadscore.training.trainer import fit

KEY = "tenant-7d1e-key"
HEADERS = {"X-API-Key": KEY}
AS_OF = "2026-03-01T00:00:00Z"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("inline")
    data = root / "data"
    sim.write(sim.simulate(sim.SimConfig(n_leads=1000, days=90, seed=5)), data)
    ds = contract.load(data, quarantine_dir=root / "q")
    spec = models.get("conversion")
    ts = dataset.build(ds.con, spec, split="entity")
    model = fit(spec, ts, seed=0, num_threads=2, overrides={"min_data_in_leaf": 10}).model
    scorer = Scorer({"conversion": model})
    feats = job.to_pandas(job.compute(ds.con, [pd.Timestamp(AS_OF)], only_open=True))
    online.write(feats, root / "features.db")
    dealers = sorted(ds.frame("leads")["dealer_id"].unique())
    keys = write_key_file(root / "keys.json", {"t": (KEY, dealers)})
    runtime = Runtime(online.OnlineStore(root / "features.db"), KeyRing.from_file(keys),
                      loader=lambda: scorer, reload_seconds=0)
    assert runtime.reload()
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield client, dealers[0], root


def _lead(dealer: str, events: list[dict], **kw) -> dict:
    return {"lead_id": "web-1", "dealer_id": dealer, "created_at": "2026-02-10T08:00:00Z",
            "source": "website", "tz": "Asia/Shanghai", "events": events, **kw}


GOOD = [{"ts": "2026-02-20T10:00:00Z", "event_type": "page_view"},
        {"ts": "2026-02-21T10:00:00Z", "event_type": "config_view", "model": "Model C"}]
#: stamped after they were ingested: the nightly job quarantines them
LATE = [{"ts": f"2026-02-2{d}T11:00:00Z", "event_type": t,
         "ingested_at": f"2026-02-2{d}T10:00:00Z"}
        for d, t in ((5, "test_drive_booked"), (6, "store_visit"), (7, "finance_calc"),
                     (8, "price_inquiry"))]


@pytest.mark.parametrize("body,field", [
    ({"as_of": "0002-01-01T00:00:00Z", "created_at": "0001-06-01T00:00:00Z"}, "as_of"),
    ({"events": [{"ts": "0002-03-04T00:00:00Z", "event_type": "page_view"}]},
     "leads.0.events.0.ts"),
    ({"events": [{**GOOD[0], "ingested_at": "1601-01-01T00:00:00Z"}]},
     "leads.0.events.0.ingested_at"),
    ({"created_at": "0001-01-01T00:00:00-05:00"}, "leads.0.created_at"),
    ({"tz": "localtime"}, "leads.0.tz"),  # Python knows it, the contract (DuckDB) does not
    ({"contacts": [{"ts": "0001-01-01T00:00:00+05:00", "channel": "phone",
                    "outcome": "connected"}]}, "leads.0.contacts.0.ts"),
])
def test_times_and_zones_the_feature_job_cannot_use_are_a_422_naming_the_field(app, body,
                                                                                field):
    client, dealer, _ = app
    lead_kw = {k: v for k, v in body.items() if k != "as_of"}
    req = {"leads": [{**_lead(dealer, GOOD), **lead_kw}]}
    if "as_of" in body:
        req["as_of"] = body["as_of"]
    r = client.post("/score", json=req, headers=HEADERS)
    assert r.status_code == 422, (r.status_code, r.text)
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    # the app keeps serving (a 500 would have dropped the connection)
    r = client.post("/score", json={"as_of": AS_OF, "leads": [_lead(dealer, GOOD)]},
                    headers=HEADERS)
    assert r.status_code == 200, r.text


def test_an_inline_event_stamped_after_its_ingestion_is_left_out_as_the_batch_does(app):
    client, dealer, root = app
    r = client.post("/score", json={"as_of": AS_OF, "reasons": 10,
                                    "leads": [_lead(dealer, GOOD + LATE)]}, headers=HEADERS)
    assert r.status_code == 200, r.text
    (with_late,) = r.json()["results"]
    r = client.post("/score", json={"as_of": AS_OF, "reasons": 10,
                                    "leads": [_lead(dealer, GOOD)]}, headers=HEADERS)
    (good_only,) = r.json()["results"]
    r = client.post("/score", json={"as_of": AS_OF, "reasons": 10, "leads": [_lead(
        dealer, GOOD + [{k: v for k, v in e.items() if k != "ingested_at"} for e in LATE])]},
        headers=HEADERS)
    (late_valid,) = r.json()["results"]
    assert late_valid["p_convert"] != good_only["p_convert"]  # the model sees those events
    assert with_late["status"] == good_only["status"] == "ok"
    assert with_late["p_convert"] == good_only["p_convert"]
    assert with_late["reasons"] == good_only["reasons"]
    assert with_late["quarantined"] == [
        {"field": f"leads.0.events.{i}.ts", "reason": "ts_after_ingested_at"}
        for i in range(len(GOOD), len(GOOD) + len(LATE))]
    assert good_only["quarantined"] == []

    # the nightly job's validation quarantines exactly those rows, for the same reason
    data = root / "batch"
    data.mkdir()
    lead = _lead(dealer, [])
    pd.DataFrame([{k: lead[k] for k in ("lead_id", "dealer_id", "created_at", "source",
                                        "tz")}]).to_csv(data / "leads.csv", index=False)
    pd.DataFrame([{"lead_id": "web-1", "model": None, "ingested_at": None, **e}
                  for e in GOOD + LATE]).to_csv(data / "events.csv", index=False)
    ds = contract.load(data, quarantine_dir=data / "q", clock=pd.Timestamp(AS_OF))
    rep = ds.reports["events"]
    assert rep.quarantined == {"ts_after_ingested_at": len(LATE)}
    bad = pd.read_parquet(data / "q" / "events.parquet")
    assert bad["_row"].tolist() == list(range(len(GOOD), len(GOOD) + len(LATE)))


def test_a_lead_id_is_taken_as_sent_while_its_rows_get_the_batch_rules(app):
    """The request's lead id keys its answer, so it is not trimmed as file text is; a blank
    event type is missing, as the nightly job has it."""
    client, dealer, _ = app
    lead = {**_lead(dealer, [*GOOD, {"ts": GOOD[0]["ts"], "event_type": "  "}]),
            "lead_id": " "}
    r = client.post("/score", json={"as_of": AS_OF, "leads": [lead]}, headers=HEADERS)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["lead_id"] == " " and res["status"] == "ok"
    assert res["quarantined"] == [{"field": "leads.0.events.2.event_type",
                                   "reason": "missing_event_type"}]


def test_an_exact_copy_of_an_inline_event_counts_once_as_in_the_batch(app):
    """The nightly job drops exact duplicates; an inline request repeating an event (a CRM
    that retries a sync) must not count it twice."""
    client, dealer, root = app
    twice = [*GOOD, GOOD[1], GOOD[1]]
    r = client.post("/score", json={"as_of": AS_OF, "reasons": 10,
                                    "leads": [_lead(dealer, twice)]}, headers=HEADERS)
    assert r.status_code == 200, r.text
    (copied,) = r.json()["results"]
    r = client.post("/score", json={"as_of": AS_OF, "reasons": 10,
                                    "leads": [_lead(dealer, GOOD)]}, headers=HEADERS)
    (once,) = r.json()["results"]
    # the model does see a second, different config view
    other = {**GOOD[1], "ts": "2026-02-22T10:00:00Z"}
    r = client.post("/score", json={"as_of": AS_OF, "reasons": 10,
                                    "leads": [_lead(dealer, [*GOOD, other])]}, headers=HEADERS)
    (two_views,) = r.json()["results"]
    assert two_views["reasons"] != once["reasons"]
    assert copied["p_convert"] == once["p_convert"]
    assert copied["reasons"] == once["reasons"]
    assert copied["quarantined"] == []

    # the batch drops the same copies
    data = root / "batch-copies"
    data.mkdir()
    lead = _lead(dealer, [])
    pd.DataFrame([{k: lead[k] for k in ("lead_id", "dealer_id", "created_at", "source",
                                        "tz")}]).to_csv(data / "leads.csv", index=False)
    pd.DataFrame([{"lead_id": "web-1", "model": None, "ingested_at": None, **e}
                  for e in twice]).to_csv(data / "events.csv", index=False)
    ds = contract.load(data, quarantine_dir=data / "q", clock=pd.Timestamp(AS_OF))
    assert ds.reports["events"].duplicates == 2
