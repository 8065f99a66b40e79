"""One training run end to end: data → training set → fit → evaluate → MLflow → registry."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import contract, models, registry
from leadscore.drift import REFERENCE_KEY
from leadscore.features import catalog
from leadscore.models.spec import ModelSpec
from leadscore.scoring.contact_policy import RulesFile
from leadscore.training import dataset, evaluate, horizons, plots, vocabulary
from leadscore.training.config import ExperimentConfig
from leadscore.training.trainer import FitResult, fit, refit

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    model: str
    run_id: str
    version: str | None
    alias: str | None
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> str:
        clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                 for k, v in self.metrics.items()}
        return json.dumps({"model": self.model, "run_id": self.run_id,
                           "registered_version": self.version, "alias": self.alias,
                           "metrics": clean, "seconds": round(self.seconds, 1)})


def cache_dir() -> Path:
    return Path(os.environ.get("LEADSCORE_CACHE", ".leadscore_cache"))


def load_truth(data_dir: Path, name: str = "truth") -> pd.DataFrame | None:
    """The simulator's truth file, if the data came from the simulator (evaluation only)."""
    p = Path(data_dir) / f"{name}.parquet"
    return pd.read_parquet(p) if p.is_file() else None


def _slot_oracle_truth(data_dir: Path) -> pd.DataFrame | None:
    tc = load_truth(data_dir, "truth_contacts")
    if tc is None:
        return None
    return tc.rename(columns={"ts": "as_of"}).drop_duplicates(["lead_id", "as_of"])


def _policy_metrics(fr, ts, test, data_dir: Path, rules: RulesFile) -> dict[str, float]:
    from leadscore.training import policy_eval

    prop = policy_eval.LoggingPolicy.fit(ts.frame[ts.frame["split"].isin(["fit", "valid",
                                                                            "calib"])])
    return policy_eval.evaluate(fr.model, test, rules, prop,
                                load_truth(data_dir, "truth_leads"),
                                load_truth(data_dir, "truth_contacts"),
                                sample=10_000)  # the DR estimate's standard error ~ 1/sqrt(n)


@dataclass
class _Classical:
    """The run's classical fits (per anchor cutoff) and the catalog features their summaries
    came from (None: from the events in SQL, no whole-history group for the engagement
    events)."""

    fits: list
    inputs: dict[str, str] | None


def _btyd_baseline(con, spec: ModelSpec, cfg: ExperimentConfig, ts: dataset.TrainingSet,
                   ) -> tuple[dict[str, float], _Classical | None]:
    """Churn's classical model: fit at cutoffs of the run (each on the history before its
    own cutoff, no labels), its P(no purchase within the horizon) on the holdout, and its
    metrics as ``btyd_*``. Summaries from the engagement group's whole-history features, as
    serving reads them (:func:`leadscore.classical.inputs_for`), else from the events.
    Skipped with a note when the library is not installed."""
    from leadscore import classical
    from leadscore.training import btyd

    if spec.name != "churn" or cfg.btyd.use == "off":
        return {}, None
    if not btyd.available():
        note = "btyd baseline skipped: PyMC-Marketing not installed (pip install 'leadscore[btyd]')"
        log.warning("%s", note)
        ts.notes.append(note)
        return {}, None
    inputs = classical.inputs_for(spec.label.events)
    if inputs is not None and not set(inputs.values()) <= set(ts.frame.columns):
        inputs = None
    kw = {"kind": cfg.btyd.model, "refits": cfg.btyd.refits, "seed": cfg.seed}
    if inputs is not None:
        p, fits = btyd.at_cutoffs_of(btyd.feature_summaries(ts.frame, inputs),
                                     spec.label.days, **kw)
    else:
        p, fits = btyd.at_cutoffs(con, ts.frame, spec.label.events, spec.label.days, **kw)
    ts.add_columns(**{btyd.COLUMN: p.to_numpy()})
    ts.btyd_fits = [{"anchor": str(a), "n": f.n, **f.params} for a, f in fits]
    test = ts.part("test")
    m = evaluate.metrics(test["label"].to_numpy(), 1.0 - test[btyd.COLUMN].to_numpy())
    return ({f"btyd_{k}": v for k, v in m.items()
             if k in ("roc_auc", "pr_auc", "ece", "log_loss", "brier")},
            _Classical(fits=fits, inputs=inputs))


