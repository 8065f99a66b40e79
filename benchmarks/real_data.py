"""Real data against what a user would pick instead, measured in the same run (issue 24,
item 6). Every data set comes in through its shipped mapping (``examples/``), as a user's own.

- Online Retail (UCI): "buys again within 150 days of 2011-07-01". The customers are split in
  two random halves; BG/NBD and Pareto/NBD are fitted on half A at the cutoff and everything
  is scored on half B at the cutoff. LightGBM on leadscore's churn features is trained on half
  A at weekly cutoffs up to it (from the warm-up on, as ``train`` does; ``--weeks``), alone,
  with the classical probability as a feature, and boosted from the classical margin
  (``init_score``). Averaged over ``--seeds`` random halves. Those label windows overlap
  half B's scoring window (other customers, the same months), which the classical fits never
  see; the row "windows closed by the cutoff only" trains on windows that end by the cutoff,
  as a forecast made that day could (few cutoffs: the log starts 7 months earlier). Its
  init_score row takes the path ``train`` takes: BG/NBD fitted on half A at anchor cutoffs
  from the whole-history features (``btyd.feature_summaries``), each cutoff started from the
  fit at or before it, half B from the fit at the cutoff. Its "btyd auto as train" row keeps
  that row or the trees alone by half A's held-out (valid, calib) leads, by the function
  ``train`` uses (``btyd.choose_start``); ``auto_start`` is the share of splits where the
  start was kept.
- Olist (marketing funnel): "closes within 30 days", leadscore's conversion model trained as
  ``train`` does (weekly cutoffs, out-of-time holdout) against a plain LightGBM on the lead's
  own columns (origin, landing page, age) on the same rows.
- A funnel with its own step names (the simulator's events renamed, none in the standard
  list): leadscore's conversion model with the vocabulary ``train`` learns against a plain
  LightGBM on per-step counts over the whole history, pooled over the same cutoffs.
- Time to order on simulated worlds: each of the 7/15/90-day models taught by its own labels,
  by the 30-day labels of the same rows, and the one ``train`` keeps, on its own holdout.
- The simulator: conversion and churn against its oracle probability on the same holdout;
  churn also with ``btyd.use: init_score`` and ``auto`` as ``train`` runs them (averaged over
  ``--seeds``; ``auto_start``: the share of worlds where auto kept the start).

Prints ROC AUC, PR-AUC (the task's positive class) and expected calibration error (10 bins)
beside ``ece_floor``: what a perfectly calibrated model would show on a holdout of that size.

    PYTHONPATH=. python benchmarks/real_data.py [--realdata DIR] [--seed S] [--seeds N]
        [--weeks W] [--btyd bgnbd|pareto_nbd] [--only online_retail,simulator,...]
        [--log MAPPING.yaml:CUTOFF:HORIZON_DAYS ...]

``--log`` runs another transaction log (your own, or a published one such as CDNOW) through
Online Retail's protocol; its mapping makes each purchase an ``order`` event, as
``examples/onlineretail/mapping.yaml`` does. Without closed label windows before the cutoff
(a horizon as long as the history), the strictly point-in-time rows are left out.

Needs the ``btyd`` extra (PyMC-Marketing).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import classical, contract, importer, models
from leadscore.features import job
from leadscore.training import btyd, dataset, evaluate, vocabulary
from leadscore.training.trainer import fit

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CUTOFF = pd.Timestamp("2011-07-01", tz="UTC")
HORIZON = 150.0
MAPPINGS = Path(__file__).resolve().parents[1] / "examples"
#: the invoice as the shipped mapping imports it: repeat business of an owner
PURCHASE = "order"


@dataclass(frozen=True)
class TransactionLog:
    """A repeat-purchase question on a transaction log: "buys again within ``horizon`` days
    of ``cutoff``", the log imported by ``mapping`` (its purchases as ``order`` events,
    customers as owners; ``data_dir``: where its files are, else the mapping's own)."""

    name: str
    mapping: Path
    cutoff: pd.Timestamp
    horizon: float
    data_dir: Path | None = None

    @classmethod
    def parse(cls, text: str) -> TransactionLog:
        """``MAPPING.yaml:CUTOFF:HORIZON_DAYS``, e.g. ``my/mapping.yaml:1998-01-01:180``."""
        try:
            mapping, cutoff, horizon = text.rsplit(":", 2)
            return cls(Path(mapping).stem if Path(mapping).stem != "mapping"
                       else Path(mapping).parent.name, Path(mapping),
                       pd.Timestamp(cutoff, tz="UTC"), float(horizon))
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"--log {text!r}: expected MAPPING.yaml:CUTOFF:HORIZON_DAYS ({e})") from None


