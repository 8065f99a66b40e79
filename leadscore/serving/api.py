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
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from leadscore import contract
from leadscore.schema import CHANNELS, OUTCOMES
from leadscore.serving.auth import Tenant
from leadscore.serving.coalesce import Coalescer
from leadscore.serving.runtime import Runtime, features_from_inline, now_utc
from leadscore.serving.scorer import MissingFeatures, Scorer
from leadscore.serving.sharing import should_recycle

log = logging.getLogger("leadscore.http")

MAX_LEADS = 500
MAX_EVENTS = 5_000
MAX_CONTACTS = 1_000
MAX_BODY_BYTES = 8 * 1024 * 1024
#: requests of at most this many leads by id are scored on the event loop, together with the
#: others that arrive with them (:mod:`~leadscore.serving.coalesce`; about 1.5 ms for a lone
#: lead, slot search and reasons included: a hop to a thread and back would cost a fifth of
#: that and make the loop and the scorer fight over the GIL); bigger or inline ones go to the
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

    _created = field_validator("created_at")(lambda v: None if v is None else _not_future(v))

    @field_validator("tz")
    @classmethod
    def _zone(cls, v):
        if v is not None and v not in ZONES:
            raise ValueError(f"unknown IANA time zone {v!r}")
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
        "snapshot's own cutoff.")
    reasons: int = Field(3, ge=0, le=10, description="Top positive and negative reasons")

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
    model: str
    feature: str
    value: float | str | None
    contribution: float
    sentence: str


class SlotOut(BaseModel):
    start: datetime
    channel: str
    p_response: float


class QuarantinedOut(BaseModel):
    field: str = Field(description="the row's path in the request and its offending field")
    reason: str = Field(description="the contract rule it breaks, as in the batch quarantine")


class LeadScore(BaseModel):
    lead_id: str
    status: Literal["ok", "not_found"]
    dealer_id: str | None = None
    as_of: datetime | None = None
    p_convert: float | None = None
    lead_score: int | None = None
    grade: str | None = None
    p_inquiry: float | None = None
    contact_urgency: str | None = None
    best_slot_start: datetime | None = None
    best_channel: str | None = None
    p_response: float | None = None
    p_churn: float | None = None
    next_slots: list[SlotOut] = Field(
        default_factory=list, description="the best few allowed slots of the next 72 hours")
    reasons: list[ReasonOut] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(default_factory=dict)
    quarantined: list[QuarantinedOut] = Field(
        default_factory=list, description="inline leads only: the lead's rows left out of its "
        "features because they break a rule the nightly job quarantines by (an event stamped "
        "after its ingested_at, say)")


class ScoreResponse(BaseModel):
    results: list[LeadScore]


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
                      "budget": lead.budget, "tz": lead.tz})
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
                 as_of: pd.Timestamp | None) -> tuple[list[dict], dict[str, list[dict]]]:
    """Feature records of the request's leads the tenant may see: store lookups for ids, the
    feature job for inline leads (records: no DataFrame on the way); and per inline lead the
    rows of it the batch's row rules leave out (``quarantined``)."""
    ids = [lead.lead_id for lead in req.leads if not lead.inline]
    inline = [(i, lead) for i, lead in enumerate(req.leads) if lead.inline]
    records = runtime.store.get_records(ids, dealers=tenant.dealers) if ids else []
    quarantined: dict[str, list[dict]] = {}
    if inline:
        *frames, paths = _inline_frames(inline)
        feats, bad = features_from_inline(*frames, as_of, clock=now_utc() + CLOCK_SKEW)
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


def _score_leads(runtime: Runtime, req: ScoreRequest, tenant: Tenant, scorer: Scorer,
                 as_of: pd.Timestamp | None) -> list[dict]:
    """Result records in request order, the request scored on its own."""
    records, quarantined = _records_for(runtime, req, tenant, as_of)
    out = scorer.score_records(records, reasons=req.reasons, split=runtime.batch_threads,
                               now=now_utc())
    return _in_request_order(req, out, quarantined)


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