def _btyd_input(spec: ModelSpec, cfg: ExperimentConfig, ts: dataset.TrainingSet,
                fitted: _Classical | None) -> tuple[ModelSpec, str | None, bool, object]:
    """``btyd.use`` init_score / feature / auto. init_score: LightGBM is boosted from the
    classical churn margin (each row's by the fit of its cutoff) and the model carries the
    latest anchor's BG/NBD as its starting margin (:class:`leadscore.classical.Start`),
    computed from its own features at scoring: registered like any model. feature: the
    classical probability as a feature, which serving does not compute: an experiment,
    evaluated and logged, never registered. auto: the margins and start of init_score, the
    run then choosing between them and the trees alone (:func:`_evaluation_fit`); where
    init_score would stop with an error, auto is baseline with a note. Returns the spec,
    the starting-margin column, whether the run is an experiment and the start the
    registered model carries (or None)."""
    from dataclasses import replace

    from leadscore.training import btyd

    use = cfg.btyd.use
    if spec.name != "churn" or use not in ("init_score", "feature", "auto"):
        return spec, None, False, None

    def trees_alone(why: str) -> tuple[ModelSpec, None, bool, None]:
        ts.notes.append(f"btyd.use auto: the trees alone ({why})")
        return spec, None, False, None

    if fitted is None:
        if use == "auto":
            return trees_alone("the classical model did not run")
        raise btyd.MissingLibrary(f"btyd.use {use!r} needs PyMC-Marketing: "
                                  "pip install 'leadscore[btyd]'")
    if use == "feature":
        ts.notes.append("experiment btyd.use=feature: evaluated, not registered (serving "
                        "does not compute the classical probability as a feature)")
        return replace(spec, features=(*spec.features, btyd.COLUMN)), None, True, None
    if use == "auto" and cfg.btyd.model != "bgnbd":
        return trees_alone(f"a {cfg.btyd.model} start cannot be computed at serving")
    inputs = fitted.inputs
    if inputs is None:
        if use == "auto":
            return trees_alone("the engagement events have no whole-history feature group "
                               "to compute a starting score from at serving")
        raise ValueError(
            f"btyd.use init_score: the engagement events {list(spec.label.events)} have no "
            "whole-history feature group to compute the starting score from at serving "
            "(use the default engagement events, or btyd.use baseline)")
    lacking = [f for f in inputs.values() if f not in spec.features]
    if lacking:
        if use == "auto":
            return trees_alone(f"the start reads the excluded features {lacking}")
        raise ValueError(f"btyd.use init_score reads the features {lacking}: do not exclude "
                         "them (exclude_features)")
    ts.add_columns(btyd_init=btyd.start_margins(ts.frame, fitted.fits, spec.label.days,
                                                inputs))
    if use == "init_score":
        ts.notes.append(_start_note(fitted))
    return spec, "btyd_init", False, btyd.start(fitted.fits[-1][1], spec.label.days, inputs)


def _start_note(fitted: _Classical) -> str:
    anchor, last = fitted.fits[-1]
    return (f"boosted from the classical {last.kind} churn margin; the model carries the fit "
            f"at {anchor.date()} as its starting score")


def _evaluation_fit(spec: ModelSpec, ts: dataset.TrainingSet, cfg: ExperimentConfig,
                    num_threads: int, init: str | None, start, fitted: _Classical | None):
    """The run's evaluation fit (after its sweep, if any), boosted from ``init`` when given.
    Under ``btyd.use: auto`` with a start (``init`` set), the trees alone are fitted too,
    each with its own sweep, the same spec and seed, and one is kept by the held-out leads
    (:func:`leadscore.training.btyd.choose_start`). Returns the fit, its settings, its
    starting-margin column and start (None for the trees alone) and the choice (None when
    nothing was chosen)."""
    from leadscore.training import btyd

    variants = [(init, start)]
    if cfg.btyd.use == "auto" and init is not None:
        variants.insert(0, (None, None))
    fits = []
    for v_init, v_start in variants:
        if cfg.sweep is not None:
            from leadscore.training.sweep import best_params

            overrides = best_params(spec, ts, cfg, num_threads=num_threads, init=v_init)
        else:
            overrides = cfg.params
        fr = fit(spec, ts, seed=cfg.seed, num_threads=num_threads, overrides=overrides,
                 init=v_init)
        fits.append((fr, overrides, v_init, v_start))
    if len(fits) == 1:
        return (*fits[0], None)
    choice = btyd.choose_start(dataset.held_out(ts.frame), fits[0][0], fits[1][0], num_threads,
                               seed=cfg.seed)
    log.info("%s", choice.note())
    ts.notes.append(choice.note())
    if choice.use_start:
        assert fitted is not None
        ts.notes.append(_start_note(fitted))
    return (*fits[1 if choice.use_start else 0], choice)


