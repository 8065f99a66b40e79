"""Backtests a sales manager reads: a registered model's scores at a past cutoff against what
the leads then did, per dealer and per lead source.

Why a module: a model card's holdout metrics are the data scientist's; a dealer's manager asks
whether the grades the advisors were given held for *their* leads. The rows, scores and labels
come from the paths training and serving use (the feature job, the scorer, the model's own
label definition and horizon), and the metrics from :mod:`leadscore.training.evaluate`, so a
backtest cannot disagree with them by construction. Rows whose label window is not fully
observed are censored: left out and counted, never negatives.

The grade a chart is drawn by: ``intent_grade`` (H/A/B/C/N) for the 30-day conversion model,
``contact_urgency`` for the contact model (the scorer's grades), and score deciles (D1: the
highest tenth) for a model the scorer gives no grade column (churn, the order-Nd horizons).
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import atomic, contract, registry
from leadscore import lang as language
from leadscore.features import job
from leadscore.models.spec import ModelSpec
from leadscore.scoring.intent import GRADES, HORIZON_MODELS, IntentRules
from leadscore.scoring.scorer import PROBA_COLUMN, URGENCY, Scorer
from leadscore.training import dataset, evaluate

log = logging.getLogger(__name__)

JSON_FILE = "backtest.json"
HTML_FILE = "backtest.html"
#: groups with fewer scored (uncensored) leads than this are flagged ``small``
MIN_LEADS = 30
DECILES = 10
#: the contact model's grades, most urgent first
URGENCY_ORDER = tuple(dict.fromkeys(URGENCY.values()))
MISSING = "(missing)"


class BacktestError(ValueError):
    """A backtest that cannot be run as asked (the message says why and what to change)."""


_WORDS = {
    language.EN: {
        "title": "Backtest: {model} model, version {version}",
        "sub": "Leads open at {as_of}, outcomes in the {days:g} days after (data observed "
               "until {end}). {censored} leads left out: their window was not fully observed.",
        "summary": "Summary", "dealer": "Dealer", "source": "Lead source", "n": "Leads",
        "positives": "Positives", "auc": "AUC", "ece": "Calibration error",
        "rate": "Realised rate", "pred": "Predicted rate", "overall": "All dealers",
        "small": "fewer than {k} leads: read with care", "grade": "Grade",
        "legend_bar": "realised rate", "legend_mark": "mean predicted rate",
        "no_rows": "no leads", "by_source": "By lead source", "by_dealer": "By dealer",
        "kind": {"intent_grade": "intent grade (H: expected within 7 days … N: not soon)",
                 "contact_urgency": "contact urgency",
                 "decile": "score decile (D1: the highest tenth)"},
        "grade_by": "Bars by {kind}.",
        "urgency": {"now": "now", "within_3_days": "within 3 days", "nurture": "nurture"},
        "model": {"conversion": "conversion", "contact": "contact", "churn": "churn",
                  "order-7d": "order in 7 days", "order-15d": "order in 15 days",
                  "order-90d": "order in 90 days"},
    },
    language.ZH: {
        "title": "回测：{model}模型，版本 {version}",
        "sub": "{as_of} 时未结线索，结果取其后 {days:g} 天（数据观察至 {end}）。"
               "{censored} 条线索未计入：其观察窗口不完整。",
        "summary": "汇总", "dealer": "经销商", "source": "线索来源", "n": "线索数",
        "positives": "正例数", "auc": "AUC", "ece": "校准误差",
        "rate": "实际比例", "pred": "预测比例", "overall": "全部经销商",
        "small": "线索少于 {k} 条，仅供参考", "grade": "等级",
        "legend_bar": "实际比例", "legend_mark": "平均预测比例",
        "no_rows": "无线索", "by_source": "按线索来源", "by_dealer": "按经销商",
        "kind": {"intent_grade": "意向等级（H：预计 7 天内下单 … N：近期不会）",
                 "contact_urgency": "联系紧迫度",
                 "decile": "评分十分位（D1：最高的十分之一）"},
        "grade_by": "柱形按{kind}分组。",
        "urgency": {"now": "立即", "within_3_days": "3 天内", "nurture": "培育"},
        "model": {"conversion": "成交", "contact": "主动联系", "churn": "流失",
                  "order-7d": "7 天内下单", "order-15d": "15 天内下单",
                  "order-90d": "90 天内下单"},
    },
}


@dataclass
class Result:
    report: dict
    json_path: Path
    html_path: Path


# -- the model and its label -------------------------------------------------------------------
def model_spec(model: str, run_id: str) -> ModelSpec:
    """The spec the version was trained with: its run's ``config.json`` (horizon, engagement
    events, exclusions), else the model's default spec at the run's ``horizon_days``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from leadscore import models
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import resolve_spec

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.json")
        cfg = ExperimentConfig.model_validate_json(Path(local).read_text())
        return resolve_spec(cfg)
    except (MlflowException, OSError, ValueError) as e:
        log.warning("run %s: no readable config.json (%s); the default %s spec", run_id, e,
                    model)
    spec = models.get(model)
    try:
        days = registry.client().get_run(run_id).data.params.get("horizon_days")
    except MlflowException:
        days = None
    return spec.with_horizon(float(days)) if days else spec


