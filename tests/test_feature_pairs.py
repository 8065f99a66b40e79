"""Per-lead cutoffs (features just before each contact attempt) equal the all-leads job."""

from __future__ import annotations

import pandas as pd

from leadscore import contract
from leadscore.features import job


def test_pairs_equal_the_all_leads_job_at_shared_cutoffs(sim_data):
    ds = contract.load(sim_data)
    cuts = [pd.Timestamp("2026-03-16", tz="UTC"), pd.Timestamp("2026-04-13 15:30", tz="UTC")]
    full = job.to_pandas(job.compute(ds.con, cuts))
    pairs_in = full[["lead_id", "as_of"]].sample(frac=0.5, random_state=1)
    got = job.to_pandas(job.compute_pairs(ds.con, pairs_in))
    want = full.merge(pairs_in, on=["lead_id", "as_of"])
    key = ["as_of", "lead_id"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True)[want.columns],
        want.sort_values(key).reset_index(drop=True),
    )


def test_pairs_at_attempt_times_see_nothing_at_or_after_the_attempt(sim_data):
    ds = contract.load(sim_data)
    att = ds.con.execute(
        "SELECT lead_id, ts AS as_of FROM contacts ORDER BY ts LIMIT 300").df()
    got = job.to_pandas(job.compute_pairs(ds.con, att))
    assert len(got) == len(att.drop_duplicates())
    # the attempt itself is not yet in the contact history it is scored with
    first = att.groupby("lead_id")["as_of"].min().rename("first").reset_index()
    m = got.merge(first, on="lead_id")
    at_first = m[m["as_of"] == m["first"]]
    assert (at_first["contact_attempts"] == 0).all()
