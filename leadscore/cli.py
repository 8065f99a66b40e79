"""The ``leadscore`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Lead score, contact timing and churn risk for car dealer groups.",
)


class Engine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


class Split(StrEnum):
    auto = "auto"
    time = "time"
    entity = "entity"


class OutFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"


class ModelName(StrEnum):
    conversion = "conversion"
    contact = "contact"
    churn = "churn"
    contact_slot = "contact-slot"
    order_7d = "order-7d"
    order_15d = "order-15d"
    order_90d = "order-90d"


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _timestamps(text: str, option: str = "--as-of") -> list:
    import pandas as pd

    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            t = pd.Timestamp(part)
        except ValueError as e:
            raise typer.BadParameter(f"{option}: cannot read {part!r} as a timestamp") from e
        out.append(t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC"))
    if not out:
        raise typer.BadParameter(f"{option} needs at least one timestamp")
    return out


#: exit code of ``rescore --fail-on-drift`` when a model drifted (bad input exits with 2)
DRIFT_EXIT = 3


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder to write leads/events/contacts/truth")],
    leads: Annotated[int, typer.Option(min=10, help="Number of leads")] = 50_000,
    days: Annotated[int, typer.Option(min=14, help="Days simulated")] = 180,
    dealers: Annotated[int, typer.Option(min=1, help="Dealers in the group")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data)")] = 0,
) -> None:
    """Simulate a dealer group: leads, behaviour events, advisors' contacts, and the truth."""
    from leadscore import simulate as sim

    cfg = sim.SimConfig(n_leads=leads, days=days, n_dealers=dealers, seed=seed)
    summary = sim.write(sim.simulate(cfg), out)
    typer.echo(json.dumps(summary, indent=1, default=str))


@app.command()
def validate(
    data: Annotated[Path, typer.Option(help="Folder with leads/events/contacts files")],
    quarantine: Annotated[Path | None, typer.Option(help="Where bad rows go")] = None,
) -> None:
    """Check the input files against the data contract; bad rows go to quarantine."""
    from leadscore import contract

    try:
        ds = contract.load(data, quarantine_dir=quarantine or data / "quarantine")
    except contract.ContractError as e:
        _fail(str(e))
    typer.echo(ds.summary())


@app.command("import")
def import_(
    mapping: Annotated[Path, typer.Option(help="Mapping YAML (see examples/)")],
    out: Annotated[Path, typer.Option(help="Folder to write leads/events/contacts.parquet")],
    source: Annotated[list[str] | None, typer.Option(
        help="A source file instead of the mapping's: NAME=PATH, or PATH alone when its file "
             "name is the mapping's (or the mapping has one source); repeatable")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder the mapping's source paths are relative to [default: the mapping's "
             "data_dir, relative to the mapping file]")] = None,
    force: Annotated[bool, typer.Option(help="Replace data files already in --out")] = False,
    check: Annotated[bool, typer.Option(
        help="Validate the result against the data contract (as `leadscore validate`)")] = True,
) -> None:
    """Turn a CRM or transaction export (CSV, CSV.gz, Parquet) into the data contract."""
    from leadscore import contract, importer

    try:
        rep = importer.run(mapping, out, sources=source or (), data_dir=data_dir, force=force)
    except importer.MappingError as e:
        _fail(str(e))
    typer.echo(rep.summary())
    if check:
        try:
            ds = contract.load(out, quarantine_dir=out / "quarantine")
        except contract.ContractError as e:
            _fail(str(e))
        typer.echo(ds.summary())


