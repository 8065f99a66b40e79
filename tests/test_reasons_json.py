"""The nightly job's reasons are written as JSON text without building dicts; they must be
the very bytes ``json.dumps`` writes of the API's reason dicts, whatever the values hold."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from leadscore.scoring.scorer import _reasons, _reasons_text, _ReasonText


def test_reasons_text_is_json_dumps_of_the_reason_dicts():
    feats = ["days_since_any", "source", "sessions_7d", "night_share_14d"]
    model = SimpleNamespace(name="conversion", features=feats,
                            categorical_mask=[f == "source" for f in feats])
    rng = np.random.default_rng(5)
    n = 300
    x = rng.random((n, len(feats))) * 40
    x[::7, 0] = np.nan              # missing: null, "none recorded"
    x[::11, 2] = np.inf             # not finite: json.dumps writes Infinity
    x[::23, 2] = -0.0               # distinct from 0.0 in the text
    x[::13, 3] = 1e-7               # repr in exponent form
    x[:, 1] = rng.integers(0, 3, n)  # category codes; the names come from value_of
    names = ['web "portal"', "Händler-Showroom", None]
    contrib = np.column_stack([rng.normal(size=(n, len(feats))), np.zeros(n)])
    contrib[::17, 0] = -0.0
    contrib[::19, 1] = 1e-9          # rounds to 0.0: kept only while strictly positive
    value_of = lambda i, j: names[int(x[i, j])]  # noqa: E731

    # a request's few rows (a sort) and a block (arg-max passes) pick the same reasons, ties too
    ties = np.column_stack([rng.integers(-2, 3, size=(n, len(feats))) / 4, np.zeros(n)])
    for c in (contrib, ties):
        for m in (1, 3, 4):
            got = _reasons(model, c[:m], 2, x[:m], value_of)
            assert got == _reasons(model, np.concatenate([c[:m]] * 5), 2,
                                   np.concatenate([x[:m]] * 5), value_of)[:m]
            assert [json.dumps(d, ensure_ascii=False) for rs in got for d in rs] == \
                _reasons_text(model, c[:m], 2, x[:m], value_of)[1].to_pylist()

    rows, texts = _reasons_text(model, contrib, 2, x, value_of)
    as_dicts = _reasons(model, contrib, 2, x, value_of)
    assert len(rows) == len(texts) == sum(map(len, as_dicts)) > n  # reasons were written
    assert rows.tolist() == sorted(rows.tolist())
    assert texts.to_pylist() == [json.dumps(d, ensure_ascii=False) for rs in as_dicts for d in rs]
    # the per-row lists, with a second model's reasons after the first's and rows without any
    acc = _ReasonText(n + 2)
    acc.add(rows, texts)
    acc.add(rows[::-3][::-1], texts.take(np.arange(len(texts))[::-3][::-1].copy()))
    second = {}
    for i, t in zip(rows[::-3][::-1].tolist(), texts.to_pylist()[::-3][::-1], strict=True):
        second.setdefault(i, []).append(json.loads(t))
    got = acc.column()
    assert len(got) == n + 2 and got[n] == got[n + 1] == "[]"
    for i, dicts in enumerate(as_dicts):
        want = dicts + second.get(i, [])
        assert got[i] == json.dumps(want, ensure_ascii=False)
    values = {d["value"] for rs in as_dicts for d in rs if d["feature"] != "source"}
    assert None in values and np.inf in values
    assert {d["value"] for rs in as_dicts for d in rs if d["feature"] == "source"} <= set(names)


def test_top_columns_order_as_a_stable_sort_whatever_the_block():
    """Blocks take arg-max passes, requests a sort: both pick the columns a stable sort
    picks, ties to the lower column (contributions tie often: equal splits, zeros)."""
    from leadscore.scoring.scorer import _top_columns

    rng = np.random.default_rng(11)
    for n in (1, 3, 5, 200):
        c = rng.integers(-3, 4, size=(n, 9)).astype(float)  # many ties
        for top in (1, 3, 12):
            pos, neg = _top_columns(c, top)
            k = min(top, 9)
            assert (pos == np.argsort(-c, axis=1, kind="stable")[:, :k]).all()
            assert (neg == np.argsort(c, axis=1, kind="stable")[:, :k]).all()


def test_negative_zero_reads_as_zero_whichever_is_seen_first():
    """Sentences are cached by value and -0.0 == 0.0: both must read the same."""
    from leadscore.features import catalog
    from leadscore.scoring.scorer import _sentence

    f = catalog.BY_NAME["sessions_7d"]
    assert f.sentence(-0.0) == f.sentence(0.0) == "0 browsing sessions in the last 7 days"
    _sentence.cache_clear()
    assert _sentence("sessions_7d", -0.0) == f.sentence(0.0)


def test_sentence_templates_are_used_only_where_they_say_what_the_feature_says(monkeypatch):
    """The batch formats numbers into JSON-escaped sentence templates; a feature whose
    sentence is not its template's (an overriding class) falls back to the sentence itself,
    and the text stays json.dumps' of the dicts either way."""
    from dataclasses import dataclass

    from leadscore.features import catalog
    from leadscore.scoring import scorer

    @dataclass(frozen=True)
    class Loud(catalog.Feature):
        def sentence(self, value: object) -> str:
            return super().sentence(value).upper()

    monkeypatch.setitem(catalog.BY_NAME, "loud", Loud("loud", says="Seen {value:.0f} times"))
    monkeypatch.setitem(catalog.BY_NAME, "quoted",
                        catalog.Feature("quoted", says='Said "{value:.1f}"\\ times\n'))
    for cache in (scorer._sentence_json_template, scorer._sentence, scorer._sentence_json):
        cache.cache_clear()
    assert scorer._sentence_json_template("loud") is None
    assert scorer._sentence_json_template("quoted") is not None

    model = SimpleNamespace(name="m", features=["loud", "quoted"], categorical_mask=[False] * 2)
    x = np.array([[3.0, -0.0], [np.nan, 2.25], [3.0, 1e-7]])
    contrib = np.array([[0.5, -0.25, 0.0], [-0.5, 0.25, 0.0], [0.1, 0.2, 0.0]])
    dicts = _reasons(model, contrib, 2, x, None)
    assert dicts[0][0]["sentence"] == "SEEN 3 TIMES"
    assert [json.dumps(d, ensure_ascii=False) for rs in dicts for d in rs] == \
        _reasons_text(model, np.concatenate([contrib] * 2), 2, np.concatenate([x] * 2),
                      None)[1].to_pylist()[: sum(map(len, dicts))]
    for cache in (scorer._sentence_json_template, scorer._sentence, scorer._sentence_json):
        cache.cache_clear()
