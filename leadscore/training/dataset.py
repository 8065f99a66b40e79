"""Training sets from rolling snapshots: features at each cutoff, labels strictly after it.

Honesty rules, each enforced here and tested:
- features see only rows with ``ts < as_of`` and ``ingested_at <= as_of`` (the feature job);
- labels look only at (as_of, as_of + horizon];
- a row whose label window ends after the data ends is right-censored: dropped, never negative;
- out-of-time validation purges training cutoffs whose label window reaches into the test
  period, so the same lead's future cannot leak from a training label into a test row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from leadscore import atomic
from leadscore.features import catalog, job
from leadscore.models.spec import ModelSpec, NoneWithin

log = logging.getLogger(__name__)

WARMUP_DAYS = 14
TEST_SHARE = 0.25
SPLITS = ("fit", "valid", "calib", "test")


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # lead_id, dealer_id, as_of, features..., label, split
    cutoffs: list[pd.Timestamp]
    data_end: pd.Timestamp
    n_censored: int
    split_kind: str
    notes: list[str] = field(default_factory=list)
    observed: ObservedEnd | None = None  # how data_end was found, what lies after it
    btyd_fits: list[dict] = field(default_factory=list)  # churn's classical fits, if any

    def add_columns(self, **columns) -> None:
        """Columns added to (or replaced in) ``frame`` by one concat: an insert into a frame
        of a few hundred feature columns warns of fragmentation."""
        new = pd.DataFrame(columns, index=self.frame.index)
        self.frame = pd.concat([self.frame.drop(columns=list(new.columns), errors="ignore"),
                                new], axis=1)

    def part(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]

    def labelled(self) -> pd.DataFrame:
        """Every row with an observed label: the four parts and the purged cutoffs."""
        return self.frame

    def counts(self) -> dict[str, int]:
        return {s: int((self.frame["split"] == s).sum()) for s in SPLITS}


#: A day is in line with the data when it holds at least this share of a typical day's events
#: (and the week ending with it of a typical week's); see :func:`last_full_day`.
IN_LINE_SHARE = 0.1
#: A typical day: the median over this many of the latest days that have events.
REFERENCE_DAYS = 56


def last_full_day(daily: pd.Series, share: float = IN_LINE_SHARE,
                  reference_days: int = REFERENCE_DAYS) -> pd.Timestamp:
    """The last day the data is really there, from event counts per day (index: days).

    A stray row dated after the real end (a wrong clock, a test event) must not stretch the
    span that label windows are observed in. Typical volume is the median count of the latest
    ``reference_days`` days with events. The end is the latest day that (a) is in line: it
    holds at least ``share`` of a typical day, and the seven days ending with it at least
    ``share`` of seven typical days, so an isolated late batch is not; and (b) is followed by
    sparse data only: fewer than ``share`` of a typical day per calendar day from it to the
    latest event. A last partial day may fall out; that only moves the end back by hours.
    """
    daily = daily[daily > 0].sort_index()
    if daily.empty:
        raise ValueError("no events: nothing to train on")
    floor = share * float(daily.iloc[-reference_days:].median())
    full = daily.reindex(pd.date_range(daily.index[0], daily.index[-1], freq="D"),
                         fill_value=0)
    week = full.rolling(7, min_periods=1).sum()
    after = full.iloc[::-1].cumsum().iloc[::-1].shift(-1, fill_value=0)
    days_after = np.asarray((full.index[-1] - full.index).days, dtype=float)
    ok = (full >= floor) & (full > 0) & (week >= 7 * floor) & (after <= floor * days_after)
    return full.index[ok.to_numpy()][-1] if ok.any() else full.index[-1]


@dataclass(frozen=True)
class ObservedEnd:
    """Where the observation ends (labels are read up to ``end``) and what lies beyond it."""

    end: pd.Timestamp
    latest: pd.Timestamp  # the latest event time in the data
    n_after: int  # events after ``end``: reported, never used for labels
    first_after: pd.Timestamp | None
    given: bool  # set by the caller (--observed-until) rather than estimated

    def note(self) -> str | None:
        if not self.n_after:
            return None
        how = "given" if self.given else "estimated from daily volumes"
        events = f"{self.n_after:,} event{'s' * (self.n_after > 1)}"
        return (f"{events} after the observation end {self.end} ({how}), dated "
                f"{self.first_after} … {self.latest}, not used for labels")


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def observation_end(con: duckdb.DuckDBPyConnection, given=None) -> ObservedEnd:
    """The end of observation: ``given`` (``--observed-until``) or :func:`last_full_day`'s
    estimate (its latest event); events after it are counted and reported."""
    daily = con.sql(
        "SELECT date_trunc('day', ts) AS day, count(*) AS n, max(ts) AS last_ts "
        "FROM events WHERE ts IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).df()
    if daily.empty:
        raise ValueError("no events: nothing to train on")
    day = pd.to_datetime(daily["day"], utc=True)
    last_ts = pd.to_datetime(daily["last_ts"], utc=True)
    if given is not None:
        end = _utc(given)
    else:
        full_day = last_full_day(pd.Series(daily["n"].to_numpy(), index=day))
        end = last_ts[day == full_day].iloc[0]
    n_after, first_after = con.execute(
        "SELECT count(*), min(ts) FROM events WHERE ts > ?", [end.to_pydatetime()]
    ).fetchall()[0]
    obs = ObservedEnd(end=end, latest=last_ts.max(), n_after=int(n_after),
                      first_after=_utc(first_after) if n_after else None,
                      given=given is not None)
    if obs.n_after:
        log.warning("%s", obs.note())
    return obs


def data_start(con: duckdb.DuckDBPyConnection) -> pd.Timestamp:
    (start,) = con.execute("SELECT min(created_at) FROM leads").fetchall()[0]
    if start is None:
        raise ValueError("no leads: nothing to train on")
    return _utc(start)


def data_bounds(
    con: duckdb.DuckDBPyConnection, observed_until=None,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First lead creation and the end of observation: the span labels can be read from."""
    return data_start(con), observation_end(con, observed_until).end