def online_retail_log(realdata: Path) -> TransactionLog:
    """Online Retail as the shipped mapping imports it (the user's own first step):
    customers as owners from their first invoice, every invoice one ``order`` worth its
    amount, cancellations as ``return`` events."""
    return TransactionLog("Online Retail", MAPPINGS / "onlineretail" / "mapping.yaml", CUTOFF,
                          HORIZON, data_dir=realdata)


def _row(name: str, y: np.ndarray, p_buy: np.ndarray, seconds: float) -> dict:
    m = evaluate.metrics(y, p_buy)
    return {"model": name, "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "ece": m["ece"],
            "ece_floor": evaluate.ece_floor(p_buy), "seconds": seconds}


def transaction_log(log: TransactionLog, seed: int, kind: str, weeks: int | None
                    ) -> pd.DataFrame:
    cutoff, horizon = log.cutoff, log.horizon
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "log"
        importer.run(log.mapping, data, data_dir=log.data_dir)
        ds = contract.load(data, quarantine_dir=Path(tmp) / "q")
        con = ds.con
        spec = models.get("churn").with_horizon(horizon)
        spec = replace(spec, label=replace(spec.label, events=(PURCHASE,)))
        # as `train` does: weekly cutoffs from the warm-up on, here ending at cutoff (or the
        # last `weeks` of them)
        if weeks is None:
            first = dataset.data_start(con) + pd.Timedelta(days=dataset.WARMUP_DAYS)
            weeks = int((cutoff - first).days // spec.cutoff_every_days)
        cutoffs = [cutoff - pd.Timedelta(days=spec.cutoff_every_days * k)
                   for k in range(weeks, -1, -1)]
        feats = job.to_pandas(job.compute(con, cutoffs))
        rows = feats[feats["is_open"] | feats["is_owner"]].reset_index(drop=True).copy()
        end = dataset.observation_end(con).end
        lab = dataset.label_rows(con, rows, spec, end)
        assert not lab["censored"].any(), "the label window passes the data's end"
        rows = rows.assign(label=lab["label"].to_numpy())  # churn: no purchase in the horizon
        # the halves split customers, not rows: half A's rows at every cutoff train, half B
        # at cutoff is scored
        rng = np.random.default_rng(seed)
        ids = np.sort(rows["lead_id"].unique())
        half_a = set(ids[rng.random(len(ids)) < 0.5])
        first = rows["lead_id"].isin(half_a).to_numpy()
        at_cut = (rows["as_of"] == cutoff).to_numpy()
        test_rows = ~first & at_cut
        y_buy = 1 - rows.loc[test_rows, "label"].to_numpy()
        out = []

        summ = btyd.summaries(con, rows, (PURCHASE,))
        fits = {}
        for k in ("bgnbd", "pareto_nbd"):
            t = time.perf_counter()
            fits[k] = btyd.fit(summ[first & at_cut], k, seed)
            p = fits[k].p_purchase(summ[test_rows], horizon)
            out.append(_row(f"{k} (fit on half A)", y_buy, p, time.perf_counter() - t))
        p_buy = fits[kind].p_purchase(summ, horizon)
        p_churn = np.clip(1 - p_buy, 1e-4, 1 - 1e-4)
        u = dataset.lead_share(rows["lead_id"], seed)
        rows = rows.assign(**{
            btyd.COLUMN: p_buy, "btyd_init": np.log(p_churn / (1 - p_churn)),
            "split": np.where(test_rows, "test", np.where(
                ~first, "unused", np.select([u < 0.8, u < 0.9], ["fit", "valid"], "calib")))})

        ts = dataset.TrainingSet(frame=rows, cutoffs=cutoffs, data_end=end, n_censored=0,
                                 split_kind="entity")
        test = ts.part("test")
        variants = {
            f"leadscore LightGBM ({len(cutoffs)} cutoffs)": (spec, None),
            f"  + {kind} as a feature": (
                replace(spec, features=(*spec.features, btyd.COLUMN)), None),
            f"  + {kind} as init_score": (spec, "btyd_init"),
        }
        # the rows above train on half A's label windows up to the cutoff, which overlap half
        # B's scoring window (other customers, the same months); strictly point-in-time, only
        # windows closed by the cutoff train, as a forecast made on that day would be
        closed = (rows["as_of"] + pd.Timedelta(days=horizon) <= cutoff).to_numpy()
        strict = replace(ts, frame=rows.assign(split=np.where(
            test_rows | closed, rows["split"], "unused")))
        n_closed = len(np.unique(rows.loc[closed, "as_of"]))
        variants[f"  windows closed by the cutoff only ({n_closed} cutoffs)"] = (spec, None)
        variants[f"  windows closed by the cutoff, + {kind} as init_score"] = (
            spec, "btyd_init")
        if n_closed == 0:  # a horizon as long as the history before the cutoff
            variants = {k: v for k, v in variants.items()
                        if not k.startswith("  windows closed")}
        if kind == "bgnbd" and n_closed:  # the served start: feature summaries, fits at anchors
            inputs = classical.inputs_for((PURCHASE,))
            fsumm = btyd.feature_summaries(rows, inputs)
            _, anchored = btyd.at_cutoffs_of(fsumm[first], horizon, kind=kind, seed=seed)
            rows = rows.assign(btyd_start=btyd.start_margins(rows, anchored, horizon, inputs))
            ts = replace(ts, frame=rows)
            test = ts.part("test")
            strict = replace(strict, frame=strict.frame.assign(
                btyd_start=rows["btyd_start"].to_numpy()))
            variants["  windows closed by the cutoff, + served bgnbd start (as train)"] = (
                spec, "btyd_start")
        fitted, seconds = {}, {}
        for name, (sp, init) in variants.items():
            t = time.perf_counter()
            fitted[name] = fit(sp, strict if name.startswith("  windows closed") else ts,
                               seed=seed, num_threads=2, init=init)
            p = 1 - fitted[name].predict_proba(test, num_threads=2)
            seconds[name] = time.perf_counter() - t
            out.append(_row(name, y_buy, p, seconds[name]))
        if kind == "bgnbd" and n_closed:  # btyd.use auto: the better on half A's valid leads
            trees = f"  windows closed by the cutoff only ({n_closed} cutoffs)"
            started = "  windows closed by the cutoff, + served bgnbd start (as train)"
            t = time.perf_counter()
            choice = btyd.choose_start(dataset.held_out(strict.frame), fitted[trees],
                                       fitted[started], num_threads=2,
                                       seed=seed)
            kept = fitted[started if choice.use_start else trees]
            p = 1 - kept.predict_proba(test, num_threads=2)
            out.append({**_row("  windows closed by the cutoff, btyd auto as train", y_buy, p,
                               seconds[trees] + seconds[started] + time.perf_counter() - t),
                        "auto_start": float(choice.use_start)})
    table = pd.DataFrame(out)
    table.insert(0, "data set", f"{log.name}: buys again within {horizon:g} d of "
                 f"{cutoff.date()}")
    table["n_test"] = len(y_buy)
    table["positives"] = int(y_buy.sum())
    return table


def _table(rows: list[dict], name: str, y: np.ndarray) -> pd.DataFrame:
    """One data set's rows of the printed table, with its holdout's size and positives."""
    table = pd.DataFrame(rows)
    table.insert(0, "data set", name)
    table["n_test"] = len(y)
    table["positives"] = int(y.sum())
    return table


def _plain_lightgbm(train: pd.DataFrame, test: pd.DataFrame, columns: list[str],
                    seed: int) -> np.ndarray:
    """What a data scientist tries first: LightGBM's defaults on the given columns, text as
    categories (the training rows' values; others missing)."""
    import lightgbm as lgb

    def frame(df: pd.DataFrame) -> pd.DataFrame:
        out = df[columns].copy()
        for c in columns:
            if not pd.api.types.is_numeric_dtype(out[c]):
                cats = sorted(train[c].dropna().astype(str).unique())
                v = out[c].astype("object")
                out[c] = pd.Categorical(v.where(v.isin(cats), None), categories=cats)
        return out

    clf = lgb.LGBMClassifier(random_state=seed, verbose=-1, n_jobs=2)
    clf.fit(frame(train), train["label"].to_numpy())
    return clf.predict_proba(frame(test))[:, 1]


def olist(realdata: Path, seed: int) -> pd.DataFrame:
    """The Olist funnel: does a marketing-qualified lead close within 30 days? leadscore's
    conversion model trained as ``train`` does (weekly cutoffs, out-of-time holdout) against
    a plain LightGBM on the lead's own columns (origin, landing page, age), same rows."""
    mapping = MAPPINGS / "olist" / "mapping.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        importer.run(mapping, Path(tmp) / "olist", data_dir=realdata)
        ds = contract.load(Path(tmp) / "olist", quarantine_dir=Path(tmp) / "q")
        spec = models.get("conversion")
        ts = dataset.build(ds.con, spec, split="time", seed=seed)
        leads = pd.read_parquet(Path(tmp) / "olist" / "leads.parquet",
                                columns=["lead_id", "landing_page_id"])
        frame = ts.frame.merge(leads, on="lead_id", how="left")
        test = frame[frame["split"] == "test"]
        y = test["label"].to_numpy()
        out = []
        t = time.perf_counter()
        p = _plain_lightgbm(frame[frame["split"].isin(["fit", "valid", "calib"])], test,
                            ["source", "landing_page_id", "lead_age_days"], seed)
        out.append(_row("plain LightGBM on the lead's columns", y, p, time.perf_counter() - t))
        # the vocabulary as `train` chooses it by default, and with the landing page named
        # (495 distinct pages: more than `auto` takes as a category)
        before = vocabulary.vocabulary_cutoff(ts.frame, ts.split_kind)
        for label, columns in (("auto vocabulary", "auto"),
                               ("+ landing_page_id named", ["landing_page_id"])):
            types = vocabulary.choose_event_types(ds.con, before, 10, 20)
            cols = vocabulary.choose_lead_columns(ds.con, before, columns)
            frame_v, names = vocabulary.add_features(ds.con, ts.frame, types, cols)
            ts_v = replace(ts, frame=frame_v)
            spec_v = replace(spec, features=(*spec.features, *names))
            t = time.perf_counter()
            fr = fit(spec_v, ts_v, seed=seed, num_threads=2)
            out.append(_row(f"leadscore conversion ({len(ts.cutoffs)} cutoffs, {label})", y,
                            fr.predict_proba(ts_v.part("test"), num_threads=2),
                            time.perf_counter() - t))
    return _table(out, "Olist: closes within 30 d (out-of-time holdout)", y)


#: the simulator's steps under a bank-like funnel's own names: none is in the standard list,
#: so everything the model knows of them comes from the data-driven vocabulary
OWN_STEP_NAMES = {
    "page_view": "site_visit", "config_view": "brochure_download",
    "finance_calc": "loan_preapproval", "price_inquiry": "offer_requested",
    "test_drive_booked": "appointment_set", "test_drive_done": "appointment_kept",
    "store_visit": "branch_visit", "call_inbound": "callback_request",
    "wechat_reply": "chat_reply",
}


def step_counts(con, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per row (lead, cutoff): how many events of each type the lead had before the cutoff
    (and ingested by then), over its whole history: the plain model's input."""
    con.register("_rows", rows[["lead_id", "as_of"]].drop_duplicates())
    try:
        long = con.execute("""
            SELECT r.lead_id, r.as_of, e.event_type, count(*) AS n
            FROM _rows r JOIN events e ON e.lead_id = r.lead_id AND e.ts < r.as_of
                 AND coalesce(e.ingested_at, e.ts) <= r.as_of
            GROUP BY ALL""").df()
    finally:
        con.unregister("_rows")
    wide = long.pivot_table(index=["lead_id", "as_of"], columns="event_type", values="n",
                            fill_value=0, aggfunc="sum")
    names = [f"n_{c}" for c in wide.columns]
    wide.columns = names
    out = rows[["lead_id", "as_of"]].merge(wide.reset_index(), on=["lead_id", "as_of"],
                                           how="left")
    return out[names].fillna(0), names


def own_step_names(seed: int) -> pd.DataFrame:
    """A funnel with its own step names: the simulator's events renamed (``OWN_STEP_NAMES``),
    leadscore's conversion model with the vocabulary ``train`` chooses, against a plain
    LightGBM on per-step counts over the whole history at the same cutoffs (pooled), same
    out-of-time holdout."""
    from leadscore import simulate as sim

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sim"
        sim.write(sim.simulate(sim.SimConfig(n_leads=4000, days=150, seed=seed + 202)), data)
        ev = pd.read_parquet(data / "events.parquet")
        ev["event_type"] = ev["event_type"].replace(OWN_STEP_NAMES)
        ev.to_parquet(data / "events.parquet", index=False)
        ds = contract.load(data, quarantine_dir=Path(tmp) / "q")
        spec = models.get("conversion")
        ts = dataset.build(ds.con, spec, split="time", seed=seed)
        counts, names = step_counts(ds.con, ts.frame)
        frame = pd.concat([ts.frame.reset_index(drop=True), counts], axis=1)
        train = frame[frame["split"].isin(["fit", "valid", "calib"])]
        test = frame[frame["split"] == "test"]
        y = test["label"].to_numpy()
        out = []
        t = time.perf_counter()
        p = _plain_lightgbm(train, test, [*names, "source", "lead_age_days"], seed)
        out.append(_row("plain LightGBM on per-step counts (whole history)", y, p,
                        time.perf_counter() - t))
        before = vocabulary.vocabulary_cutoff(ts.frame, ts.split_kind)
        types = vocabulary.choose_event_types(ds.con, before, 10, 20)
        frame_v, vnames = vocabulary.add_features(ds.con, ts.frame, types, {})
        spec_v = replace(spec, features=(*spec.features, *vnames))
        t = time.perf_counter()
        fr = fit(spec_v, replace(ts, frame=frame_v), seed=seed, num_threads=2)
        p = fr.predict_proba(replace(ts, frame=frame_v).part("test"), num_threads=2)
        out.append(_row(f"leadscore conversion ({len(types)} own steps learnt)", y, p,
                        time.perf_counter() - t))
    return _table(out, "Simulator, steps under their own names: orders within 30 d", y)


def simulator(seed: int) -> pd.DataFrame:
    """A simulated dealer group: leadscore's conversion and churn models against the
    simulator's oracle probability on the same holdout rows; churn also boosted from the
    classical start as ``train`` does with ``btyd.use: init_score``, and with ``auto``
    choosing between the two on the valid part (its own functions)."""
    from leadscore import simulate as sim
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import (
        _btyd_baseline,
        _btyd_input,
        _evaluation_fit,
        load_truth,
    )

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sim"
        sim.write(sim.simulate(sim.SimConfig(n_leads=4000, days=150, seed=seed + 101)), data)
        ds = contract.load(data, quarantine_dir=Path(tmp) / "q")
        truth = load_truth(data)
        out = []
        for name, use in (("conversion", None), ("churn", None), ("churn", "init_score"),
                          ("churn", "auto")):
            spec = models.get(name)
            ts = dataset.build(ds.con, spec, split="auto", seed=seed)
            init = start = fitted = choice = None
            t = time.perf_counter()
            cfg = ExperimentConfig(model=name, seed=seed, btyd={"use": use or "off"})
            if use is not None:
                _, fitted = _btyd_baseline(ds.con, spec, cfg, ts)
                spec, init, _, start = _btyd_input(spec, cfg, ts, fitted)
            test = ts.part("test")
            y = test["label"].to_numpy()
            fr, _, _, _, choice = _evaluation_fit(spec, ts, cfg, 2, init, start, fitted)
            p = fr.predict_proba(test, num_threads=2)
            label = f"leadscore {name}" + (f" (btyd.use {use})" if use else "")
            row = _row(label, y, p, time.perf_counter() - t)
            if choice is not None:
                row["auto_start"] = float(choice.use_start)
            o = evaluate.oracle(test, truth, spec.truth_column, p)
            out.append({**row, "n_test": len(y), "positives": int(y.sum()),
                        "oracle_auc": o.get("oracle_auc", np.nan),
                        "oracle_gap": o.get("oracle_gap", np.nan)})
    table = pd.DataFrame(out)
    table.insert(0, "data set", "Simulator (4,000 leads, 150 days)")
    return table


def horizons_on_simulator(seed: int) -> pd.DataFrame:
    """Time to order on a simulated world (6,000 leads, 300 days, out-of-time holdout): per
    horizon, the trees taught by its own labels, by the 30-day labels of the same rows (the
    fair yardstick: same rows and period), and the one ``train`` keeps
    (:func:`leadscore.training.horizons.choose`), all on the horizon's own holdout labels."""
    from leadscore import simulate as sim
    from leadscore.training import horizons

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sim"
        sim.write(sim.simulate(sim.SimConfig(n_leads=6000, days=300, seed=seed + 303)), data)
        ds = contract.load(data, quarantine_dir=Path(tmp) / "q")
        for name in ("order-7d", "order-15d", "order-90d"):
            spec = models.get(name)
            ts = dataset.build(ds.con, spec, split="time", seed=seed)
            y30 = horizons.labels_30d(ds.con, ts.frame, ts.data_end)
            ts.add_columns(**{horizons.LABEL_30D: y30})
            test = ts.part("test")
            y = test["label"].to_numpy()
            t = time.perf_counter()
            own = fit(spec, ts, seed=seed, num_threads=2)
            r30 = fit(spec, ts, seed=seed, num_threads=2, boost_label=horizons.LABEL_30D)
            choice = horizons.choose(dataset.held_out(ts.frame), own, r30, 2, seed)
            took = time.perf_counter() - t
            for label, fr in ((f"{name}: own labels", own),
                              (f"{name}: 30-day ranking, same rows", r30),
                              (f"{name}: kept as train", r30 if choice.borrowed else own)):
                row = _row(label, y, fr.predict_proba(test, num_threads=2), took)
                if label.endswith("as train"):
                    row["kept_30d"] = float(choice.borrowed)
                out.append({**row, "n_test": len(y), "positives": int(y.sum())})
    table = pd.DataFrame(out)
    table.insert(0, "data set", "Simulator, time to order (6,000 leads, 300 days)")
    return table


def _mean(parts: list[pd.DataFrame], what: str, show: bool = False) -> pd.DataFrame:
    """Per-seed tables averaged per (data set, model), in their order (``show``: print each
    seed's ROC AUC first)."""
    per_seed = pd.concat(parts, ignore_index=True)
    if show:
        auc = pd.DataFrame({"model": parts[0]["model"].to_numpy(),
                            **{f"seed {i}": p["roc_auc"].to_numpy()
                               for i, p in enumerate(parts)}})
        print(auc.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    cols = [c for c in per_seed.columns if c not in ("data set", "model")]
    table = per_seed.groupby(["data set", "model"], sort=False, as_index=False)[cols].mean()
    table["data set"] = table["data set"] + f" ({what})"
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--btyd", choices=btyd.KINDS, default="bgnbd",
                    help="the classical model LightGBM's variants use")
    ap.add_argument("--weeks", type=int, default=None,
                    help="weekly training cutoffs before 2011-07-01 (0: that cutoff alone; "
                         "default: every one after the warm-up, as train takes them)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="random halves of the Online Retail customers, and simulated "
                         "worlds, averaged")
    ap.add_argument("--only", default="online_retail,olist,own_steps,simulator,horizons",
                    help="comma-separated parts to run")
    ap.add_argument("--log", type=TransactionLog.parse, action="append", default=[],
                    metavar="MAPPING.yaml:CUTOFF:HORIZON_DAYS",
                    help="another transaction log, imported by its mapping (purchases as "
                         "'order' events), under Online Retail's protocol; repeatable")
    ap.add_argument("--per-seed", action="store_true",
                    help="print each split's and world's ROC AUC before the means")
    a = ap.parse_args()
    only = set(a.only.split(","))
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    seeds = range(a.seed, a.seed + a.seeds)
    tables = []
    logs = ([online_retail_log(a.realdata)] if "online_retail" in only else []) + a.log
    for log in logs:
        tables.append(_mean([transaction_log(log, seed, a.btyd, a.weeks) for seed in seeds],
                            f"mean of {a.seeds} splits", a.per_seed))
    if "olist" in only:
        tables.append(olist(a.realdata, a.seed))
    if "own_steps" in only:
        tables.append(own_step_names(a.seed))
    if "simulator" in only:
        tables.append(_mean([simulator(seed) for seed in seeds],
                            f"mean of {a.seeds} worlds", a.per_seed))
    if "horizons" in only:
        tables.append(_mean([horizons_on_simulator(seed) for seed in seeds],
                            f"mean of {a.seeds} worlds", a.per_seed))
    table = pd.concat(tables, ignore_index=True)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("published anchor: Pareto/NBD about 0.73 ROC AUC; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