def _horizon_ranking(spec: ModelSpec, ts: dataset.TrainingSet, cfg: ExperimentConfig,
                     fr: FitResult, overrides, init: str | None, num_threads: int):
    """A 7-, 15- or 90-day run (rows with :data:`horizons.LABEL_30D`): the same trees boosted
    on the 30-day labels too, kept unless the own labels rank the horizon's held-out orders
    clearly better (:func:`leadscore.training.horizons.choose`). Returns the kept fit, the
    choice and the 30-day-ranking fit (None, None for other runs, or when the 30-day labels
    cannot train)."""
    import mlflow

    if horizons.LABEL_30D not in ts.frame.columns:
        return fr, None, None
    try:
        fr_30d = fit(spec, ts, seed=cfg.seed, num_threads=num_threads, overrides=overrides,
                     init=init, boost_label=horizons.LABEL_30D)
    except ValueError as e:  # e.g. no observed 30-day window among the valid rows
        ts.notes.append(f"time to order: the 30-day ranking was not fitted ({e})")
        return fr, None, None
    choice = horizons.choose(dataset.held_out(ts.frame), fr, fr_30d, num_threads,
                             cfg.seed)
    log.info("%s: %s", spec.name, choice.note())
    ts.notes.append(choice.note())
    mlflow.log_param("ranking", "30d" if choice.borrowed else "own")
    mlflow.log_metrics({k: v for k, v in choice.metrics().items() if np.isfinite(v)})
    return (fr_30d if choice.borrowed else fr), choice, fr_30d


def _vocabulary(con, spec: ModelSpec, cfg: ExperimentConfig, ts: dataset.TrainingSet,
                ) -> tuple[ModelSpec, list[str], dict[str, str]]:
    """The run's data-driven vocabulary: the most frequent non-standard event types before
    the holdout, and the extra lead columns that qualify, get features of their own, added
    to the training rows and to the spec. The slot model keeps its fixed context."""
    from dataclasses import replace

    if spec.entity == "contact_attempt":
        return spec, [], {}
    voc = cfg.vocabulary
    before = vocabulary.vocabulary_cutoff(ts.frame, ts.split_kind)
    types = vocabulary.choose_event_types(con, before, voc.event_types, voc.min_events)
    cols = vocabulary.choose_lead_columns(con, before, voc.lead_columns, voc.exclude,
                                          voc.max_categories, voc.min_present)
    # the champion's too, as columns only: promotion scores this run's holdout with the
    # champion, whose vocabulary may differ
    champion = _champion_features(spec.name, ts.notes)
    extra = [t for t in catalog.vocabulary_of(champion) if t not in types]
    extra_cols = {c: t for c, t in catalog.lead_columns_of(champion).items() if c not in cols}
    ts.frame, names = vocabulary.add_features(con, ts.frame, [*types, *extra],
                                              {**cols, **extra_cols})
    n_types = len(catalog.vocabulary_features(types))
    names = [*names[:n_types], *(catalog.lead_column_feature(c, t).name
                                 for c, t in cols.items())]
    if types:
        ts.notes.append(f"vocabulary: {len(types)} event types beyond the standard list have "
                        f"features of their own (chosen on events before {before})")
    if cols:
        ts.notes.append(f"vocabulary: {len(cols)} extra columns of the leads table are "
                        f"features ({', '.join(cols)})")
    log.info("%s: vocabulary %s, lead columns %s", spec.name, types, cols)
    if not names:
        return spec, [], {}
    return replace(spec, features=(*spec.features, *names)).validate(), types, cols


