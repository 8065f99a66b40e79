"""Contact-slot policy: recommended slots versus the advisors' logged policy.

Simulates a dealer group, trains the contact-slot model (out-of-time split), and on held-out
attempts compares the true response rate (from the simulator) of:
  logged   – what the advisors did,
  model    – the best allowed slot/channel in the next 72 hours by the slot model,
  oracle   – the best allowed slot/channel by the true response probability.
Goal: (model - logged) / (oracle - logged) ≥ 0.8. Also the doubly robust off-policy estimate
(no truth needed: actions coarsened to channel x part of the day, the advisors' propensities
learned from the log) against the truth-based value of the model policy: goal within 0.02.

    .venv/bin/python benchmarks/contact_policy.py [--leads 50000] [--days 180] [--sample 40000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leads", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--sample", type=int, default=40000, help="held-out attempts evaluated")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="leadscore-policy-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlruns.db'}"
    os.chdir(tmp)

    from leadscore import contract
    from leadscore import simulate as sim
    from leadscore.models import get
    from leadscore.scoring.contact_policy import RulesFile, rules_path_from_env
    from leadscore.training import dataset, policy_eval
    from leadscore.training.run import load_truth
    from leadscore.training.trainer import fit

    t0 = time.perf_counter()
    data = tmp / "data"
    sim.write(sim.simulate(sim.SimConfig(n_leads=args.leads, days=args.days, seed=args.seed)),
              data)
    print(f"simulated {args.leads:,} leads × {args.days} days in {time.perf_counter() - t0:.1f}s")
    spec = get("contact-slot")
    ds = contract.load(data)
    t0 = time.perf_counter()
    ts = dataset.build(ds.con, spec)
    fr = fit(spec, ts)
    print(f"slot model: {ts.counts()} rows, {fr.best_iteration} trees, "
          f"{time.perf_counter() - t0:.1f}s")
    test = ts.part("test")
    prop = policy_eval.LoggingPolicy.fit(ts.frame[ts.frame["split"] != "test"])
    t0 = time.perf_counter()
    m = policy_eval.evaluate(fr.model, test, RulesFile.load(rules_path_from_env()), prop,
                             load_truth(data, "truth_leads"), load_truth(data, "truth_contacts"),
                             sample=args.sample)
    print(f"evaluated {int(m['policy_n']):,} held-out attempts in "
          f"{time.perf_counter() - t0:.1f}s\n")
    print(f"true response rate  logged {m['policy_true_logged']:.4f}   "
          f"model {m['policy_true_model']:.4f}   oracle {m['policy_true_oracle']:.4f}")
    gain = m["policy_gain_share"]
    print(f"(model - logged) / (oracle - logged) = {gain:.3f}   (goal ≥ 0.8: "
          f"{'met' if gain >= 0.8 else 'NOT met'})")
    err = abs(m["policy_dr_estimate"] - m["policy_true_model"])
    print(f"off-policy DR estimate {m['policy_dr_estimate']:.4f} "
          f"(standard error {m['policy_dr_se']:.4f}) vs truth "
          f"{m['policy_true_model']:.4f}: |error| = {err:.4f}   (goal ≤ 0.02: "
          f"{'met' if err <= 0.02 else 'NOT met'}); "
          f"direct-method estimate {m['policy_dm_estimate']:.4f}, "
          f"logged action matched the recommendation in {m['policy_match_share']:.1%}")


if __name__ == "__main__":
    main()
