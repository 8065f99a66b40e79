"""Real data against its classical anchor, measured in the same run (issue 24, item 6; started).

Online Retail (UCI, ``../shared/realdata/onlineretail.csv.gz``): "buys again within 150 days of
2011-07-01". The customers are split in two random halves (seeded); BG/NBD and Pareto/NBD are
fitted on one half and every model is scored on the other; LightGBM on leadscore's churn
features at the cutoff is trained on the first half's customers, alone, with the classical
probability as a feature, and boosted from the classical margin (``init_score``). Prints ROC
AUC, PR-AUC ("buys again" as the positive class) and the expected calibration error (10 bins).

    PYTHONPATH=. python benchmarks/real_data.py [--realdata DIR] [--seed S] [--btyd bgnbd]

Needs the ``btyd`` extra (PyMC-Marketing). Still to come: the Olist funnel against a plain
LightGBM on its columns, the simulator against its oracle.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import contract, models
from leadscore.features import job
from leadscore.training import btyd, dataset, evaluate
from leadscore.training.trainer import fit

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CUTOFF = pd.Timestamp("2011-07-01", tz="UTC")
HORIZON = 150.0
#: the invoice as the contract sees it: repeat business of an owner
PURCHASE = "service_visit"


def onlineretail_contract(csv: Path, out: Path) -> Path:
    """Online Retail as contract files: a customer is an owner (an ``order`` at the first
    invoice), every invoice a ``service_visit`` worth its amount; cancellations (``C…``),
    lines without a customer and non-positive quantities are left out.

    TODO(issue 24, item 5): replace with ``leadscore import --mapping
    examples/onlineretail/mapping.yaml`` once the importer lands; the mapping must give the
    same leads and events (one purchase event per invoice, owners from the first invoice), and
    this function then goes."""
    df = pd.read_csv(csv, dtype={"InvoiceNo": str, "CustomerID": str, "StockCode": str})
    df = df[df["CustomerID"].notna() & ~df["InvoiceNo"].str.startswith("C")
            & (df["Quantity"] > 0)]
    df = df.assign(ts=pd.to_datetime(df["InvoiceDate"], utc=True),
                   amount=df["Quantity"] * df["UnitPrice"],
                   lead_id="or" + df["CustomerID"].str.replace(".0", "", regex=False))
    inv = df.groupby(["lead_id", "InvoiceNo"], as_index=False).agg(
        ts=("ts", "min"), value=("amount", "sum"), country=("Country", "first"))
    first = inv.sort_values(["ts", "InvoiceNo"]).groupby("lead_id", as_index=False).first()
    leads = pd.DataFrame({"lead_id": first["lead_id"], "dealer_id": "onlineretail",
                          "created_at": first["ts"], "source": first["country"],
                          "tz": "Europe/London"})
    events = pd.concat([
        pd.DataFrame({"lead_id": first["lead_id"], "ts": first["ts"], "event_type": "order",
                      "value": first["value"]}),
        pd.DataFrame({"lead_id": inv["lead_id"], "ts": inv["ts"], "event_type": PURCHASE,
                      "value": inv["value"]}),
    ], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    leads.to_parquet(out / "leads.parquet", index=False)
    events.to_parquet(out / "events.parquet", index=False)
    return out


def _row(name: str, y: np.ndarray, p_buy: np.ndarray, seconds: float) -> dict:
    m = evaluate.metrics(y, p_buy)
    return {"model": name, "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "ece": m["ece"],
            "seconds": seconds}


def online_retail(realdata: Path, seed: int, kind: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        data = onlineretail_contract(realdata / "onlineretail.csv.gz", Path(tmp) / "or")
        ds = contract.load(data, quarantine_dir=Path(tmp) / "q")
        con = ds.con
        spec = models.get("churn").with_horizon(HORIZON)
        spec = replace(spec, label=replace(spec.label, events=(PURCHASE,)))
        feats = job.to_pandas(job.compute(con, [CUTOFF]))
        rows = feats[feats["is_open"] | feats["is_owner"]].reset_index(drop=True).copy()
        end = dataset.observation_end(con).end
        lab = dataset.label_rows(con, rows, spec, end)
        assert not lab["censored"].any(), "the label window passes the data's end"
        rows = rows.assign(label=lab["label"].to_numpy())  # churn: no purchase in the horizon
        rng = np.random.default_rng(seed)
        first = rng.random(len(rows)) < 0.5
        y_buy = 1 - rows.loc[~first, "label"].to_numpy()
        out = []

        summ = btyd.summaries(con, rows, (PURCHASE,))
        fits = {}
        for k in ("bgnbd", "pareto_nbd"):
            t = time.perf_counter()
            fits[k] = btyd.fit(summ[first], k, seed)
            p = fits[k].p_purchase(summ[~first], HORIZON)
            out.append(_row(f"{k} (fit on half A)", y_buy, p, time.perf_counter() - t))
        p_buy = fits[kind].p_purchase(summ, HORIZON)
        p_churn = np.clip(1 - p_buy, 1e-4, 1 - 1e-4)
        u = dataset.lead_share(rows["lead_id"], seed)
        rows = rows.assign(**{
            btyd.COLUMN: p_buy, "btyd_init": np.log(p_churn / (1 - p_churn)),
            "split": np.where(~first, "test",
                              np.select([u < 0.8, u < 0.9], ["fit", "valid"], "calib"))})

        ts = dataset.TrainingSet(frame=rows, cutoffs=[CUTOFF], data_end=end, n_censored=0,
                                 split_kind="entity")
        test = ts.part("test")
        variants = {
            "leadscore LightGBM": (spec, None),
            f"  + {kind} as a feature": (
                replace(spec, features=(*spec.features, btyd.COLUMN)), None),
            f"  + {kind} as init_score": (spec, "btyd_init"),
        }
        for name, (sp, init) in variants.items():
            t = time.perf_counter()
            fr = fit(sp, ts, seed=seed, num_threads=2, init=init)
            p = 1 - fr.predict_proba(test, num_threads=2)
            out.append(_row(name, y_buy, p, time.perf_counter() - t))
    table = pd.DataFrame(out)
    table.insert(0, "data set", "Online Retail: buys again within 150 d of 2011-07-01")
    table["n_test"] = len(y_buy)
    table["positives"] = int(y_buy.sum())
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--btyd", choices=btyd.KINDS, default="bgnbd",
                    help="the classical model LightGBM's variants use")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    table = online_retail(a.realdata, a.seed, a.btyd)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("published anchor: Pareto/NBD about 0.73 ROC AUC; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