#: Weekly snapshots fall on Mondays 00:00 UTC (1970-01-05 was a Monday): cutoffs do not move
#: when the data grows by a day, so runs on growing data stay comparable.
ANCHOR = pd.Timestamp("1970-01-05", tz="UTC")


def rolling_cutoffs(
    start: pd.Timestamp, end: pd.Timestamp, every_days: int, horizon_days: float,
    warmup_days: int = WARMUP_DAYS,
) -> list[pd.Timestamp]:
    """Anchored cutoffs every ``every_days`` after a warm-up, whose label window is observed."""
    first = (start + pd.Timedelta(days=warmup_days)).ceil("D")
    offset = (first - ANCHOR).days % every_days
    if offset:
        first += pd.Timedelta(days=every_days - offset)
    last = end - pd.Timedelta(days=horizon_days)
    out = []
    t = first
    while t <= last:
        out.append(t)
        t += pd.Timedelta(days=every_days)
    return out


def label_rows(
    con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, spec: ModelSpec,
    data_end: pd.Timestamp,
) -> pd.DataFrame:
    """``label`` (0/1) and ``censored`` for each (lead_id, as_of) row, from events after as_of."""
    keys = rows[["lead_id", "as_of"]].drop_duplicates()
    con.register("_label_rows", keys)
    types = ", ".join(f"'{t}'" for t in spec.label.events)
    hours = float(spec.label.hours)
    hits = con.sql(
        f"""
        SELECT r.lead_id, r.as_of,
               count(e.lead_id) > 0 AS hit
        FROM _label_rows r
        LEFT JOIN events e
          ON e.lead_id = r.lead_id AND e.event_type IN ({types})
         AND e.ts > r.as_of
         AND e.ts <= r.as_of + to_microseconds(CAST({hours} * 3600e6 AS BIGINT))
        GROUP BY r.lead_id, r.as_of
        """
    ).df()
    con.unregister("_label_rows")
    hits["as_of"] = pd.to_datetime(hits["as_of"], utc=True)
    out = rows[["lead_id", "as_of"]].merge(hits, on=["lead_id", "as_of"], how="left")
    hit = out["hit"].fillna(False).astype(bool).to_numpy()
    y = ~hit if isinstance(spec.label, NoneWithin) else hit
    window_end = out["as_of"] + pd.Timedelta(hours=hours)
    censored = (window_end > data_end).to_numpy()
    return pd.DataFrame(
        {"label": y.astype("int8"), "censored": censored}, index=rows.index
    )


