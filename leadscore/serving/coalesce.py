"""Small requests that arrive together are scored in one pass of the models.

Why: most of a lone lead's cost is fixed per call (a few dozen numpy steps, three tree walks,
the slot search), so a few leads in one call cost each about half of one alone. Under load a
worker's event loop finds several requests ready each time it looks up from scoring; scoring
them as one batch is more throughput and less of the queueing that makes the tail.

Unlike BentoML's adaptive batching nothing waits for company: a batch is whatever has reached
this point by the time the loop has gone round with nothing new arriving (at most a few turns,
microseconds), so a lone client sees no added latency and no request is ever refused for
waiting. Requests keep their own tenant checks and store lookups before they get here; what is
shared is only the scoring of rows that are already theirs, and rows are independent, so every
answer is what scoring the request alone gives. A batch that fails is scored again request by
request, so one request's error never becomes its neighbours'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import pandas as pd

from leadscore.scoring.scorer import Scorer
from leadscore.serving.runtime import now_utc

log = logging.getLogger(__name__)


@dataclass
class _Job:
    scorer: Scorer
    records: Sequence[dict]
    reasons: int
    future: asyncio.Future
    not_before: pd.Timestamp | None = None  # the request's as_of; None: now when scored
    lang: str | None = None


@dataclass
class _Gathering:
    jobs: list[_Job] = field(default_factory=list)
    rows: int = 0
    seen: int = 1  # jobs there at the last look (the first one started the gathering)
    turns: int = 0


class Coalescer:
    """One per app; keeps a gathering per event loop (a test client runs its own loop)."""

    def __init__(self, max_rows: int = 32, max_turns: int = 4, slots: int = 3):
        #: a batch closes at this many rows: scoring holds the loop for each row it takes
        self.max_rows = max_rows
        #: loop turns a gathering may wait while requests keep arriving (each is microseconds)
        self.max_turns = max_turns
        self.slots = slots
        self._open: dict[asyncio.AbstractEventLoop, _Gathering] = {}

    async def score(self, scorer: Scorer, records: Sequence[dict], *, reasons: int,
                    not_before: pd.Timestamp | None = None,
                    lang: str | None = None) -> list[dict]:
        """What ``scorer.score_records(records, reasons=reasons, now=not_before or now,
        lang=lang)`` returns, scored beside the other requests of this moment that ask for
        the same (the same ``not_before``: a slot search starts from one time per pass)."""
        if not records:  # nothing of the tenant's: no reason to wait for anyone
            return []
        loop = asyncio.get_running_loop()
        job = _Job(scorer, records, reasons, loop.create_future(), not_before, lang)
        gathering = self._open.get(loop)
        if gathering is None:
            gathering = self._open[loop] = _Gathering()
            loop.call_soon(self._look, loop, gathering)
        gathering.jobs.append(job)
        gathering.rows += len(records)
        if gathering.rows >= self.max_rows:
            self._close(loop, gathering)
        return await job.future

    def _look(self, loop: asyncio.AbstractEventLoop, gathering: _Gathering) -> None:
        if self._open.get(loop) is not gathering:  # closed full already
            return
        if len(gathering.jobs) > gathering.seen and gathering.turns < self.max_turns:
            gathering.seen = len(gathering.jobs)  # still arriving: one more turn
            gathering.turns += 1
            loop.call_soon(self._look, loop, gathering)
            return
        self._close(loop, gathering)

    def _close(self, loop: asyncio.AbstractEventLoop, gathering: _Gathering) -> None:
        del self._open[loop]
        groups: dict[tuple, list[_Job]] = {}
        for job in gathering.jobs:
            groups.setdefault((id(job.scorer), job.reasons, job.not_before, job.lang),
                              []).append(job)
        batches = list(groups.values())
        for k, jobs in enumerate(batches):
            try:
                self._run(jobs)
            except BaseException as e:  # a loop callback's error reaches no request: tell them
                for job in (job for rest in batches[k:] for job in rest):
                    _settle(job.future, exc=e)
                raise

    def _run(self, jobs: list[_Job]) -> None:
        first = jobs[0]
        records = [r for job in jobs for r in job.records]
        t0 = time.perf_counter()
        try:
            out = first.scorer.score_records(
                records, reasons=first.reasons, slots=self.slots,
                now=now_utc() if first.not_before is None else first.not_before,
                lang=first.lang)
        except Exception as e:
            if len(jobs) == 1:
                _settle(first.future, exc=e)
            else:  # whose rows? each request on its own finds out
                for job in jobs:
                    self._run([job])
            return
        seconds = time.perf_counter() - t0
        start = 0
        for job in jobs:
            end = start + len(job.records)
            _settle(job.future, result=out[start:end])
            start = end
        try:  # after the answers: a metrics fault must cost no request
            rows_metric, seconds_metric = _pass_metrics()
            rows_metric.observe(len(records))
            seconds_metric.observe(seconds)
        except Exception:
            log.warning("scoring pass metrics not recorded", exc_info=True)


@cache
def _pass_metrics():
    """Prometheus histograms on ``/metrics`` (BentoML's, so workers' values add up): how many
    leads share a pass tells the operator how close to capacity a worker runs, the seconds
    what the models cost of a request's latency."""
    import bentoml

    return (
        bentoml.metrics.Histogram(
            name="leadscore_scoring_pass_rows",
            documentation="Leads scored in one pass of the models (small requests that "
            "arrive together share a pass)",
            buckets=(1, 2, 4, 8, 16, 32, 64)),
        bentoml.metrics.Histogram(
            name="leadscore_scoring_pass_seconds",
            documentation="Seconds of one pass of the models, reasons and slot search included",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)),
    )


def _settle(future: asyncio.Future, result=None, exc: BaseException | None = None) -> None:
    if future.done():  # the client went away and its task was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