def _champion_features(model: str, notes: list[str]) -> list[str]:
    """The features of the model's current champion (none without one, or when it cannot
    be loaded: then promotion may not score it on this run's holdout, which the run's notes
    say)."""
    from mlflow.exceptions import MlflowException

    registry.configure()
    try:
        return registry.champions_features([model])
    except (MlflowException, OSError, ValueError, KeyError) as e:
        note = f"champion not loaded for its vocabulary ({type(e).__name__}: {e})"
        log.warning("%s", note)
        notes.append(note)
        return []


def _horizon_of(spec: ModelSpec) -> int | None:
    """The time-to-order horizon a run trains (conversion: 30 days), None for other models
    and for a conversion run at another horizon (``--horizon-days``)."""
    from leadscore.scoring import intent

    days = {m: d for d, m in intent.HORIZON_MODELS.items()}.get(spec.name)
    return days if days is not None and spec.label.days == days else None


def time_to_order(con, days: int, test: pd.DataFrame, p: np.ndarray, data_end,
                  notes: list[str], others: dict | None = None,
                  same_rows_30d: np.ndarray | None = None,
                  ) -> tuple[dict, dict[str, float], pd.DataFrame | None]:
    """A time-to-order run's threshold, metrics and per-grade table on its holdout.

    The threshold of this horizon is a quantile of the evaluation fit's scores ``p`` on the
    holdout's open leads (no labels: the rows it is checked on may be the same). The other
    horizons are scored by ``others`` (horizon → LeadModel; default: their champions). Labels
    of every horizon come from the events, a window not observed by ``data_end`` being
    missing, never negative. ``same_rows_30d``: the holdout scored by the 30-day ranking
    fitted on this run's rows (:mod:`leadscore.training.horizons`), the yardstick of this
    horizon's AUC; not the 30-day champion, which may have trained on these cutoffs. Returns
    the threshold's metadata, metrics (the 30-day ranking's AUC and ECE on this horizon's
    labels) and the table (None without all four horizons)."""
    from mlflow.exceptions import MlflowException

    from leadscore.scoring import intent

    thr = intent.threshold_meta(p, days)
    q = {days: np.asarray(p, dtype=float)}
    cuts: dict[int, float | None] = {days: thr["threshold"]}
    if others is None:
        others = {}
        for d, name in intent.HORIZON_MODELS.items():
            if d == days:
                continue
            try:
                got = registry.load(name, registry.CHAMPION)
            except (MlflowException, OSError, ValueError, KeyError) as e:  # no table then
                log.warning("%s champion not loaded (%s)", name, e)
                got = None
            if got is not None:
                others[d] = got[0]
    for d, lm in others.items():
        try:
            q[d] = lm.predict_proba(test)
        except KeyError as e:  # a champion with features this run's rows lack
            notes.append(f"time to order: {intent.HORIZON_MODELS[d]} not scored ({e})")
            continue
        cuts[d] = (lm.meta.get(intent.META_KEY) or {}).get("threshold")
    labels = {}
    for d, name in intent.HORIZON_MODELS.items():
        lab = dataset.label_rows(con, test, models.get(name), data_end)
        y = lab["label"].to_numpy(dtype=float)
        y[lab["censored"].to_numpy()] = np.nan
        labels[d] = y
    m: dict[str, float] = {"intent_threshold": thr["threshold"]}
    y_own = labels[days]
    if days != 30 and same_rows_30d is not None:
        ok = ~np.isnan(y_own)
        m30 = evaluate.metrics(y_own[ok], np.asarray(same_rows_30d)[ok])
        m["model_30d_roc_auc"] = m30["roc_auc"]
        m["model_30d_ece"] = m30["ece"]
    table = None
    if len(q) == 4:
        # all four horizons on the same held-out leads: their thresholds chosen together
        # (the 30-day model's artifact keeps them for serving)
        p_all = intent.monotone(q)
        cuts = intent.choose_thresholds(p_all)
        thr["joint"] = {str(d): t for d, t in cuts.items()}
        grades = intent.grade(p_all, test["dealer_id"].astype(str).tolist(),
                              intent.IntentRules(), cuts)
        table = intent.grade_table(grades, labels)
        m["intent_rate_30d_ordered"] = float(intent.ordered(table))
        m["intent_largest_share"] = float(table["share"].max())
    else:
        notes.append("time to order: no per-grade table nor joint thresholds (they need the "
                     "models of all four horizons; train the others, then conversion)")
    return thr, m, table