async def _score(runtime: Runtime, coalescer: Coalescer, req: ScoreRequest,
                 x_api_key: str | None) -> Response:
    """``POST /score`` after validation, whichever way the request came in (the FastAPI route
    or :class:`ScoreFastPath`). Raises ``HTTPException`` for the client's mistakes."""
    t0 = time.perf_counter()
    scorer = runtime.current()  # once: a reload mid-request cannot mix versions
    if scorer is None or not scorer.models:
        raise HTTPException(503, detail="models are not loaded yet")
    tenant = runtime.keys.verify(x_api_key)
    if tenant is None:
        raise HTTPException(401, detail="missing or unknown X-API-Key")
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
    try:
        if n_inline == 0 and len(req.leads) <= LOOP_MAX_LEADS:
            records, quarantined = _records_for(runtime, req, tenant, as_of)
            results = _in_request_order(
                req, await coalescer.score(scorer, records, reasons=req.reasons), quarantined)
        else:
            results = await run_in_threadpool(_score_leads, runtime, req, tenant, scorer,
                                              as_of)
    except KeyError as e:  # MissingFeatures, or LeadModel.frame's: feature names only
        if not isinstance(e, MissingFeatures) and "lacks" not in str(e):
            raise
        log.error("models and feature rows disagree: %s", e)
        raise HTTPException(503, detail="the feature snapshot does not match the models; "
                            "see the service log") from None
    body = json.dumps({"results": results}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()
    if log.isEnabledFor(logging.INFO):
        found = sum(r["status"] == "ok" for r in results)
        log.info("scored tenant=%s leads=%d found=%d inline=%d in %.1f ms", tenant.name,
                 len(req.leads), found, n_inline, 1e3 * (time.perf_counter() - t0))
    return Response(body, media_type="application/json")


class ScoreFastPath:
    """``POST /score`` with a JSON body, straight to :func:`_score`.

    FastAPI's way to the endpoint (exception and exit-stack middlewares, routing, the
    dependency solver, ``json.loads`` then validation of the dict) cost ~0.3 ms of a ~2 ms
    request in process. Here the body is read and validated in one step by pydantic's own JSON
    parser against the same :class:`ScoreRequest`. Anything else, and any body that does not
    validate, goes down FastAPI's way unchanged (the body replayed), so every error answer is
    the one the route gives, and the route stays what the OpenAPI document describes."""

    def __init__(self, app, runtime: Runtime, coalescer: Coalescer):
        self.app = app
        self.runtime = runtime
        self.coalescer = coalescer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or \
                scope["path"][len(scope.get("root_path", "")):] != "/score":
            return await self.app(scope, receive, send)
        key = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
            elif name == b"x-api-key" and key is None:
                key = value.decode("latin-1")
        if not json_body:
            return await self.app(scope, receive, send)
        try:
            chunks = []
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            raw = b"".join(chunks)
            try:
                req = ScoreRequest.model_validate_json(raw) if raw else None
            except ValueError:  # pydantic's ValidationError: FastAPI words the answer
                req = None
            if req is None:
                async def replay():
                    return {"type": "http.request", "body": raw, "more_body": False}

                return await self.app(scope, replay, send)
            response = await _score(self.runtime, self.coalescer, req, key)
            if should_recycle():
                response.headers["connection"] = "close"
        except StarletteHTTPException as e:
            response = _http_error_response(e)
        await response(scope, receive, send)


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


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="leadscore",
        version="1",
        description="Lead score, contact timing and churn risk with reasons. Every request "
        "needs an `X-API-Key` header; a key sees only its own dealers' leads.",
    )
    coalescer = Coalescer()
    app.add_middleware(ScoreFastPath, runtime=runtime, coalescer=coalescer)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)  # outside the fast path too

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

    @app.post("/score", response_model=ScoreResponse, responses={
        401: {"description": "missing or unknown API key"},
        403: {"description": "an inline lead names a dealer outside the key's tenant"},
        413: {"description": "body too large"},
        422: {"description": "invalid request; `error` names the field"},
        503: {"description": "models not loaded yet"},
    })
    async def score(
        req: ScoreRequest,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        return await _score(runtime, coalescer, req, x_api_key)

    return app
