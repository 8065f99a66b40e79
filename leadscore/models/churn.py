"""Churn risk: will this lead (or owner) go dark — no engagement within H days?

Engagement defaults to every inbound (lead-initiated) event type and H to 30 days; both are
configurable because owners' rhythms (service at ~90 days) differ from shoppers'. The
whole-history features (``HISTORY``) let the model read each owner's own service rhythm:
how often they come, when they last came, how overdue they are.

With ``btyd.use: init_score`` the trees do not start from a constant: they are boosted from
the classical repeat-purchase model's churn margin (BG/NBD, fitted without labels on the
engagement group's whole-history features), and the registered model carries that fit and
adds its margin at scoring (:class:`leadscore.classical.Start`). Short histories are where the
classical model's structure pays; the trees add what behaviour says beyond it. Where they
already say it, the start can cost: the default, ``btyd.use: auto``, fits both and keeps the
start unless the trees alone rank held-out training leads clearly better
(:func:`leadscore.training.btyd.choose_start`; the run's notes and model card say which).
"""

from leadscore.features.catalog import HISTORY, LEAD_BEHAVIOUR
from leadscore.models.spec import DEFAULT_PARAMS, Gate, ModelSpec, NoneWithin
from leadscore.schema import INBOUND_TYPES

SPEC = ModelSpec(
    name="churn",
    description="Probability that a lead or owner shows no engagement within the horizon.",
    entity="open_or_owner",
    label=NoneWithin(INBOUND_TYPES, days=30),
    features=(*LEAD_BEHAVIOUR, *HISTORY),
    # Shallow trees: churn reads a few smooth rhythms (how often, how long ago, how long
    # known: the classical model's summaries) with few interactions, and real logs hold a few
    # thousand customers; depth 3 ranks them as well as depth 6 (within the splits' noise)
    # on the real logs and the simulator (README), and its exact reasons cost a fraction.
    params={**DEFAULT_PARAMS, "num_leaves": 7, "max_depth": 3},
    # Platt scaling, not isotonic: it keeps the trees' ranking (isotonic's steps tie leads,
    # which costs AUC) and does not push the ends to 0 or 1 on a small calibration part
    # (benchmarks/real_data.py: higher ROC AUC on every data set, better churn calibration)
    calibration="sigmoid",
    gate=Gate("roc_auc", min_gain=0.002),
    grades=(0.7, 0.5, 0.3),
    truth_column="p_churn",
    known_limits=(
        "Owners' engagement is sparse; a 30-day horizon flags most owners between services.",
        "An owner's first service visit comes months after the order: until the training data "
        "spans it (about five months of orders and visits), owners score near 1 and their "
        "calibration is poor; benchmarks/model_quality.py reports it apart from open leads.",
    ),
)