def _grade_card(days: int, thr: dict, m: dict[str, float], table: pd.DataFrame | None) -> str:
    """The model card's time-to-order section: threshold, the 30-day model on this horizon's
    labels, and per grade the share of holdout leads and realised order rates."""
    lines = [
        "## Time to order",
        f"Default threshold of the {days}-day horizon: {thr['threshold']:.4f}, the "
        f"{1 - thr['top_share']:.3f} quantile of {thr['chosen_on']} (about "
        f"{thr['top_share']:.1%} of open leads reach it). Per-horizon binary models; "
        "scoring makes them non-decreasing in the horizon (running minimum below 30 days, "
        "maximum above), the 30-day model untouched (`p_order_30d` = `p_convert`).",
    ]
    if "model_30d_roc_auc" in m:
        lines.append(f"The 30-day ranking on this horizon's labels (the same trees boosted "
                     f"on the 30-day labels of this run's rows, calibrated on this horizon's): "
                     f"ROC AUC {m['model_30d_roc_auc']:.4f}, ECE {m['model_30d_ece']:.4f} "
                     "(this model's own are in the metrics above; the run kept the better "
                     "ranking on held-out training rows, see the notes).")
    if "joint" in thr:
        lines.append("Thresholds of the four horizons chosen together on this holdout (in "
                     "grade order, each takes the next leads up to its cumulative share "
                     "2.5/7.5/17.5/42.5%): " + ", ".join(
                         f"t{d} = {t:.4f}" for d, t in thr["joint"].items())
                     + (" (serving uses these)" if days == 30 else "") + ".")
    if table is not None:
        rates = [c for c in table.columns if c.startswith("rate_")]
        lines += ["", "Intent grade on this holdout (other horizons scored by their "
                  "champions, which may have been refit on these rows; a rate counts rows "
                  "whose window is observed):", "",
                  "| grade | leads | share | " + " | ".join(
                      f"ordered within {c[5:-1]} days" for c in rates) + " |",
                  "|---|---|---|" + "---|" * len(rates)]
        for r in table.itertuples(index=False):
            d = r._asdict()
            lines.append(f"| {r.grade} | {r.n:,} | {r.share:.1%} | " + " | ".join(
                "n/a" if d[c] != d[c] else f"{d[c]:.1%}" for c in rates) + " |")
    return "\n".join(lines) + "\n"


def resolve_spec(cfg: ExperimentConfig) -> ModelSpec:
    spec = models.get(cfg.model).with_horizon(cfg.horizon_days)
    return cfg.apply(spec)


def model_card(spec: ModelSpec, ts: dataset.TrainingSet, fr: FitResult,
               m: dict[str, float], fingerprint: str, refit_rows: int | None = None,
               extra: str = "") -> str:
    parts = ", ".join(f"{k} {v:,}" for k, v in ts.counts().items())
    registered = (
        "the evaluation fit itself." if refit_rows is None else
        f"refit with the same settings and {fr.best_iteration} trees on {refit_rows:,} rows: "
        "every labelled row, the holdout and purged cutoffs included, but a tenth of the leads "
        "kept to calibrate on. The metrics below are the evaluation fit's, on a holdout it "
        "never saw; the registered model has seen that holdout, so score it on newer data."
    )
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in m.items() if isinstance(v, float))
    limits = "\n".join(f"- {x}" for x in spec.known_limits) or "- none recorded"
    cut = f"{ts.cutoffs[0].date()} … {ts.cutoffs[-1].date()} ({len(ts.cutoffs)} cutoffs)"
    return f"""# {spec.registered_name}

**Predicts:** {spec.description}
**Label:** {spec.label.describe()}; entity: {spec.entity} leads at each cutoff.
**Data window:** cutoffs {cut}, data end {ts.data_end}; fingerprint `{fingerprint}`.
**Validation:** {ts.split_kind} split; rows: {parts}. {' '.join(ts.notes)}
**Model:** LightGBM, {fr.best_iteration} trees, {len(spec.features)} features,
calibration {spec.calibration}; monotone increasing in {', '.join(spec.monotone) or 'nothing'}.
**Registered model:** {registered}
**Promotion gate:** {spec.gate.metric} must beat the champion by {spec.gate.min_gain}, and no
dealer with {spec.dealer_gate.min_positives}+ positives may lose more than
{spec.dealer_gate.tolerance} AUC.

## Holdout metrics
| metric | value |
|---|---|
{rows}

{extra}
## Known limits
{limits}
- Scores are probabilities calibrated on held-out leads of the training period; recalibrate
  when lead sources or volumes shift.
"""