@app.command()
def features(
    data: Annotated[Path, typer.Option(help="Folder with leads/events/contacts files")],
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff(s), comma-separated, UTC")],
    out: Annotated[Path, typer.Option(help="Parquet file to write")],
    engine: Annotated[Engine, typer.Option(help="duckdb (embedded) or spark")] = Engine.duckdb,
    only_open: Annotated[bool, typer.Option(help="Only leads still open at the cutoff")] = False,
    store: Annotated[
        Path | None, typer.Option(help="Also refresh this online store (latest row per lead)")
    ] = None,
    vocabulary: Annotated[str | None, typer.Option(
        help="Also the features of these event types beyond the standard list "
             "(comma-separated), or 'champions': the types "
             "(and extra lead columns) the registry's champion models were trained with "
             "(what the HTTP service needs from the store)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Point-in-time features for every lead at one or more cutoffs."""
    _logging(verbose)
    import pyarrow.parquet as pq

    from leadscore import contract
    from leadscore.features import catalog, job

    cutoffs = _timestamps(as_of)
    types, lead_cols = _vocabulary_option(vocabulary)
    feats = [*catalog.CATALOG, *catalog.vocabulary_features(types),
             *(catalog.lead_column_feature(c, t) for c, t in lead_cols.items())]
    if lead_cols and engine is Engine.spark:
        _fail("--engine spark does not compute the champions' lead-column features yet; "
              "use the embedded engine")
    try:
        ds = contract.load(data, quarantine_dir=data / "quarantine")
    except contract.ContractError as e:
        _fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    table = None
    if engine is Engine.spark:  # the same feature function per bucket of leads, on Spark
        from leadscore.nightly import spark

        n_rows, n_cols = spark.compute_features(ds, cutoffs, out, only_open=only_open,
                                                vocabulary=types)
    else:
        table = job.compute(ds.con, cutoffs, feats, only_open=only_open)
        pq.write_table(table, out)
        n_rows, n_cols = table.num_rows, table.num_columns
    typer.echo(ds.summary())
    typer.echo(f"wrote {n_rows:,} rows × {n_cols} columns to {out}")
    if store is not None:
        if table is None:
            table = pq.read_table(out)
        from leadscore.serving import store as online

        n = online.write(job.to_pandas(table, feats), store)
        typer.echo(f"online store {store}: {n:,} leads (latest cutoff per lead)")


def _vocabulary_option(value: str | None) -> tuple[list[str], dict[str, str]]:
    """``--vocabulary``: event types as given, or the champions' (the registry's) event
    types and extra lead columns."""
    from leadscore.features import catalog

    if not value:
        return [], {}
    if value.strip() != "champions":
        types = list(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
        std = [t for t in types if t in catalog.STANDARD_EVENT_TYPES]
        if std:
            _fail(f"--vocabulary: {', '.join(std)} are standard event types (they have "
                  "features of their own already)")
        return types, {}
    from leadscore import registry
    from leadscore.scoring.scorer import ALL_MODELS

    registry.configure()
    names = registry.champions_features(ALL_MODELS)
    return catalog.vocabulary_of(names), catalog.lead_columns_of(names)


def _contact_rules():
    """The contact rules of this run: the YAML file named by ``LEADSCORE_CONTACT_RULES``, else
    the defaults. Read here, at the edge, so the scorer and training never read the
    environment."""
    from leadscore.scoring.contact_policy import RulesError, RulesFile, rules_path_from_env

    try:
        return RulesFile.load(rules_path_from_env())
    except RulesError as e:
        _fail(f"LEADSCORE_CONTACT_RULES: {e}")


def _intent_rules():
    """The intent-grade thresholds of this run: the YAML file named by
    ``LEADSCORE_INTENT_GRADES``, else none (the models' own). Read here, at the edge."""
    from leadscore.scoring.intent import IntentRules, RulesError, rules_path_from_env

    try:
        return IntentRules.load(rules_path_from_env())
    except RulesError as e:
        _fail(f"LEADSCORE_INTENT_GRADES: {e}")


def _language(option: str | None) -> str:
    """The reasons' language: ``--lang``, else ``LEADSCORE_LANG``, else English. Read here,
    at the edge, like the rules."""
    from leadscore import lang

    try:
        return lang.check(option, "--lang") if option is not None else lang.from_env()
    except ValueError as e:
        _fail(str(e))


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Folder with leads/events/contacts files")],
    model: Annotated[ModelName | None, typer.Option(help="Which model")] = None,
    config: Annotated[Path | None, typer.Option(help="Experiment YAML")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Cutoff(s) instead of rolling ones")
    ] = None,
    horizon_days: Annotated[float | None, typer.Option(help="Label horizon in days")] = None,
    observed_until: Annotated[str | None, typer.Option(
        "--observed-until",
        help="End of observation, UTC: labels are read up to it [default: the last day whose "
             "event volume is in line with the rest; later rows are reported]")] = None,
    split: Annotated[Split | None, typer.Option(
        help="auto (default: time when the data allows an out-of-time holdout, else entity), "
             "time (out-of-time, or fail) or entity (grouped by lead)")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a model, log the run to MLflow, register a version."""
    _logging(verbose)
    from pydantic import ValidationError

    from leadscore.contract import ContractError
    from leadscore.training.config import ExperimentConfig, config_error
    from leadscore.training.run import train as run_train

    if config is None and model is None:
        _fail("give --model or --config")
    raw: dict = {}
    if config is not None:
        import yaml

        raw = yaml.safe_load(config.read_text()) or {}
    if model is not None:
        if raw.get("model") not in (None, model.value):
            _fail(f"--model {model.value} contradicts the config's model {raw['model']}")
        raw["model"] = model.value
    if as_of:
        raw["as_of"] = [str(t) for t in _timestamps(as_of)]
    if horizon_days is not None:
        raw["horizon_days"] = horizon_days
    if observed_until:
        ends = _timestamps(observed_until, "--observed-until")
        if len(ends) != 1:
            raise typer.BadParameter("--observed-until takes one timestamp")
        raw["observed_until"] = str(ends[0])
    if split is not None:
        raw["split"] = split.value
    if seed is not None:
        raw["seed"] = seed
    try:  # the config (params included) is checked before any data is read
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        _fail(f"{config or 'train'}: {config_error(e)}")
    rules = _contact_rules()
    try:
        res = run_train(data, cfg, rules=rules)
    except (ContractError, ValueError) as e:
        _fail(str(e))
    m = res.metrics
    typer.echo(f"{res.model}: run {res.run_id}, version {res.version} ({res.alias})")
    for note in res.notes:
        typer.echo(f"  {note}")
    for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top10", "capture_top10",
              "oracle_auc", "oracle_gap"):
        if k in m:
            typer.echo(f"  {k:14s} {m[k]:.4f}")
    if as_json:
        typer.echo(res.as_json())


MinPositivesOption = Annotated[int | None, typer.Option(
    "--min-positives", min=1,
    help="Dealer gate: dealers with fewer holdout positives are not judged [default: the "
         "model spec's, 30]")]
ToleranceOption = Annotated[float | None, typer.Option(
    "--tolerance", min=0.0, max=0.99,
    help="Dealer gate: the AUC a judged dealer may lose before it blocks promotion "
         "[default: the model spec's, 0.02]")]


@app.command()
def promote(
    model: Annotated[ModelName, typer.Option(help="Which model")],
    version: Annotated[str | None, typer.Option(help="Make this version champion")] = None,
    best: Annotated[bool, typer.Option("--best", help="Promote the challenger if it wins")] = False,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Make the previous champion (from the registry's history) champion "
                           "again")] = False,
    min_positives: MinPositivesOption = None,
    tolerance: ToleranceOption = None,
) -> None:
    """Move the champion alias: by hand (--version), through the spec's gates (--best: overall
    and per dealer) or back to the previous champion (--rollback). Every change is recorded
    in the registry."""
    from leadscore.training import promote as pr

    if sum((version is not None, best, rollback)) != 1:
        _fail("give exactly one of --version V, --best or --rollback")
    if not best and (min_positives is not None or tolerance is not None):
        _fail("--min-positives and --tolerance go with --best")
    try:
        if version is not None:
            d = pr.promote_version(model.value, version)
        elif rollback:
            d = pr.rollback(model.value)
        else:
            d = pr.promote_best(model.value, min_positives=min_positives, tolerance=tolerance)
    except pr.PromotionError as e:
        _fail(str(e))
    typer.echo(d.reason)


@app.command()
def retrain(
    data: Annotated[Path, typer.Option(help="Folder with leads/events/contacts files")],
    models: Annotated[str, typer.Option(help="Comma-separated models to retrain")] = (
        "conversion,order-7d,order-15d,order-90d,contact,churn,contact-slot"
    ),
    min_positives: MinPositivesOption = None,
    tolerance: ToleranceOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Guarded retraining, for cron: train a challenger per model on the latest data (as
    `train` does with the model's defaults) and promote it only if it beats the champion on
    the same recent holdout overall and no dealer with enough positives loses beyond the
    tolerance. Each decision and its reason go to the log and the challenger's MLflow run.
    A kept champion is a normal outcome (exit 0); bad input exits 2."""
    _logging(verbose)
    log = logging.getLogger("leadscore.retrain")
    log.setLevel(logging.INFO)  # the decisions are what a cron log is for
    from leadscore import registry
    from leadscore.contract import ContractError
    from leadscore.training import promote as pr
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train as run_train

    names = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
    unknown = sorted(set(names) - {m.value for m in ModelName})
    if unknown or not names:
        _fail(f"--models: unknown {', '.join(unknown)}" if unknown else "--models: none given")
    if not data.is_dir():
        _fail(f"--data {data}: no such folder")
    rules = _contact_rules()
    failed = []
    for name in names:
        try:
            res = run_train(data, ExperimentConfig(model=name), rules=rules)
        except ContractError as e:
            _fail(str(e))
        except ValueError as e:  # this model cannot be trained on this data: the others can
            log.error("%s: not retrained: %s", name, e)
            failed.append(name)
            continue
        if res.version is None:
            log.warning("%s: run %s registered no version: nothing to promote", name,
                        res.run_id)
            continue
        if res.alias == registry.CHAMPION:  # the first version: nothing to compare with
            d = pr.Decision(True, res.version, res.version, "roc_auc", None, None,
                            f"version {res.version} is the first: champion without a gate",
                            challenger_run_id=res.run_id)
            pr.record(d)
        else:
            d = pr.promote_best(name, min_positives=min_positives, tolerance=tolerance)
        line = f"{name}: {'promoted' if d.promoted else 'kept'}: {d.reason}"
        log.log(logging.INFO if d.promoted else logging.WARNING, "%s", line)
        typer.echo(line)
    if failed:
        _fail(f"not retrained: {', '.join(failed)} (see the log)")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="HTTP port")] = 3000,
    store: Annotated[Path, typer.Option(help="Online feature store file")] = Path("features.db"),
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    api_keys: Annotated[
        Path | None, typer.Option(help="Hashed API key file (else $LEADSCORE_API_KEYS, else "
                                  "api_keys.json if there; see `leadscore keys`)")
    ] = None,
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
) -> None:
    """Serve POST /score over HTTP with BentoML (champion models from the registry).

    This process becomes ``bentoml serve`` (exec, not a child): a SIGTERM or SIGINT from
    systemd, docker or a supervisor reaches the server itself and stops it and its workers,
    rather than ending a parent and leaving the server answering on the port."""
    import os

    env = dict(os.environ, LEADSCORE_STORE=str(store.resolve()), LEADSCORE_WORKERS=str(workers))
    api_keys = api_keys or (None if env.get("LEADSCORE_API_KEYS") else _default_key_file())
    if api_keys is not None:
        env["LEADSCORE_API_KEYS"] = str(api_keys.resolve())
    if not env.get("LEADSCORE_API_KEYS"):
        typer.secho("warning: no API keys configured: every request will get 401",
                    fg=typer.colors.YELLOW, err=True)
    cmd = [sys.executable, "-m", "bentoml", "serve",
           "leadscore.serving.service:LeadScoreService", "--port", str(port), "--host", host]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


keys_app = typer.Typer(
    no_args_is_help=True,
    help="API keys of the HTTP service: each bound to one tenant and its dealers, stored "
    "only as a SHA-256 digest. A running service picks changes up within a second.",
)
app.add_typer(keys_app, name="keys")

KeyFileOption = Annotated[Path | None, typer.Option(
    "--file", help="Key file [default: $LEADSCORE_API_KEYS, else api_keys.json]")]


def _default_key_file() -> Path | None:
    from leadscore.serving.auth import DEFAULT_KEY_FILE

    return DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.exists() else None


def _key_file(file: Path | None) -> Path:
    import os

    from leadscore.serving.auth import DEFAULT_KEY_FILE, ENV

    return file or Path(os.environ.get(ENV) or DEFAULT_KEY_FILE)


@keys_app.command("add")
def keys_add(
    tenant: Annotated[str, typer.Option(help="Tenant (dealer group) the key belongs to")],
    dealers: Annotated[str, typer.Option(help="Dealer ids the key may see, comma-separated")],
    name: Annotated[str | None, typer.Option(help="Label, e.g. the client using it")] = None,
    file: KeyFileOption = None,
) -> None:
    """Make a key: printed once on stdout, only its digest is written (file mode 0600)."""
    from leadscore.serving.auth import KeyFileError, add_key

    path = _key_file(file)
    try:
        key, entry = add_key(path, tenant, dealers.split(","), name)
    except KeyFileError as e:
        _fail(str(e))
    typer.echo(key)
    typer.echo(f"added key {entry.id} for tenant {entry.tenant} ({', '.join(entry.dealers)}) "
               f"to {path}; the key is shown only this once", err=True)


@keys_app.command("list")
def keys_list(file: KeyFileOption = None) -> None:
    """The keys in the file: id, name, tenant, dealers, created (never a key)."""
    from leadscore.serving.auth import KeyFileError, read_key_file

    path = _key_file(file)
    try:
        keys = read_key_file(path).keys
    except KeyFileError as e:
        _fail(str(e))
    typer.echo(f"{'id':12s}  {'name':16s}  {'tenant':16s}  {'created':20s}  dealers")
    for e in keys:
        created = e.created.strftime("%Y-%m-%dT%H:%M:%SZ") if e.created else "-"
        typer.echo(f"{e.id:12s}  {e.name or '-':16s}  {e.tenant:16s}  {created:20s}  "
                   f"{','.join(e.dealers)}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id from `keys list`")],
    file: KeyFileOption = None,
) -> None:
    """Remove a key; requests with it get 401 once the service has read the file again."""
    from leadscore.serving.auth import KeyFileError, revoke_key

    path = _key_file(file)
    try:
        entry = revoke_key(path, key_id)
    except KeyFileError as e:
        _fail(str(e))
    typer.echo(f"revoked key {entry.id} of tenant {entry.tenant} in {path}")


