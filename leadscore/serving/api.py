"""The HTTP interface the CRM calls: ``POST /score`` and its request/response models.

A FastAPI app (mounted into the BentoML service) so that the request contract is pydantic
end to end and the OpenAPI document carries working examples. Client mistakes always answer
4xx with the offending field's path; nothing a client sends can produce a 5xx. Logs carry
counts, tenants and timings only — never lead payloads.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import available_timezones

import pandas as pd
from fastapi import Body, FastAPI, Header, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from leadscore import contract
from leadscore import lang as language
from leadscore.schema import CHANNELS, OUTCOMES
from leadscore.scoring.scorer import MissingFeatures, Scorer
from leadscore.serving.auth import Tenant
from leadscore.serving.coalesce import Coalescer
from leadscore.serving.metrics import render as render_metrics
from leadscore.serving.runtime import Runtime, features_from_inline, now_utc
from leadscore.serving.upstream_shims import swagger_ui_assets

log = logging.getLogger("leadscore.http")

MAX_LEADS = 500
MAX_EVENTS = 5_000
MAX_CONTACTS = 1_000
MAX_BODY_BYTES = 8 * 1024 * 1024
#: requests of at most this many leads by id are scored on the event loop, together with the
#: others that arrive with them (:mod:`~leadscore.serving.coalesce`: a lone lead, slot search
#: and reasons included, takes little longer than a hop to a thread and back would, and the
#: hop would make the loop and the scorer fight over the GIL); bigger or inline ones go to the
#: thread pool so they never hold the loop up for long
LOOP_MAX_LEADS = 4
CLOCK_SKEW = timedelta(minutes=5)
#: the earliest time a request may carry: far enough back for any CRM's history, far enough
#: inside pandas' nanosecond range (from 1677) that a feature window reaching back from it
#: never overflows
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
#: the zones a lead's ``tz`` may name: Python's (the slot grid) that the contract knows too
ZONES = frozenset(available_timezones()) & contract.time_zones()

Finite = Annotated[float, Field(allow_inf_nan=False)]
Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(min_length=1, max_length=128)]
#: at most this many CRM fields (``attributes``) per inline lead
MAX_ATTRIBUTES = 50


def _utc(v: datetime) -> datetime:
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


def _not_future(v: datetime) -> datetime:
    """A request's time in UTC, refused (a 422 naming the field) when it lies in the future
    or before :data:`EARLIEST`: out of the range the feature job computes in."""
    try:
        v = _utc(v)
    except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
        raise ValueError("timestamp is in the future" if v.year > EARLIEST.year
                         else f"timestamp before {EARLIEST.date()}") from None
    if v > datetime.now(UTC) + CLOCK_SKEW:
        raise ValueError("timestamp is in the future")
    if v < EARLIEST:
        raise ValueError(f"timestamp before {EARLIEST.date()}")
    return v


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: datetime
    event_type: Text
    model: Text | None = None
    value: Finite | None = None
    ingested_at: datetime | None = None

    _ts = field_validator("ts", "ingested_at")(lambda v: None if v is None else _not_future(v))


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: datetime
    channel: Literal[CHANNELS]  # type: ignore[valid-type]
    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]

    _ts = field_validator("ts")(lambda v: _not_future(v))


class LeadIn(BaseModel):
    """A lead by ``lead_id`` alone (features from the latest snapshot), or with its inline
    attributes and recent ``events`` (features computed on the fly, same code as batch)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"lead_id": "L0000042"}]},
    )
    lead_id: Id
    dealer_id: Id | None = None
    created_at: datetime | None = None
    source: Text | None = None
    intended_model: Text | None = None
    city: Text | None = None
    budget: Finite | None = None
    tz: str | None = None
    events: list[EventIn] | None = Field(None, max_length=MAX_EVENTS)
    contacts: list[ContactIn] | None = Field(None, max_length=MAX_CONTACTS)
    #: CRM fields beyond the contract's (extra columns of the leads table), read as a CSV
    #: cell of that column would be: what a model trained on them needs
    attributes: dict[Text, Text | int | Finite | bool | None] | None = Field(
        None, max_length=MAX_ATTRIBUTES)

    _created = field_validator("created_at")(lambda v: None if v is None else _not_future(v))

    @field_validator("tz")
    @classmethod
    def _zone(cls, v):
        if v is not None and v not in ZONES:
            raise ValueError(f"unknown IANA time zone {v!r}")
        return v

    @field_validator("attributes")
    @classmethod
    def _extra_columns(cls, v):
        if v is not None:
            bad = [k for k in v if k not in contract.extra_lead_columns([k])]
            if bad:
                raise ValueError(f"{bad[0]!r} is a contract field or starts with '_': not an "
                                 f"attribute")
        return v

    @model_validator(mode="after")
    def _inline_complete(self):
        if self.events is not None and (self.dealer_id is None or self.created_at is None):
            raise ValueError("a lead with inline events also needs dealer_id and created_at")
        return self

    @property
    def inline(self) -> bool:
        return self.events is not None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"leads": [{"lead_id": "L0000042"}], "reasons": 3},
                {
                    "as_of": "2026-06-30T00:00:00Z",
                    "leads": [{
                        "lead_id": "web-1001", "dealer_id": "D01",
                        "created_at": "2026-06-20T09:30:00Z", "source": "website",
                        "intended_model": "Model C", "tz": "Asia/Shanghai",
                        "events": [
                            {"ts": "2026-06-28T14:02:00Z", "event_type": "config_view",
                             "model": "Model C"},
                            {"ts": "2026-06-28T14:09:00Z", "event_type": "finance_calc",
                             "value": 180000},
                        ],
                        "contacts": [{"ts": "2026-06-21T02:00:00Z", "channel": "phone",
                                      "outcome": "no_answer"}],
                    }],
                },
            ]
        },
    )
    leads: list[LeadIn] = Field(min_length=1, max_length=MAX_LEADS)
    as_of: datetime | None = Field(
        None, description="Cutoff for inline leads (default: now). Id lookups use the "
        "snapshot's own cutoff. Every lead's contact slots start after it (default: now) and "
        "after its features' cutoff.")
    reasons: int = Field(3, ge=0, le=10, description="At most this many reasons per model: "
                         "the largest contributions, for and against together")

    _as_of = field_validator("as_of")(lambda v: None if v is None else _not_future(v))

    @field_validator("leads")
    @classmethod
    def _unique(cls, leads):
        seen = set()
        for lead in leads:
            if lead.lead_id in seen:
                raise ValueError("lead_id values must be unique within one request")
            seen.add(lead.lead_id)
        return leads


