"""The nightly job's reasons are written as JSON text without building dicts; they must be
the very bytes ``json.dumps`` writes of the API's reason dicts, whatever the values hold."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from leadscore.serving.scorer import _reasons


def test_reasons_text_is_json_dumps_of_the_reason_dicts():
    feats = ["days_since_any", "source", "sessions_7d", "night_share_14d"]
    model = SimpleNamespace(name="conversion", features=feats,
                            categorical_mask=[f == "source" for f in feats])
    rng = np.random.default_rng(5)
    n = 300
    x = rng.random((n, len(feats))) * 40
    x[::7, 0] = np.nan              # missing: null, "none recorded"
    x[::11, 2] = np.inf             # not finite: json.dumps writes Infinity
    x[::13, 3] = 1e-7               # repr in exponent form
    x[:, 1] = rng.integers(0, 3, n)  # category codes; the names come from value_of
    names = ['web "portal"', "Händler-Showroom", None]
    contrib = np.column_stack([rng.normal(size=(n, len(feats))), np.zeros(n)])
    contrib[::17, 0] = -0.0
    contrib[::19, 1] = 1e-9          # rounds to 0.0: kept only while strictly positive
    value_of = lambda i, j: names[int(x[i, j])]  # noqa: E731

    as_text = _reasons(model, contrib, 2, x, value_of, as_json=True)
    as_dicts = _reasons(model, contrib, 2, x, value_of)
    assert len(as_text) == len(as_dicts) == n
    assert sum(map(len, as_text)) > n  # reasons were written
    for text, dicts in zip(as_text, as_dicts, strict=True):
        assert text == [json.dumps(d, ensure_ascii=False) for d in dicts]
    values = {d["value"] for rs in as_dicts for d in rs if d["feature"] != "source"}
    assert None in values and np.inf in values
    assert {d["value"] for rs in as_dicts for d in rs if d["feature"] == "source"} <= set(names)