def scorer_for(model: str, version: str, intent: IntentRules | None = None) -> Scorer:
    """A scorer with the given version; for the conversion model also the champion
    time-to-order horizons, so its intent grades are the ones serving writes."""
    models = {model: registry.load_version(model, version)}
    if model == "conversion":
        for other in HORIZON_MODELS.values():
            if other != model and (got := registry.load(other)) is not None:
                models[other] = got[0]
    return Scorer(models, intent=intent)


def resolve_version(model: str, version: str | None) -> registry.Resolved:
    """The registered version to backtest: ``version``, else the champion."""
    from mlflow.exceptions import MlflowException

    name = registry.registered_name(model)
    if version is None:
        got = registry.resolve(model, registry.CHAMPION)
        if got is None:
            raise BacktestError(f"{name} has no champion: train one or give --version")
        return got
    try:
        mv = registry.client().get_model_version(name, str(version))
    except MlflowException as e:
        raise BacktestError(f"{name} has no version {version!r}") from e
    return registry.Resolved(name=name, version=str(mv.version), run_id=mv.run_id, alias="")


# -- rows, scores, labels ----------------------------------------------------------------------
def scored_rows(ds: contract.Dataset, as_of: pd.Timestamp, model: str, spec: ModelSpec,
                scorer: Scorer, data_end: pd.Timestamp) -> tuple[pd.DataFrame, int]:
    """The model's entities at ``as_of`` with score ``p``, ``grade``, ``label`` and
    ``source``; censored rows (window past ``data_end``) left out, their count returned
    (per dealer in ``attrs``). Every row is censored or none at one cutoff, as the window
    is the same length for all; the filter is by row so it stays right if that changes."""
    if spec.entity not in ("open", "open_or_owner"):
        raise BacktestError(f"{model}: a per-attempt model ({spec.entity}) has no rows at a "
                            "cutoff to backtest; choose a lead model")
    feats = job.to_pandas(job.compute(ds.con, [as_of], scorer.job_features),
                          scorer.job_features)
    keep = feats["is_open"] if spec.entity == "open" else feats["is_open"] | feats["is_owner"]
    feats = feats[keep.to_numpy()].reset_index(drop=True)
    if feats.empty:
        raise BacktestError(f"no {spec.entity.replace('_', ' ')} leads at {as_of}: nothing "
                            "to backtest (is --as-of inside the data?)")
    out = scorer.score(feats, reasons=0)
    column = PROBA_COLUMN[model]
    rows = pd.DataFrame({"lead_id": out["lead_id"], "dealer_id": out["dealer_id"],
                         "as_of": out["as_of"],
                         "p": pd.to_numeric(out[column], errors="coerce").astype("float64")})
    rows["grade"], kind = grades(model, out, rows["p"])
    lab = dataset.label_rows(ds.con, rows, spec, data_end)
    n_censored = int(lab["censored"].sum())
    if n_censored == len(rows):
        latest = (data_end - pd.Timedelta(days=spec.label.days)).floor("D")
        raise BacktestError(
            f"--as-of {as_of} is too late for the {model} model's {spec.label.days:g}-day "
            f"horizon: every window passes the end of observation ({data_end}); use --as-of "
            f"on or before {latest.date()}")
    rows["label"] = lab["label"].to_numpy()
    censored = lab["censored"].to_numpy()
    by_dealer = rows.loc[censored, "dealer_id"].astype(str).value_counts()
    rows = rows[~censored].reset_index(drop=True)
    sources = ds.con.sql("SELECT lead_id, source FROM leads").df()
    sources = sources.assign(lead_id=sources["lead_id"].astype(str)).drop_duplicates("lead_id")
    rows = rows.merge(sources, on="lead_id", how="left")
    rows.attrs["grade_kind"] = kind
    rows.attrs["censored_by_dealer"] = {str(k): int(v) for k, v in by_dealer.items()}
    return rows, n_censored