class ReasonOut(BaseModel):
    model: str = Field(description="The model whose score the reason explains")
    feature: str
    value: float | str | None = Field(description="The lead's value of the feature")
    contribution: float = Field(
        description="Its share of the model's score (log-odds): positive raises it")
    sign: Literal["+", "-"] = Field(description="`+` raises the model's score, `-` lowers it")
    sentence: str = Field(
        description="The reason in words an advisor can read, in the language of "
        "`Accept-Language` (`zh-CN` or `en`; else the deployment's); each sentence once per "
        "lead")


class ChangeOut(BaseModel):
    feature: str
    value: float | str | None = Field(description="The lead's value of the feature that night")
    previous: float | str | None = Field(description="Its value the night before")
    points: float = Field(description="Lead-score points the change moved the score by")
    sentence: str = Field(description="The change in words an advisor can read")


class LastNightOut(BaseModel):
    lead_score: int = Field(ge=0, le=100, description="The last nightly run's `lead_score`")
    score_delta: int | None = Field(
        description="`lead_score` minus the previous nightly run's (null: a new lead)")
    trend: Literal["rising", "steady", "falling", "new"] = Field(
        description="`rising`/`falling`: `score_delta` at least +3/-3; `steady` in between; "
        "`new`: no previous score")
    changes: list[ChangeOut] = Field(
        description="The two or three feature changes that moved the score most")
    as_of: datetime = Field(description="The nightly run's cutoff")