def lead_share(lead_ids: pd.Series, seed: int) -> np.ndarray:
    """A stable per-lead uniform number in [0, 1): the same lead always lands in one part."""
    h = pd.util.hash_pandas_object(lead_ids.astype(str) + f"|{seed}", index=False)
    return (h.to_numpy() % 10_000) / 10_000.0


class TooShortForTime(ValueError):
    """The data cannot give an out-of-time holdout (too few cutoffs for the label window)."""


def assign_splits(
    frame: pd.DataFrame, kind: str, horizon_days: float, seed: int,
    test_share: float = TEST_SHARE,
) -> tuple[pd.Series, list[str], str]:
    """Split labels: fit / valid (early stopping) / calib (calibration) / test, or '' (purged).

    ``auto`` is ``time`` when the data allows an out-of-time holdout and ``entity`` (grouped
    by lead, in-time) when it is too short, with a note saying so: a short history still
    trains, and the run says how it was validated. Returns the labels, notes and the kind used.
    """
    if kind == "auto":
        try:
            return assign_splits(frame, "time", horizon_days, seed, test_share)
        except TooShortForTime as e:
            split, notes, _ = assign_splits(frame, "entity", horizon_days, seed, test_share)
            log.warning("out-of-time validation impossible (%s): entity split instead", e)
            return split, [f"entity split (grouped by lead, in-time metrics): {e}", *notes], \
                "entity"
    notes: list[str] = []
    u = lead_share(frame["lead_id"], seed)
    split = pd.Series("", index=frame.index, dtype="object")
    if kind == "entity":
        split[:] = np.select([u < 0.6, u < 0.7, u < 0.8], ["fit", "valid", "calib"], "test")
        return split, notes, kind
    if kind != "time":
        raise ValueError(f"split must be 'auto', 'time' or 'entity', not {kind!r}")
    cut = np.sort(frame["as_of"].unique())
    if len(cut) < 3:
        raise TooShortForTime(
            f"out-of-time validation needs at least 3 usable cutoffs, found {len(cut)}; "
            "use --split entity with a single --as-of for short data"
        )
    n_test = max(1, round(test_share * len(cut)))
    first_test = pd.Timestamp(cut[-n_test])
    gap = pd.Timedelta(days=horizon_days)
    is_test = frame["as_of"] >= first_test
    in_train_period = frame["as_of"] + gap <= first_test
    purged = int((~is_test & ~in_train_period).sum())
    if not in_train_period.any():
        raise TooShortForTime(
            f"no training cutoff ends its {horizon_days:g}-day label window before the test "
            f"period starts ({first_test.date()}, {len(cut)} cutoffs in all); give more "
            "history or use --split entity"
        )
    split[is_test] = "test"
    tr = in_train_period.to_numpy()
    split[tr] = np.select([u[tr] < 0.8, u[tr] < 0.9], ["fit", "valid"], "calib")
    notes.append(
        f"out-of-time: test cutoffs from {first_test.date()}, {purged:,} rows purged whose "
        f"label window overlaps the test period"
    )
    return split, notes, kind


