"""The end of observation: rows dated after the data's real end never make label windows
look observed, and a holdout with one class stops the run before anything is registered."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from leadscore import contract, models
from leadscore import simulate as sim
from leadscore.training import dataset

DAY0 = pd.Timestamp("2026-01-05", tz="UTC")


def _daily(counts: dict[int, int]) -> pd.Series:
    return pd.Series(counts).rename(index=lambda d: DAY0 + pd.Timedelta(days=d))


def _steady(days: int = 100, n: int = 1000, **extra: int) -> pd.Series:
    return _daily({**{d: n for d in range(days)}, **{int(k[1:]): v for k, v in extra.items()}})


@pytest.mark.parametrize(("daily", "end_day"), [
    (_steady(), 99),  # clean data: its last day
    (_steady(d189=1), 99),  # one row three months later
    (_steady(d160=200), 99),  # an isolated late batch, above the day share alone
    (_daily({**{d: 1000 for d in range(100)}, **{d: 5 for d in range(100, 110)}}), 99),  # trickle
    (_steady(d99=400), 99),  # a partial last day stays
    (_daily({**{d: 1000 for d in range(100)}, **{d: 900 for d in range(120, 134)}}), 133),
    (_steady(n=10, d189=1), 99),  # low volume: a lone row far out is still not in line
])
def test_last_full_day_ignores_stray_late_rows(daily, end_day):
    assert dataset.last_full_day(daily) == DAY0 + pd.Timedelta(days=end_day)


@pytest.fixture(scope="module")
def stray_data(tmp_path_factory):
    """A small simulated group twice: as simulated, and with one page_view of an existing
    lead dated 90 days after the end (ingested a minute later, before the clock)."""
    data = sim.simulate(sim.SimConfig(n_leads=800, days=100, seed=3))
    clean = tmp_path_factory.mktemp("clean")
    sim.write(data, clean)
    ev = data.events
    last = ev.loc[ev["ts"].idxmax()]
    stray = last.copy()
    stray["event_type"] = "page_view"
    stray["ts"] = last["ts"] + pd.Timedelta(days=90)
    stray["ingested_at"] = stray["ts"] + pd.Timedelta(minutes=1)
    data.events = pd.concat([ev, stray.to_frame().T.astype(ev.dtypes)], ignore_index=True)
    dirty = tmp_path_factory.mktemp("stray")
    sim.write(data, dirty)
    return clean, dirty, last["ts"], stray["ts"]


def test_a_stray_late_row_neither_moves_the_end_nor_changes_labels(stray_data):
    clean, dirty, real_end, stray_ts = stray_data
    spec = models.get("conversion")
    ds = contract.load(dirty)
    assert ds.con.execute("SELECT max(ts) FROM events").fetchall()[0][0] == stray_ts  # kept
    # the rolling cutoffs the run would take, and two whose 30-day window is not observed
    start, end = dataset.data_bounds(ds.con)
    rolling = dataset.rolling_cutoffs(start, real_end, spec.cutoff_every_days, 30)
    as_of = [*rolling, real_end - pd.Timedelta(days=20), real_end - pd.Timedelta(days=3)]
    assert end == real_end
    got = dataset.build(ds.con, spec, as_of=as_of)
    want = dataset.build(contract.load(clean).con, spec, as_of=as_of)
    assert got.data_end == real_end == want.data_end
    assert got.n_censored == want.n_censored > 0
    assert got.frame["as_of"].max() == rolling[-1]  # the late cutoffs: censored, not negative
    pd.testing.assert_frame_equal(got.frame, want.frame)  # same rows, labels and splits
    assert got.observed.n_after == 1 and got.observed.first_after == stray_ts
    assert any("1 event after the observation end" in n for n in got.notes)
    # the explicit end wins over the estimate, and reports what lies after it
    early = real_end - pd.Timedelta(days=10)
    obs = dataset.observation_end(ds.con, str(early))
    assert obs.end == early and obs.given and obs.n_after > 1


def test_a_holdout_with_one_class_stops_the_run(stray_data, tmp_path, monkeypatch):
    """Told that observation runs to the stray row, every test window is empty: the run
    stops with the cause instead of registering an untested model."""
    from leadscore.cli import app

    _, dirty, _, stray_ts = stray_data
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("LEADSCORE_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["train", "--data", str(dirty), "--model", "conversion",
                                   "--observed-until", str(stray_ts)])
    assert res.exit_code == 2, res.output
    err = " ".join(res.output.split())
    assert "conversion: the test period (time split, cutoffs" in err
    assert "has no positives" in err and "--observed-until" in err
    assert not (tmp_path / "mlruns.db").exists()  # nothing logged, nothing registered


def test_check_holdout_names_the_model_period_and_cause():
    frame = pd.DataFrame({"lead_id": ["a", "b", "c", "d"], "label": [1, 0, 0, 0],
                          "as_of": pd.to_datetime(["2026-03-02", "2026-03-02", "2026-04-06",
                                                   "2026-04-13"], utc=True),
                          "split": ["fit", "fit", "test", "test"]})
    ts = dataset.TrainingSet(frame=frame, cutoffs=[], data_end=pd.Timestamp("2026-09-01"),
                             n_censored=0, split_kind="time")
    with pytest.raises(ValueError, match=r"churn: the test period \(time split, cutoffs "
                                         r"2026-04-06 … 2026-04-13, 2 rows\) has no positives"):
        dataset.check_holdout(ts, "churn")
    frame.loc[2, "label"] = 1
    dataset.check_holdout(ts, "churn")  # two classes: fine


def test_config_checks_observed_until():
    from pydantic import ValidationError

    from leadscore.training.config import ExperimentConfig

    assert ExperimentConfig(model="churn", observed_until="2026-04-14").observed_until
    with pytest.raises(ValidationError, match="not a time"):
        ExperimentConfig(model="churn", observed_until="not a time")