Channel = Literal[CHANNELS]  # type: ignore[valid-type]
CHANNEL_HELP = ("`phone`, `wechat` or `sms`, among those the dealer's contact rules allow at "
                "that time")


class SlotOut(BaseModel):
    start: datetime = Field(description="Start of the hour, UTC (`Z`)")
    start_local: datetime = Field(
        description="The same instant in the lead's time zone, with its offset then")
    channel: Channel = Field(description=CHANNEL_HELP)
    p_response: float = Field(description="Probability that the lead answers then")


class QuarantinedOut(BaseModel):
    field: str = Field(description="the row's path in the request and its offending field")
    reason: str = Field(description="the contract rule it breaks, as in the batch quarantine")


class LeadScore(BaseModel):
    lead_id: str
    status: Literal["ok", "not_found"] = Field(
        description="`ok`: scored; `not_found`: no such lead among the key's dealers (every "
        "other field empty)")
    dealer_id: str | None = None
    as_of: datetime | None = Field(None, description="Cutoff of the features scored")
    p_convert: float | None = Field(
        None, description="Calibrated probability that the lead orders within 30 days")
    p_order_7d: float | None = Field(
        None, description="Calibrated probability of an order within 7 days (never above "
        "`p_order_15d`)")
    p_order_15d: float | None = Field(
        None, description="Probability of an order within 15 days (never above `p_order_30d`)")
    p_order_30d: float | None = Field(
        None, description="Probability of an order within 30 days: `p_convert` itself")
    p_order_90d: float | None = Field(
        None, description="Probability of an order within 90 days (never below `p_order_30d`)")
    lead_score: int | None = Field(None, ge=0, le=100, description="`p_convert` as 0-100")
    intent_grade: Literal["H", "A", "B", "C", "N"] | None = Field(
        None, description="Expected time to order, by the dealer's thresholds (default: "
        "chosen at training): `H` `p_order_7d` reaches its threshold, order within about 7 "
        "days; `A` `p_order_15d` does, about 15 days; `B` `p_order_30d`, about a month; `C` "
        "`p_order_90d`, about 3 months; `N` none, not expected to buy soon")
    p_inquiry: float | None = Field(
        None, description="Probability that the lead asks for a price, books a test drive, "
        "calls or walks in within 72 hours")
    contact_urgency: Literal["now", "within_3_days", "nurture"] | None = Field(
        None, description="How soon to contact, from `p_inquiry` by the contact model's "
        "cut-offs (by default): `now` at least 0.5, today; `within_3_days` at least 0.2; "
        "`nurture` below, leave to the nurture programme")
    best_slot_start: datetime | None = Field(
        None, description="Start of the best allowed hour to contact in the next 72 hours, "
        "UTC (`Z`)")
    best_slot_local: datetime | None = Field(
        None, description="`best_slot_start` in the lead's time zone with its offset then, "
        "e.g. `2026-07-03T11:00:00+08:00` (the dealer's zone when the lead has none)")
    best_channel: Channel | None = Field(  # type: ignore[valid-type]
        None, description=f"Channel for `best_slot_start`: {CHANNEL_HELP}")
    p_response: float | None = Field(
        None, description="Probability that the lead answers at the best slot")
    p_churn: float | None = Field(
        None, description="Probability of no engagement within 30 days")
    next_slots: list[SlotOut] = Field(
        default_factory=list, description="the best few allowed slots of the next 72 hours")
    reasons: list[ReasonOut] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(
        default_factory=dict, description="Registry version of each model that scored")
    last_night: LastNightOut | None = Field(
        None, description="Leads by id: the last nightly run's score, its change since the "
        "night before and why (`rescore --store`); null when that run did not score the lead")
    quarantined: list[QuarantinedOut] = Field(
        default_factory=list, description="inline leads only: the lead's rows left out of its "
        "features because they break a rule the nightly job quarantines by (an event stamped "
        "after its ingested_at, say)")


class ScoreResponse(BaseModel):
    results: list[LeadScore] = Field(description="One per lead, in request order")