def grades(model: str, out: pd.DataFrame, p: pd.Series) -> tuple[pd.Series, str]:
    """The grade each row is charted by, and which kind it is (see the module docstring)."""
    if model == "conversion" and out["intent_grade"].notna().any():
        return out["intent_grade"].astype("object"), "intent_grade"
    if model == "contact" and out["contact_urgency"].notna().any():
        return out["contact_urgency"].astype("object"), "contact_urgency"
    return deciles(p), "decile"


def deciles(p: pd.Series) -> pd.Series:
    """D1 (highest scores) … D10; tied scores share a decile, so a plateau of the isotonic
    calibration may leave fewer than ten."""
    ranked = p.rank(method="min", ascending=False)
    k = np.ceil(ranked / len(p) * DECILES).clip(1, DECILES)
    return pd.Series([f"D{int(v)}" if v == v else None for v in k], index=p.index,
                     dtype="object")


def grade_order(kind: str, present) -> list[str]:
    if kind == "intent_grade":
        base = list(GRADES)
    elif kind == "contact_urgency":
        base = list(URGENCY_ORDER)
    else:
        base = [f"D{i}" for i in range(1, DECILES + 1)]
    return [g for g in base if g in set(present)]


# -- metrics -------------------------------------------------------------------------------------
def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def group_metrics(rows: pd.DataFrame, kind: str, min_leads: int,
                  n_censored: int | None = None) -> dict:
    """n, positives, AUC (null with one class), ECE, mean predicted, realised rate and the
    rate by grade of one group of rows; metrics by :func:`evaluate.metrics`."""
    y, p = rows["label"].to_numpy().astype(int), rows["p"].to_numpy()
    out: dict = {"n": len(rows), "positives": int(y.sum()), "small": len(rows) < min_leads}
    if n_censored is not None:
        out["n_censored"] = int(n_censored)
    if len(rows):
        m = evaluate.metrics(y, p)
        out.update(roc_auc=_num(m["roc_auc"]), ece=_num(m["ece"]),
                   mean_predicted=_num(float(p.mean())), realised_rate=_num(float(y.mean())))
    else:
        out.update(roc_auc=None, ece=None, mean_predicted=None, realised_rate=None)
    by = {}
    for g in grade_order(kind, rows["grade"].dropna().unique()):
        d = rows[(rows["grade"] == g).to_numpy()]
        by[g] = {"n": len(d), "realised_rate": _num(float(d["label"].mean())),
                 "mean_predicted": _num(float(d["p"].mean()))}
    out["rate_by_grade"] = by
    return out