def held_out(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows a run chooses between two fits on (``btyd.use: auto``, a horizon's ranking):
    the valid and calib parts (boosting never saw them; never the holdout) at the later half
    of their cutoffs, the ones most like the days the model will score. Earlier rows reward
    the fit of the training period's own months."""
    held = frame[frame["split"].isin(["valid", "calib"])]
    cuts = np.sort(held["as_of"].unique())
    return held[held["as_of"] >= cuts[len(cuts) // 2]] if len(cuts) else held


def check_holdout(ts: TrainingSet, model: str) -> None:
    """Stop before anything is logged when the test part has one class: its metrics would
    be undefined (AUC NaN) and the model registered untested. The usual cause is an end of
    observation later than where the data is, so empty label windows count as observed."""
    test = ts.part("test")
    classes = set(test["label"].unique().tolist())
    if len(classes) == 2:
        return
    what = {frozenset({0}): "no positives", frozenset({1}): "no negatives"}.get(
        frozenset(classes), "no rows")
    cut = test["as_of"]
    period = f"cutoffs {cut.min().date()} … {cut.max().date()}" if len(test) else "empty"
    raise ValueError(
        f"{model}: the test period ({ts.split_kind} split, {period}, {len(test):,} rows) has "
        f"{what}; nothing is trained or registered. Likely cause: the end of observation "
        f"({ts.data_end}) is later than where the data really ends (rows dated after it), so "
        "label windows without data count as observed; check the data's latest rows or pass "
        "--observed-until, or give more history"
    )


def fingerprint(data_dir: Path, cutoffs: list[pd.Timestamp], extra: dict | None = None) -> str:
    """Hash of the input files' bytes and the cutoffs: two runs with the same fingerprint saw
    the same data."""
    h = hashlib.sha256()
    for p in sorted(Path(data_dir).rglob("*")):
        if not p.is_file() or "quarantine" in p.parts or p.name.startswith("."):
            continue
        h.update(str(p.relative_to(data_dir)).encode())
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps([str(c) for c in cutoffs], sort_keys=True).encode())
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cached_features(
    con: duckdb.DuckDBPyConnection, cutoffs: list[pd.Timestamp], cache: Path | None,
) -> pd.DataFrame:
    """The catalogue's features at the cutoffs, from ``cache`` when it holds them.

    The entry is written atomically, so a killed run leaves the old entry or none; an entry
    that cannot be read (a truncated file from an older version, a bad disk) is reported,
    deleted and recomputed rather than failing every later run.
    """
    if cache is not None and cache.is_file():
        try:
            return pd.read_parquet(cache)
        except (OSError, ValueError, pa.ArrowException) as e:
            log.warning("feature cache %s unreadable (%s): recomputing it", cache, e)
            cache.unlink(missing_ok=True)
    frame = job.to_pandas(job.compute(con, cutoffs, catalog.CATALOG))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_parquet(cache, frame)
    return frame


def build_attempts(
    con: duckdb.DuckDBPyConnection, spec: ModelSpec, *, split: str = "auto", seed: int = 0,
    observed: ObservedEnd | None = None,
) -> TrainingSet:
    """One row per logged contact attempt: the lead's features just before it (``as_of`` =
    the attempt's time, so nothing at or after it is seen), the slot's features, and whether
    it was answered. No horizon, so nothing is censored.

    An attempt before its lead's ``created_at`` is pre-lead history (the contract's rule,
    :func:`contract.lead_exists_sql`): later rows count it, but the lead had no state to
    learn from then, so it is no training row itself."""
    from leadscore.contract import lead_exists_sql
    from leadscore.features.slots import add_slot_features

    n_log = con.execute("SELECT count(*) FROM contacts").fetchone()[0]
    attempts = con.execute(
        "SELECT c.lead_id, c.ts, c.channel, c.outcome, l.tz FROM contacts c "
        f"JOIN leads l ON c.lead_id = l.lead_id AND {lead_exists_sql('l.created_at', 'c.ts')} "
        "ORDER BY c.ts, c.lead_id"
    ).df()
    if attempts.empty:
        raise ValueError("the contact log is empty: the slot model needs logged attempts")
    attempts["ts"] = pd.to_datetime(attempts["ts"], utc=True)
    feats = job.to_pandas(job.compute_pairs(
        con, attempts.rename(columns={"ts": "as_of"})[["lead_id", "as_of"]]))
    rows = attempts.rename(columns={"ts": "as_of"}).merge(
        feats.drop(columns=["tz"], errors="ignore"), on=["lead_id", "as_of"], how="left")
    frame = add_slot_features(rows.drop(columns=["channel"]), rows["as_of"], rows["tz"],
                              rows["channel"])
    frame["label"] = frame["outcome"].isin(spec.label.outcomes).astype("int8")
    frame = frame.drop(columns=["outcome"])
    parts, notes, kind = assign_splits(frame, split, 0.0, seed)
    if n_log > len(attempts):
        notes.append(f"{n_log - len(attempts):,} contact attempts before their lead's "
                     "created_at: pre-lead history, not training rows")
    frame["split"] = parts.to_numpy()
    frame = frame[frame["split"] != ""].reset_index(drop=True)
    obs = observed or observation_end(con)
    if obs.note():
        notes.append(obs.note())
    cut = sorted(frame["as_of"].unique())
    return TrainingSet(frame=frame, cutoffs=[pd.Timestamp(cut[0]), pd.Timestamp(cut[-1])],
                       data_end=obs.end, n_censored=0, split_kind=kind, notes=notes,
                       observed=obs)


def build(
    con: duckdb.DuckDBPyConnection,
    spec: ModelSpec,
    *,
    split: str = "auto",
    as_of: list[pd.Timestamp] | None = None,
    seed: int = 0,
    feature_cache: Path | None = None,
    observed: ObservedEnd | None = None,
) -> TrainingSet:
    """Features at the cutoffs, the spec's entity filter, labels, censoring and splits.

    ``observed``: the end of observation (default: :func:`observation_end`'s estimate)."""
    if spec.entity == "contact_attempt":
        return build_attempts(con, spec, split=split, seed=seed, observed=observed)
    obs = observed or observation_end(con)
    start, end = data_start(con), obs.end
    horizon = spec.label.days
    if as_of:
        cutoffs = sorted(pd.Timestamp(t) for t in as_of)
    else:
        cutoffs = rolling_cutoffs(start, end, spec.cutoff_every_days, horizon)
    if not cutoffs:
        raise ValueError(
            f"no cutoff between {start} + {WARMUP_DAYS}d and {end} - {horizon:g}d: "
            "the data is too short for this horizon; pass --as-of and --horizon-days"
        )
    frame = cached_features(con, cutoffs, feature_cache)
    if spec.entity == "open":
        frame = frame[frame["is_open"]]
    elif spec.entity == "open_or_owner":
        frame = frame[frame["is_open"] | frame["is_owner"]]
    else:
        raise ValueError(f"unknown entity {spec.entity!r}")
    frame = frame.reset_index(drop=True)
    lab = label_rows(con, frame, spec, end)
    n_censored = int(lab["censored"].sum())
    frame = pd.concat([frame, lab], axis=1)
    frame = frame[~frame["censored"]].drop(columns="censored").reset_index(drop=True)
    if frame.empty:
        latest = (end - pd.Timedelta(days=horizon)).floor("D")
        raise ValueError(
            f"every row is right-censored: a {horizon:g}-day label window after the latest "
            f"cutoff ({cutoffs[-1]}) passes the data's end ({end}); use cutoffs on or before "
            f"{latest.date()} or a shorter --horizon-days"
        )
    parts, notes, kind = assign_splits(frame, split, horizon, seed)
    # purged rows take no part in the evaluation fit, but their labels are observed: the
    # refit of the registered model uses them (``TrainingSet.labelled``)
    which = np.where(parts.to_numpy() == "", "purged", parts.to_numpy())
    # one more column by concat: an insert into a frame of a few hundred feature columns
    # would warn of fragmentation on every training run
    frame = pd.concat([frame, pd.Series(which, index=frame.index, name="split")], axis=1)
    if n_censored:
        notes.append(f"{n_censored:,} right-censored rows excluded (label window past {end})")
    if obs.note():
        notes.append(obs.note())
    ts = TrainingSet(frame=frame, cutoffs=cutoffs, data_end=end, n_censored=n_censored,
                     split_kind=kind, notes=notes, observed=obs)
    log.info("training set %s: %s", spec.name, ts.counts())
    return ts