class FieldError(BaseModel):
    field: str = Field(description="Path of the field, e.g. `leads.0.budget`, or `(body)`")
    message: str


class ErrorOut(BaseModel):
    error: str = Field(description="What is wrong; starts with the field's path when one is")
    errors: list[FieldError] | None = Field(None, description="Every invalid field (422)")
    detail: str | None = None


def _error_example(description: str, error: str, **extra) -> dict:
    body = {"error": error, **extra} if extra else {"error": error, "detail": error}
    return {"model": ErrorOut, "description": description,
            "content": {"application/json": {"example": body}}}


#: a real answer (the test suite's simulated dealer group), cut to two slots and three reasons;
#: its ``last_night`` written to show the shape
RESPONSE_EXAMPLE = {"results": [{
    "lead_id": "L0002256", "status": "ok", "dealer_id": "D02",
    "as_of": "2026-06-03T00:00:00Z", "p_convert": 0.36507936507936506,
    "p_order_7d": 0.1171875, "p_order_15d": 0.2413793103448276,
    "p_order_30d": 0.36507936507936506, "p_order_90d": 0.4444444444444444, "lead_score": 37,
    "intent_grade": "A", "p_inquiry": 0.8076923076923077, "contact_urgency": "now",
    "best_slot_start": "2026-12-07T03:00:00Z", "best_slot_local": "2026-12-07T11:00:00+08:00",
    "best_channel": "phone", "p_response": 0.4849884526558891, "p_churn": 0.0001,
    "next_slots": [
        {"start": "2026-12-07T03:00:00Z", "start_local": "2026-12-07T11:00:00+08:00",
         "channel": "phone", "p_response": 0.485},
        {"start": "2026-12-07T04:00:00Z", "start_local": "2026-12-07T12:00:00+08:00",
         "channel": "phone", "p_response": 0.485},
    ],
    "reasons": [
        {"model": "conversion", "feature": "events_3d", "value": 10.0,
         "contribution": 0.552905, "sign": "+",
         "sentence": "10 interactions in the last 3 days"},
        {"model": "conversion", "feature": "days_since_finance_calc",
         "value": 1.6767006081597222, "contribution": 0.394351, "sign": "+",
         "sentence": "Used the finance calculator 1.7 days ago"},
        {"model": "conversion", "feature": "lead_age_days", "value": 59.31786181686343,
         "contribution": -0.361652, "sign": "-", "sentence": "Lead is 59 days old"},
    ],
    "model_versions": {"conversion": "1", "contact": "1", "churn": "1", "contact-slot": "1"},
    "last_night": {"lead_score": 37, "score_delta": 12, "trend": "rising", "changes": [
        {"feature": "finance_calc_7d", "value": 2.0, "previous": 0.0, "points": 11.84,
         "sentence": "Used the finance calculator 2 times in the last 7 days (was 0): +12"}],
        "as_of": "2026-06-03T00:00:00Z"},
}, {
    "lead_id": "L9999999", "status": "not_found", "dealer_id": None, "as_of": None,
    "p_convert": None, "p_order_7d": None, "p_order_15d": None, "p_order_30d": None,
    "p_order_90d": None, "lead_score": None, "intent_grade": None, "p_inquiry": None,
    "contact_urgency": None, "best_slot_start": None, "best_slot_local": None,
    "best_channel": None,
    "p_response": None, "p_churn": None, "next_slots": [], "reasons": [],
    "model_versions": {},
}]}

SCORE_RESPONSES: dict = {
    200: {"content": {"application/json": {"example": RESPONSE_EXAMPLE}}},
    400: _error_example("the body is not JSON this service can read (text encoding or "
                        "nesting too deep)",
                        "(body): not JSON this service can read (encoding or nesting)"),
    401: _error_example("`X-API-Key` missing or unknown; the body is not read",
                        "missing or unknown X-API-Key"),
    403: _error_example("an inline lead names a dealer outside the key's tenant",
                        "leads.0.dealer_id: not a dealer of this API key's tenant"),
    413: _error_example(f"body larger than {MAX_BODY_BYTES} bytes",
                        f"body larger than {MAX_BODY_BYTES} bytes"),
    422: _error_example("invalid request; `error` names the first invalid field, `errors` all",
        "leads.0.budget: Input should be a valid number, unable to parse string as a number",
        errors=[{"field": "leads.0.budget", "message": "Input should be a valid number, "
                 "unable to parse string as a number"}]),
    503: _error_example("models not loaded yet (see `/readyz`)",
                        "models are not loaded yet"),
}