def _log_run(spec, cfg, ts, fr, test, p, m, fp, truth_note, register: bool,
             final, refit_rows: int | None, log_model: bool = True,
             vocab: list[str] | None = None, lead_cols: dict[str, str] | None = None,
             card_extra: str = "", grade_table: pd.DataFrame | None = None,
             source: Path | None = None):
    """``source``: the data folder; ``fr``: the evaluation fit (metrics, plots of its
    holdout predictions ``p``); ``final``: the model registered (the refit, or the
    evaluation model itself)."""
    import mlflow

    by_dealer = evaluate.by_group(test, p, "dealer_id")
    by_source = evaluate.by_group(test, p, "source")
    contrib_rows = test.sample(min(len(test), 2000), random_state=0)
    contrib = final.contributions(contrib_rows)
    gain = final.booster.feature_importance("gain")
    mlflow.log_params({
        "model": spec.name, "label": spec.label.describe()[:250],
        "horizon_days": spec.label.days, "split": ts.split_kind, "seed": cfg.seed,
        "calibration": spec.calibration, "best_iteration": fr.best_iteration,
        "recency_half_life_days": fr.half_life or "none",
        "refit": refit_rows is not None, "n_refit": refit_rows or 0,
        "n_features": len(spec.features), "n_cutoffs": len(ts.cutoffs),
        "vocab_event_types": len(vocab or ()), "vocab_lead_columns": len(lead_cols or {}),
        **({"btyd_model": cfg.btyd.model, "btyd_use": cfg.btyd.use} if ts.btyd_fits else {}),
        **{f"n_{k}": v for k, v in ts.counts().items()},
        **{f"lgb_{k}": v for k, v in fr.params.items()
           if k not in ("monotone_constraints", "metric")},
    })
    obs = ts.observed
    mlflow.set_tags({"data_fingerprint": fp, "leadscore.model": spec.name,
                     "truth": truth_note, "observed_until": str(ts.data_end),
                     "events_after_observed_until": obs.n_after if obs else 0,
                     # MLflow tags hold 5000 characters; vocabulary.json has all of it
                     "leadscore.vocabulary": json.dumps(vocab or [])[:5000],
                     "leadscore.lead_columns": json.dumps(lead_cols or {})[:5000],
                     **({"data_warning": obs.note()} if obs and obs.note() else {})})
    mlflow.log_metrics({k: v for k, v in m.items() if np.isfinite(v)})
    _log_training_data(spec, ts, fp, source)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "config.json").write_text(cfg.model_dump_json(indent=1))
        (d / "features.json").write_text(json.dumps(list(spec.features), indent=1))
        (d / "vocabulary.json").write_text(json.dumps(
            {"event_types": vocab or [], "lead_columns": lead_cols or {},
             "features": [f for f in spec.features
                          if f.startswith((catalog.VOCAB_PREFIX, catalog.COLUMN_PREFIX))]},
            indent=1))
        (d / "cutoffs.json").write_text(json.dumps([str(c) for c in ts.cutoffs], indent=1))
        if REFERENCE_KEY in final.meta:  # what the nightly job compares with (also in the model)
            (d / "drift_reference.json").write_text(json.dumps(final.meta[REFERENCE_KEY]))
        if ts.btyd_fits:
            (d / "btyd_fits.json").write_text(json.dumps(ts.btyd_fits, indent=1))
        (d / "model_card.md").write_text(model_card(spec, ts, fr, m, fp, refit_rows,
                                                    card_extra))
        if grade_table is not None:
            grade_table.to_csv(d / "intent_grades.csv", index=False)
        by_dealer.to_csv(d / "metrics_by_dealer.csv", index=False)
        by_source.to_csv(d / "metrics_by_source.csv", index=False)
        y = test["label"].to_numpy()
        who = spec.registered_name
        plots.calibration_curve(y, p, d / "calibration_curve.png", who)
        plots.gains_chart(y, p, d / "gains_chart.png", who)
        plots.importance(list(spec.features), gain, d / "feature_importance.png", who)
        plots.shap_summary(contrib, final.frame(contrib_rows), d / "shap_summary.png", who)
        # every catalogue feature, not just this spec's: promotion scores this holdout with
        # the champion too, which may use other features
        feats = [*(f.name for f in catalog.CATALOG if f.name in test.columns),
                 *(c for c in test.columns
                   if c.startswith((catalog.VOCAB_PREFIX, catalog.COLUMN_PREFIX)))]
        keep = ["lead_id", "dealer_id", "as_of", *feats, "label"]
        # p_eval: the evaluation fit's predictions, which promotion compares (a refit model
        # has seen these rows)
        held = test[keep].copy()  # one block: the columns were joined one by one
        held["p_eval"] = p
        held.to_parquet(d / "holdout.parquet")
        mlflow.log_artifacts(str(d))
    if not log_model:
        return None
    _, version = registry.log_model(final, ts.part("fit")[list(spec.features)],
                                    spec.registered_name if register else None)
    if version is not None:
        registry.describe(spec.name, version, spec.description,
                          model_card(spec, ts, fr, m, fp, refit_rows, card_extra))
    return version