@app.command()
def rescore(
    data: Annotated[Path, typer.Option(help="Folder with leads/events/contacts files")],
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff, UTC")],
    out: Annotated[Path, typer.Option(help="Output: Parquet folder (or .csv file)")],
    models: Annotated[str, typer.Option(help="Comma-separated models to score")] = (
        "conversion,order-7d,order-15d,order-90d,contact,churn,contact-slot"
    ),
    engine: Annotated[Engine, typer.Option(help="duckdb (embedded) or spark")] = Engine.duckdb,
    out_format: Annotated[OutFormat, typer.Option("--format", help="parquet or csv")] = (
        OutFormat.parquet
    ),
    reasons: Annotated[int, typer.Option(
        min=0, max=10, help="At most this many reasons per model, largest first")] = 3,
    lang: Annotated[str | None, typer.Option(
        "--lang", help="Language of the reasons: en or zh-CN [default: $LEADSCORE_LANG, "
                       "else en]")] = None,
    bucket_leads: Annotated[int, typer.Option(min=100, help="Leads per bucket")] = 100_000,
    force: Annotated[bool, typer.Option(help="Redo a finished run / replace other output")] = (
        False
    ),
    cache: Annotated[Path | None, typer.Option(
        help="Where validated input rows are kept between runs, so a run validates only the "
             "files added since [default: DATA/.leadscore-intake]; deleting it costs one full "
             "validation")] = None,
    previous: Annotated[Path | None, typer.Option(
        help="The previous night's output to compare with (score_delta, trend, changes) "
             "[default: the complete run beside --out with the latest earlier --as-of, if "
             "any]")] = None,
    store: Annotated[Path | None, typer.Option(
        help="The online feature store the HTTP service reads: the run's scores, deltas and "
             "changes are written beside it (FILE.last-night.db) for /score by lead id")
    ] = None,
    drift_alert: Annotated[float, typer.Option(
        "--drift-alert", min=0.0,
        help="PSI against the training reference at or above which a feature or score is a "
             "drift alert (in _drift.json and the log)")] = 0.25,
    fail_on_drift: Annotated[bool, typer.Option(
        "--fail-on-drift",
        help="Exit with code 3 when any model has a drift alert (after writing everything)")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score every open lead (and owner, for churn) with the champion models."""
    _logging(verbose)
    for name in ("leadscore.nightly.batch", "leadscore.nightly.intake",  # progress lines
                 "leadscore.nightly.watch"):
        logging.getLogger(name).setLevel(logging.INFO)
    from leadscore.contract import ContractError
    from leadscore.nightly import batch
    from leadscore.nightly.intake import IntakeError
    from leadscore.serving import last_night

    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = sorted(set(names) - {m.value for m in ModelName})
    if unknown:
        _fail(f"--models: unknown {', '.join(unknown)}")
    (cutoff,) = _timestamps(as_of)[:1]
    target = out.with_name(out.name + ".parts") if out_format is OutFormat.csv else out
    lang = _language(lang)
    rules = _contact_rules()
    intent = _intent_rules()
    try:
        res = batch.rescore(data, cutoff, target, models=names, reasons=reasons,
                            bucket_leads=bucket_leads, force=force, engine=engine.value,
                            cache=cache, rules=rules, intent=intent, lang=lang,
                            previous=previous, drift_alert=drift_alert)
    except (ContractError, FileExistsError, ValueError, IntakeError) as e:
        _fail(str(e))
    if store is not None:  # the service's copy of the run: scores, deltas, changes by lead
        table = last_night.beside(store)
        n = last_night.write(target, table)
        typer.echo(f"rescore: {n:,} leads' last-night scores written to {table}")
    if out_format is OutFormat.csv:
        batch.export_csv(target, out, lang)
    state = "already complete (no-op)" if res.noop else "done"
    typer.echo(f"rescore {state}: {res.rows:,} rows in {res.buckets} buckets "
               f"({res.skipped_buckets} resumed) → {out} in {res.seconds:.1f}s; "
               f"models {res.model_versions}; {res.quarantined:,} input rows quarantined")
    from leadscore.nightly import watch

    drifted = res.drift_alerts
    typer.echo(f"drift: {target / '_drift.json'}; " + (
        "; ".join(f"{m}: {watch.describe(a)}" for m, a in drifted.items()) if drifted
        else f"no alert (PSI < {drift_alert:g})"))
    if drifted and fail_on_drift:
        raise typer.Exit(DRIFT_EXIT)


@app.command()
def worklist(
    scores: Annotated[Path, typer.Option(help="A rescore output folder (Parquet parts)")],
    top: Annotated[int, typer.Option(min=1, help="Leads to show")] = 20,
    dealer: Annotated[str | None, typer.Option(help="Only this dealer's leads")] = None,
    lang: Annotated[str | None, typer.Option(
        "--lang", help="en or zh-CN [default: $LEADSCORE_LANG, else en]")] = None,
) -> None:
    """The top of a night's worklist as an advisor reads it: intent grade, expected time to
    order, what changed, reasons, when and how to call (local time)."""
    import pandas as pd

    from leadscore import worklist as wl

    lang = _language(lang)
    try:
        scored = pd.read_parquet(scores)
    except (OSError, ValueError) as e:
        _fail(f"{scores}: not a rescore output ({e})")
    if dealer is not None:
        scored = scored[scored["dealer_id"] == dealer]
    for line in wl.lines(scored, top=top, lang=lang):
        typer.echo(line)


@app.command()
def backtest(
    data: Annotated[Path, typer.Option(help="Folder with leads/events/contacts files")],
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff, UTC: the leads open then")],
    model: Annotated[ModelName, typer.Option(help="Which model")],
    out: Annotated[Path, typer.Option(help="Folder for backtest.json and backtest.html")],
    version: Annotated[str | None, typer.Option(
        help="Registered version [default: the champion]")] = None,
    min_leads: Annotated[int, typer.Option(
        "--min-leads", min=1, help="Dealers and sources with fewer leads are flagged small")
    ] = 30,
    observed_until: Annotated[str | None, typer.Option(
        "--observed-until",
        help="End of observation, UTC: outcomes are read up to it [default: estimated from "
             "daily event volumes, as train does]")] = None,
    lang: Annotated[str | None, typer.Option(
        "--lang", help="Language of backtest.html: en or zh-CN [default: $LEADSCORE_LANG, "
                       "else en]")] = None,
    log_to_mlflow: Annotated[bool, typer.Option(
        "--log-to-mlflow",
        help="Also log both files to the version's MLflow run under backtest/<as-of date>/")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score the leads open at --as-of with a registered model and compare with what they
    did next: per dealer and lead source, AUC, calibration and the realised rate by grade
    (backtest.json), and a page of charts a sales manager reads (backtest.html)."""
    _logging(verbose)
    from leadscore.contract import ContractError
    from leadscore.training import backtest as bt

    (cutoff,) = _timestamps(as_of)[:1]
    end = _timestamps(observed_until, "--observed-until")[0] if observed_until else None
    lang = _language(lang)
    intent = _intent_rules()
    try:
        res = bt.run(data, cutoff, model.value, out, version=version, min_leads=min_leads,
                     lang=lang, observed_until=end, intent=intent, log_to_mlflow=log_to_mlflow)
    except (ContractError, bt.BacktestError) as e:
        _fail(str(e))
    rep = res.report
    o = rep["overall"]
    auc = "–" if o["roc_auc"] is None else f"{o['roc_auc']:.3f}"
    typer.echo(f"backtest {rep['registered_name']} v{rep['version']} at {rep['as_of']}: "
               f"{o['n']:,} leads, {o['positives']:,} positives, AUC {auc}, ECE {o['ece']:.3f}; "
               f"{o['n_censored']:,} censored left out; {len(rep['dealers'])} dealers")
    typer.echo(f"wrote {res.json_path} and {res.html_path}")
    if log_to_mlflow:
        typer.echo(f"logged to run {rep['run_id']} under backtest/{cutoff.date()}/")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its data")] = Path(".demo"),
    leads: Annotated[int, typer.Option(help="Leads to simulate")] = 20_000,
    lang: Annotated[str | None, typer.Option(
        "--lang", help="The worklist's language: en or zh-CN [default: $LEADSCORE_LANG, "
        "else en]")] = None,
) -> None:
    """Simulate → validate → features → train the models, printing each step."""
    from leadscore.demo import run

    run(workdir, leads, rules=_contact_rules(), lang=_language(lang))


if __name__ == "__main__":  # pragma: no cover
    app()