def _cell(value: str | int | float | bool | None) -> str | None:
    """An attribute as the text of a CSV cell (numbers in their shortest exact form)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _inline_frames(leads: list[tuple[int, LeadIn]]
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, list]]:
    """The inline leads (with their index in the request) as the contract's three frames,
    and per frame each row's (lead_id, path in the request)."""
    lrows, erows, crows = [], [], []
    paths: dict[str, list] = {"leads": [], "events": [], "contacts": []}
    for i, lead in leads:
        lrows.append({"lead_id": lead.lead_id, "dealer_id": lead.dealer_id,
                      "created_at": lead.created_at, "source": lead.source,
                      "intended_model": lead.intended_model, "city": lead.city,
                      "budget": lead.budget, "tz": lead.tz,
                      **{k: _cell(v) for k, v in (lead.attributes or {}).items()}})
        paths["leads"].append((lead.lead_id, f"leads.{i}"))
        for name, rows in (("events", erows), ("contacts", crows)):
            for j, x in enumerate(getattr(lead, name) or []):
                rows.append({"lead_id": lead.lead_id, **x.model_dump()})
                paths[name].append((lead.lead_id, f"leads.{i}.{name}.{j}"))

    def frame(rows, ts_cols):
        df = pd.DataFrame(rows)
        for c in ts_cols:
            if c in df:
                df[c] = pd.to_datetime(df[c], utc=True)
        return df

    return (frame(lrows, ["created_at"]), frame(erows, ["ts", "ingested_at"]),
            frame(crows, ["ts"]), paths)


_EMPTY = {k: None for k in LeadScore.model_fields
          if k not in ("lead_id", "status", "quarantined")}  # that one: inline leads only


def _not_found(lead_id: str) -> dict:
    return {"lead_id": lead_id, "status": "not_found", **_EMPTY, "next_slots": [], "reasons": [],
            "model_versions": {}}


def _records_for(runtime: Runtime, req: ScoreRequest, tenant: Tenant,
                 as_of: pd.Timestamp | None, scorer: Scorer,
                 ) -> tuple[list[dict], dict[str, list[dict]]]:
    """Feature records of the request's leads the tenant may see: store lookups for ids, the
    feature job for inline leads (records: no DataFrame on the way); and per inline lead the
    rows of it the batch's row rules leave out (``quarantined``)."""
    ids = [lead.lead_id for lead in req.leads if not lead.inline]
    inline = [(i, lead) for i, lead in enumerate(req.leads) if lead.inline]
    records = runtime.store.get_records(ids, dealers=tenant.dealers) if ids else []
    quarantined: dict[str, list[dict]] = {}
    if inline:
        *frames, paths = _inline_frames(inline)
        feats, bad = features_from_inline(*frames, as_of, clock=now_utc() + CLOCK_SKEW,
                                          features=scorer.job_features)
        records += feats.to_dict(orient="records")
        quarantined = {lead.lead_id: [] for _, lead in inline}
        for table, row, reason, field in bad.itertuples(index=False):
            lead_id, path = paths[table][row]
            quarantined[lead_id].append({"field": f"{path}.{field}", "reason": reason})
    return records, quarantined


def _in_request_order(req: ScoreRequest, out: list[dict],
                      quarantined: dict[str, list[dict]]) -> list[dict]:
    scored = {rec["lead_id"]: rec for rec in out}
    results = [scored.get(lead.lead_id) or _not_found(lead.lead_id) for lead in req.leads]
    for rec in results:
        if rec["lead_id"] in quarantined:
            rec["quarantined"] = quarantined[rec["lead_id"]]
    return results