def _groups(rows: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    key = rows[column].astype("object").where(rows[column].notna(), MISSING).astype(str)
    return {str(g): rows[(key == g).to_numpy()] for g in sorted(key.unique())}


def report(rows: pd.DataFrame, n_censored: int, min_leads: int, head: dict) -> dict:
    kind = rows.attrs.get("grade_kind", "decile")
    censored_by_dealer = rows.attrs.get("censored_by_dealer", {})
    return {
        **head, "grade_kind": kind, "min_leads": min_leads,
        "overall": group_metrics(rows, kind, min_leads, n_censored),
        "dealers": {d: group_metrics(g, kind, min_leads, censored_by_dealer.get(d, 0))
                    for d, g in _groups(rows, "dealer_id").items()},
        "sources": {s: group_metrics(g, kind, min_leads)
                    for s, g in _groups(rows, "source").items()},
    }


# -- the page --------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _when(ts: str) -> str:
    """A timestamp as a manager reads it: the date, and the UTC time when not midnight."""
    t = pd.Timestamp(ts)
    t = t.tz_convert("UTC") if t.tzinfo is not None else t
    return str(t.date()) if t == t.normalize() else t.strftime("%Y-%m-%d %H:%M UTC")


def _label(kind: str, grade: str, w: dict) -> str:
    return w["urgency"].get(grade, grade) if kind == "contact_urgency" else grade


def chart(group: dict, kind: str, w: dict, title: str) -> str:
    """One inline SVG bar chart: a bar of the realised rate per grade and a mark at the mean
    predicted rate, both on one 0…max scale; every text escaped."""
    e = html.escape
    by = group["rate_by_grade"]
    width, height, left, top, bottom = 520, 230, 48, 30, 40
    plot_h = height - top - bottom
    vals = [v for g in by.values() for v in (g["realised_rate"], g["mean_predicted"])
            if v is not None]
    scale = max([*vals, 0.01]) * 1.15
    scale = min(1.0, math.ceil(scale * 20) / 20)
    slot = (width - left - 10) / max(len(by), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{e(title)}">',
             f'<text x="{left}" y="18" class="ct">{e(title)}</text>']
    for i in range(5):  # gridlines and the rate axis
        v = scale * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     'class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="ax" '
                     f'text-anchor="end">{e(f"{v:.0%}")}</text>')
    for i, (g, d) in enumerate(by.items()):
        x = left + i * slot
        bw = slot * 0.6
        r, pr = d["realised_rate"], d["mean_predicted"]
        tip = (f"{_label(kind, g, w)}: {w['n']} {d['n']}, {w['rate']} {_pct(r)}, "
               f"{w['pred']} {_pct(pr)}")
        if r is not None:
            bh = plot_h * min(r / scale, 1.0)
            parts.append(f'<rect x="{x + slot * 0.2:.1f}" y="{top + plot_h - bh:.1f}" '
                         f'width="{bw:.1f}" height="{bh:.1f}" class="bar">'
                         f'<title>{e(tip)}</title></rect>')
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{top + plot_h - bh - 3:.1f}" '
                         f'class="val" text-anchor="middle">{e(_pct(r))}</text>')
        if pr is not None:
            my = top + plot_h - plot_h * min(pr / scale, 1.0)
            parts.append(f'<line x1="{x + slot * 0.12:.1f}" x2="{x + slot * 0.88:.1f}" '
                         f'y1="{my:.1f}" y2="{my:.1f}" class="pred"><title>{e(tip)}</title>'
                         '</line>')
        parts.append(f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 15}" class="ax" '
                     f'text-anchor="middle">{e(_label(kind, g, w))}</text>')
        parts.append(f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 29}" class="ax" '
                     f'text-anchor="middle">n={d["n"]}</text>')
    if not by:
        parts.append(f'<text x="{width / 2}" y="{top + plot_h / 2}" class="ax" '
                     f'text-anchor="middle">{e(w["no_rows"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
p.sub{color:#555;margin:0 0 12px;max-width:70em}
table{border-collapse:collapse;margin:8px 0}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.small td{color:#999}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px}
.card p{margin:2px 0 0;font-size:13px;color:#555}
.legend{font-size:13px;color:#555}
.chart .ct{font-size:14px;font-weight:600}
.chart .ax{font-size:11px;fill:#555}
.chart .val{font-size:11px;fill:#222}
.chart .grid{stroke:#eee}
.chart .bar{fill:#4a7bb7}
.chart .pred{stroke:#d9822b;stroke-width:3}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 12px}
"""


def _table(groups: dict[str, dict], first: str, w: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in (first, w["n"], w["positives"], w["rate"],
                                                   w["pred"], w["auc"], w["ece"]))
    body = []
    for name, g in groups.items():
        cls = ' class="small"' if g["small"] else ""
        note = f' title="{e(w["small"].format(k=g["min_leads"]))}"' if g["small"] else ""
        body.append(f"<tr{cls}{note}><td>{e(name)}</td><td>{g['n']:,}</td>"
                    f"<td>{g['positives']:,}</td><td>{e(_pct(g['realised_rate']))}</td>"
                    f"<td>{e(_pct(g['mean_predicted']))}</td><td>{e(_fmt(g['roc_auc']))}</td>"
                    f"<td>{e(_fmt(g['ece']))}</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(rep: dict, lang: str) -> str:
    """backtest.html: one self-contained page (inline SVG and CSS, no script, no link
    outside it): the summary table, a chart per dealer, the table per lead source."""
    lang = language.check(lang, "lang")
    w, e, kind = _WORDS[lang], html.escape, rep["grade_kind"]
    k = rep["min_leads"]
    with_k = {n: {**g, "min_leads": k} for n, g in rep["dealers"].items()}
    summary = {w["overall"]: {**rep["overall"], "min_leads": k}, **with_k}
    sources = {n: {**g, "min_leads": k} for n, g in rep["sources"].items()}
    cards = []
    for name, g in rep["dealers"].items():
        title = f"{w['dealer']} {name}"
        note = (f"{w['n']} {g['n']:,} · {w['positives']} {g['positives']:,} · {w['auc']} "
                f"{_fmt(g['roc_auc'])} · {w['ece']} {_fmt(g['ece'])}")
        small = f"<p>⚠ {e(w['small'].format(k=k))}</p>" if g["small"] else ""
        cards.append(f'<div class="card">{chart(g, kind, w, title)}<p>{e(note)}</p>'
                     f"{small}</div>")
    model_name = w["model"].get(rep["model"], rep["model"])
    sub = w["sub"].format(as_of=_when(rep["as_of"]), days=rep["horizon_days"],
                          end=_when(rep["observed_until"]),
                          censored=f"{rep['overall']['n_censored']:,}")
    legend = (f'<p class="legend">{e(w["grade_by"].format(kind=w["kind"][kind]))}'
              f'<span class="sw" style="background:#4a7bb7"></span>{e(w["legend_bar"])}'
              f'<span class="sw" style="background:#d9822b;height:3px"></span>'
              f'{e(w["legend_mark"])}</p>')
    return (f'<!DOCTYPE html>\n<html lang="{e(lang)}"><head><meta charset="utf-8">'
            f"<title>{e(w['title'].format(model=model_name, version=rep['version']))}</title>"
            f"<style>{_STYLE}</style></head><body>"
            f"<h1>{e(w['title'].format(model=model_name, version=rep['version']))}</h1>"
            f'<p class="sub">{e(sub)}</p>'
            f"<h2>{e(w['summary'])}</h2>{_table(summary, w['dealer'], w)}"
            f"<h2>{e(w['by_dealer'])}</h2>{legend}<div class=\"charts\">{''.join(cards)}</div>"
            f"<h2>{e(w['by_source'])}</h2>{_table(sources, w['source'], w)}"
            "</body></html>\n")


# -- the whole run -------------------------------------------------------------------------------
def run(data: Path, as_of: pd.Timestamp, model: str, out: Path, *, version: str | None = None,
        min_leads: int = MIN_LEADS, lang: str = language.EN, observed_until=None,
        intent: IntentRules | None = None, log_to_mlflow: bool = False) -> Result:
    """Score the entities at ``as_of`` with the version, label them from the data after it,
    write backtest.json and backtest.html to ``out`` (and to the version's run when asked)."""
    lang = language.check(lang, "lang")
    if model not in PROBA_COLUMN:
        raise BacktestError(f"{model}: only models with a probability per lead can be "
                            f"backtested ({', '.join(PROBA_COLUMN)})")
    res = resolve_version(model, version)
    spec = model_spec(model, res.run_id)
    scorer = scorer_for(model, res.version, intent)
    ds = contract.load(data, quarantine_dir=Path(data) / "quarantine")
    end = dataset.observation_end(ds.con, observed_until).end
    rows, n_censored = scored_rows(ds, as_of, model, spec, scorer, end)
    head = {"model": model, "registered_name": res.name, "version": res.version,
            "run_id": res.run_id, "as_of": str(as_of), "observed_until": str(end),
            "horizon_days": spec.label.days, "label": spec.label.describe(),
            "entity": spec.entity}
    rep = report(rows, n_censored, min_leads, head)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / JSON_FILE, out / HTML_FILE
    atomic.write_text(json_path, json.dumps(rep, indent=1, ensure_ascii=False))
    atomic.write_text(html_path, page(rep, lang))
    if log_to_mlflow:
        where = f"backtest/{as_of.date()}"
        c = registry.client()
        c.log_artifact(res.run_id, str(json_path), where)
        c.log_artifact(res.run_id, str(html_path), where)
    return Result(rep, json_path, html_path)