def _log_training_data(spec: ModelSpec, ts: dataset.TrainingSet, fp: str,
                       source: Path | None) -> None:
    """The labelled rows as the run's MLflow dataset input: where they came from (the data
    folder), their fingerprint as its digest, how many and which cutoffs, so a run says what
    it was trained on in MLflow's own terms (the UI's Datasets column, ``run.inputs``)."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # a model-signature hint (integer labels are never missing here), and MLflow's own
        # local-path source registered twice (either reading gives the same source)
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*interpreted in multiple ways",
                                category=UserWarning)
        data = mlflow.data.from_pandas(ts.frame, digest=fp[:32],
                                       source=str(Path(source).resolve()) if source else "",
                                       name=f"{spec.name}-training-rows")
        span = (f"{ts.cutoffs[0].date()}..{ts.cutoffs[-1].date()}" if ts.cutoffs else "")
        mlflow.log_input(data, context="training", tags={  # the schema is inferred here
            "rows": str(len(ts.frame)), "cutoffs": str(len(ts.cutoffs)), "span": span,
            "data_end": str(ts.data_end), "fingerprint": fp})


def train(
    data_dir: Path,
    cfg: ExperimentConfig,
    *,
    register: bool = True,
    num_threads: int = 2,
    rules: RulesFile | None = None,
) -> RunResult:
    """Train one model as the config says, log everything, register a version.

    ``rules``: the contact rules the slot model's policy is evaluated under (the defaults when
    None; the CLI passes the file named by ``LEADSCORE_CONTACT_RULES``)."""
    import mlflow

    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    spec = resolve_spec(cfg)
    ds = contract.load(data_dir, quarantine_dir=data_dir / "quarantine")
    obs = dataset.observation_end(ds.con, cfg.observed_until)
    start, end = dataset.data_start(ds.con), obs.end
    as_of = [pd.Timestamp(t) for t in cfg.as_of] if cfg.as_of else None
    cutoffs = as_of or dataset.rolling_cutoffs(start, end, spec.cutoff_every_days,
                                               spec.label.days)
    fp = dataset.fingerprint(data_dir, cutoffs)
    catalog_key = dataset.fingerprint(data_dir, cutoffs,
                                      {"catalog": [f.name for f in catalog.CATALOG]})
    cache = cache_dir() / f"features-{catalog_key}.parquet"
    ts = dataset.build(ds.con, spec, split=cfg.split, as_of=as_of, seed=cfg.seed,
                       feature_cache=cache, observed=obs)
    dataset.check_holdout(ts, spec.name)
    spec, vocab, lead_cols = _vocabulary(ds.con, spec, cfg, ts)
    days = _horizon_of(spec)
    if days not in (None, 30):  # the 30-day ranking is fitted too (leadscore.training.horizons)
        ts.add_columns(**{horizons.LABEL_30D: horizons.labels_30d(ds.con, ts.frame,
                                                                   ts.data_end)})
    bt, fitted = _btyd_baseline(ds.con, spec, cfg, ts)
    spec, init, experiment, start = _btyd_input(spec, cfg, ts, fitted)
    register = register and not experiment
    registry.configure()
    mlflow.set_experiment(spec.registered_name)
    with mlflow.start_run(run_name=cfg.run_name or f"{spec.name}-{ts.split_kind}") as run:
        fr, overrides, init, start, choice = _evaluation_fit(spec, ts, cfg, num_threads,
                                                             init, start, fitted)
        if spec.name == "churn" and cfg.btyd.use == "auto":
            mlflow.log_param("btyd_auto_choice", choice.choice if choice else "none")
            if choice is not None:
                mlflow.log_metrics({k: v for k, v in choice.metrics().items()
                                    if np.isfinite(v)})
        fr, ranking, fr_30d = _horizon_ranking(spec, ts, cfg, fr, overrides, init, num_threads)
        test = ts.part("test")
        p = fr.predict_proba(test, num_threads=num_threads)
        m = evaluate.metrics(test["label"].to_numpy(), p)
        m.update(bt)
        slot = spec.entity == "contact_attempt"
        truth = _slot_oracle_truth(data_dir) if slot else load_truth(data_dir)
        o = evaluate.oracle(test, truth, spec.truth_column, p)
        m.update(o)
        if slot:
            m.update(_policy_metrics(fr, ts, test, data_dir, rules or RulesFile()))
        truth_note = "simulator truth" if o else "none"
        final, refit_rows = fr.model, None
        if cfg.refit and not experiment:
            try:
                final, refit_rows = refit(spec, ts, fr.best_iteration, seed=cfg.seed,
                                          num_threads=num_threads, overrides=overrides,
                                          init=init, boost_label=ranking and ranking.boost_label)
            except ValueError as e:  # e.g. a calibration tenth with one class: keep the
                log.warning("%s: refit skipped (%s); registering the evaluation fit",
                            spec.name, e)  # evaluated model rather than fail the run
                ts.notes.append(f"refit skipped: {e}")
        card_extra, table, thr = "", None, None
        if days is not None:
            p_30d = None if fr_30d is None else fr_30d.predict_proba(test, num_threads)
            thr, tm, table = time_to_order(ds.con, days, test, p, ts.data_end, ts.notes,
                                           same_rows_30d=p_30d)
            m.update(tm)
            card_extra = _grade_card(days, thr, tm, table)
        if start is not None:  # served: the trees plus the classical margin they start from
            from dataclasses import replace

            final = replace(final, start=start)
            mlflow.log_params({"btyd_start_anchor": str(fitted.fits[-1][0]),
                               **{f"btyd_start_{k}": v for k, v in start.params.items()}})
        for lm in {id(fr.model): fr.model, id(final): final}.values():
            # the artifact carries its vocabulary (the feature names say it too)
            lm.meta[vocabulary.META_KEY] = {"event_types": list(vocab),
                                            "lead_columns": dict(lead_cols)}
            if thr is not None:  # calibrated probabilities: the threshold holds for the refit
                from leadscore.scoring.intent import JOINT_KEY, META_KEY

                lm.meta[META_KEY] = {k: v for k, v in thr.items() if k != "joint"}
                if days == 30 and "joint" in thr:
                    lm.meta[JOINT_KEY] = thr["joint"]
        version = _log_run(spec, cfg, ts, fr, test, p, m, fp, truth_note, register, final,
                           refit_rows, log_model=not experiment, vocab=vocab,
                           lead_cols=lead_cols, card_extra=card_extra, grade_table=table,
                           source=data_dir)
        run_id = run.info.run_id
    alias = None
    if version is not None:
        champion = registry.resolve(spec.name, registry.CHAMPION)
        alias = registry.CHALLENGER if champion else registry.CHAMPION
        if champion:
            registry.set_alias(spec.name, alias, version)
        else:  # the first champion is in the history too: a later rollback can reach it
            registry.make_champion(spec.name, version, "first registered version")
    return RunResult(model=spec.name, run_id=run_id, version=version, alias=alias,
                     metrics=m, notes=ts.notes, seconds=time.perf_counter() - t0)