def slots_after(req: ScoreRequest) -> pd.Timestamp | None:
    """The time a request's slot search starts from: its ``as_of`` when given (a back-dated
    request gets the slots that followed it), else None, meaning now when it is scored."""
    return None if req.as_of is None else pd.Timestamp(req.as_of)


def _score_leads(runtime: Runtime, req: ScoreRequest, tenant: Tenant, scorer: Scorer,
                 as_of: pd.Timestamp | None, lang: str | None = None) -> list[dict]:
    """Result records in request order, the request scored on its own."""
    records, quarantined = _records_for(runtime, req, tenant, as_of, scorer)
    after = slots_after(req)
    out = scorer.score_records(records, reasons=req.reasons, split=runtime.batch_threads,
                               now=now_utc() if after is None else after, lang=lang)
    return _in_request_order(req, out, quarantined)


def _with_last_night(runtime: Runtime, req: ScoreRequest, tenant: Tenant,
                     results: list[dict]) -> None:
    """Each lead scored by id gets the last nightly run's row of it (the tenant's only)."""
    ids = [lead.lead_id for lead, rec in zip(req.leads, results, strict=True)
           if not lead.inline and rec["status"] == "ok"]
    got = runtime.last_night.get(ids, dealers=tenant.dealers) if ids else {}
    for lead, rec in zip(req.leads, results, strict=True):
        if rec["status"] == "ok":
            rec["last_night"] = None if lead.inline else got.get(lead.lead_id)


def _field_error(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}",
                         "errors": [{"field": field, "message": message}]},
                        status_code=422)


def _http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = "(body): not JSON this service can read (encoding or nesting)"
    return JSONResponse({"error": detail, "detail": detail},
                        status_code=exc.status_code, headers=exc.headers)


def _admit(runtime: Runtime, x_api_key: str | None) -> tuple[Scorer, Tenant]:
    """The scorer to use and the key's tenant, or ``HTTPException`` 503 (no models yet) or
    401 (key missing or unknown). Needs no body: :class:`KeyCheck` calls it before one is
    read, :func:`_score` again with the request in hand."""
    scorer = runtime.current()  # once: a reload mid-request cannot mix versions
    if scorer is None or not scorer.models:
        raise HTTPException(503, detail="models are not loaded yet")
    tenant = runtime.keys.verify(x_api_key)
    if tenant is None:
        raise HTTPException(401, detail="missing or unknown X-API-Key")
    return scorer, tenant


async def _score(runtime: Runtime, coalescer: Coalescer, req: ScoreRequest,
                 x_api_key: str | None, accept_language: str | None = None) -> Response:
    """``POST /score`` after FastAPI has validated the body. Raises ``HTTPException`` for the
    client's mistakes. Reasons are in the language ``Accept-Language`` asks for when it is
    one of ours, else the deployment's."""
    t0 = time.perf_counter()
    scorer, tenant = _admit(runtime, x_api_key)
    n_inline = 0
    as_of = None
    for i, lead in enumerate(req.leads):
        if not lead.inline:
            continue
        n_inline += 1
        if lead.dealer_id not in tenant.dealers:
            raise HTTPException(
                403, detail=f"leads.{i}.dealer_id: not a dealer of this API key's tenant")
        as_of = as_of or (pd.Timestamp(req.as_of) if req.as_of else now_utc())
        if lead.created_at > as_of:
            return _field_error(f"leads.{i}.created_at", "after the request's as_of")
    lang = language.accept_language(accept_language) or scorer.lang
    try:
        if n_inline == 0 and len(req.leads) <= LOOP_MAX_LEADS:
            records, quarantined = _records_for(runtime, req, tenant, as_of, scorer)
            results = _in_request_order(
                req, await coalescer.score(scorer, records, reasons=req.reasons,
                                           not_before=slots_after(req), lang=lang),
                quarantined)
        else:
            results = await run_in_threadpool(_score_leads, runtime, req, tenant, scorer,
                                              as_of, lang)
    except KeyError as e:  # MissingFeatures, or LeadModel.frame's: feature names only
        if not isinstance(e, MissingFeatures) and "lacks" not in str(e):
            raise
        log.error("models and feature rows disagree: %s", e)
        raise HTTPException(503, detail="the feature snapshot does not match the models; "
                            "see the service log") from None
    _with_last_night(runtime, req, tenant, results)
    body = json.dumps({"results": results}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()
    if log.isEnabledFor(logging.INFO):
        found = sum(r["status"] == "ok" for r in results)
        log.info("scored tenant=%s leads=%d found=%d inline=%d in %.1f ms", tenant.name,
                 len(req.leads), found, n_inline, 1e3 * (time.perf_counter() - t0))
    return Response(body, media_type="application/json",
                    headers={"content-language": lang, "vary": "Accept-Language"})


def _is_score(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and \
        scope["path"][len(scope.get("root_path", "")):] == "/score"


class KeyCheck:
    """Answers ``POST /score`` without a known ``X-API-Key`` (or before the models are
    loaded) from the headers alone, so no unauthenticated body is read, parsed or validated:
    FastAPI reads and validates the body before it solves a route's dependencies, so a key
    check there comes too late. The connection is closed, as the client may still be
    sending."""

    def __init__(self, app, runtime: Runtime):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope, receive, send):
        if not _is_score(scope):
            return await self.app(scope, receive, send)
        key = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                key = value.decode("latin-1")
                break
        try:
            _admit(self.runtime, key)
        except StarletteHTTPException as e:
            response = _http_error_response(e)
            response.headers["connection"] = "close"
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuses bodies over ``max_bytes`` with 413: up front by ``Content-Length``, and while
    reading for chunked uploads that do not say their length."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    resp = JSONResponse({"error": f"body larger than {self.max_bytes} bytes"},
                                        status_code=413, headers={"connection": "close"})
                    return await resp(scope, receive, send)
                break
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=f"body larger than {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)


_EXAMPLES = ScoreRequest.model_config["json_schema_extra"]["examples"]
ScoreBody = Annotated[ScoreRequest, Body(openapi_examples={
    "by_id": {"summary": "Leads by id (features from the online store)",
              "value": _EXAMPLES[0]},
    "inline": {"summary": "A lead with its events inline (scored on the fly)",
               "value": _EXAMPLES[1]},
})]
DOCS_ASSETS = "/docs/assets"
api_key_header = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False,
    description="The tenant's key (`leadscore keys add`); it sees only that tenant's dealers.")


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="leadscore",
        version="1",
        description="Lead score, contact timing and churn risk with reasons. Every request "
        "needs an `X-API-Key` header (**Authorize** above); a key sees only its own dealers' "
        "leads.",
        docs_url=None,  # served below from local files
        redoc_url=None,  # ReDoc comes from a CDN only
    )
    coalescer = Coalescer()
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(KeyCheck, runtime=runtime)  # outermost: before any body is read
    assets = swagger_ui_assets()
    if assets is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-light-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = await run_in_threadpool(render_metrics)
        return Response(body, headers={"content-type": content_type})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _http_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                pos = e.get("loc", ("body", "?"))[-1]
                errors.append({"field": "(body)",
                               "message": f"malformed JSON near character {pos}"})
                continue
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            errors.append({"field": loc or "(body)", "message": e.get("msg", "invalid")})
        first = errors[0] if errors else {"field": "(body)", "message": "invalid request"}
        return JSONResponse(
            {"error": f"{first['field']}: {first['message']}", "errors": errors[:20]},
            status_code=422,
        )

    @app.post("/score", response_model=ScoreResponse, responses=SCORE_RESPONSES)
    async def score(
        req: ScoreBody,
        x_api_key: Annotated[str | None, Security(api_key_header)] = None,
        accept_language: Annotated[str | None, Header(
            description="`zh`, `zh-CN` or `zh-Hans`: reasons in Simplified Chinese; `en`: "
            "English; anything else: the deployment's language (`LEADSCORE_LANG`)")] = None,
    ) -> Response:
        return await _score(runtime, coalescer, req, x_api_key, accept_language)

    return app
