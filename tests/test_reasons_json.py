"""Reasons are selected once into a columnar table per model; the HTTP edge writes it as the
API's dicts and the file edge as JSON text without building dicts. The text must be the very
bytes ``json.dumps`` writes of the dicts, whatever the values hold."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from leadscore.scoring.scorer import _reason_dicts, _reason_json, _reason_table, _Reasons


def test_reasons_text_is_json_dumps_of_the_reason_dicts():
    feats = ["days_since_any", "source", "sessions_7d", "night_share_14d"]
    model = SimpleNamespace(name="conversion", features=feats,
                            categorical_mask=[f == "source" for f in feats])
    rng = np.random.default_rng(5)
    n = 300
    x = rng.random((n, len(feats))) * 40
    x[::7, 0] = np.nan              # missing: null, "No activity in the last 90 days"
    x[::11, 2] = np.inf             # not finite: json.dumps writes Infinity
    x[::23, 2] = -0.0               # distinct from 0.0 in the text
    x[::13, 3] = 1e-7               # repr in exponent form
    x[:, 1] = rng.integers(0, 4, n)  # category codes; the names come from the rows' column
    names = ['web "portal"', "Händler-Showroom", None, -0.0]
    contrib = np.column_stack([rng.normal(size=(n, len(feats))), np.zeros(n)])
    contrib[::17, 0] = -0.0
    contrib[::19, 1] = 1e-9          # rounds to 0.0: kept only while strictly positive

    def column(x):
        return lambda name: [names[int(v)] for v in x[:, 1]] if name == "source" else None

    def dicts(c, x, top=2):
        return _reason_dicts([_reason_table(model, c, top, x, column(x))], len(c))

    # a request's few rows (a sort, each reason its own entry) and a block (arg-max passes,
    # distinct entries) pick and write the same reasons, ties too
    ties = np.column_stack([rng.integers(-2, 3, size=(n, len(feats))) / 4, np.zeros(n)])
    for c in (contrib, ties):
        for m in (1, 3, 4):
            got = dicts(c[:m], x[:m])
            assert got == dicts(np.concatenate([c[:m]] * 40), np.concatenate([x[:m]] * 40))[:m]
            table = _reason_table(model, c[:m], 2, x[:m], column(x[:m]))
            assert _reason_json([table], m).tolist() == \
                [json.dumps(d, ensure_ascii=False) for d in got]

    table = _reason_table(model, contrib, 2, x, column(x))
    assert len(table.values) < len(table.row)  # distinct entries shared by rows
    # a second table (the slot model's) after the first, rows without any reasons
    slot = _Reasons("contact-slot", ("best_channel",), np.array([0, 5, n + 1]),
                    np.zeros(3, dtype=np.intp), np.arange(3), ["phone", 'sms "x"', "Brief"],
                    ["Call them", "Text 'em\n", "Ünïcode"], np.array([0.5, -0.0, 1e-7]))
    as_dicts = _reason_dicts([table, slot], n + 2)
    got = _reason_json([table, slot], n + 2)
    assert len(got) == n + 2 and got[n] == "[]" and len(as_dicts[n + 1]) == 1
    assert got.tolist() == [json.dumps(d, ensure_ascii=False) for d in as_dicts]
    assert as_dicts[5][-1]["model"] == "contact-slot"
    assert sum(map(len, as_dicts)) > n  # reasons were written
    values = {d["value"] for rs in as_dicts for d in rs if d["feature"] != "source"}
    assert None in values and np.inf in values
    cats = [d["value"] for rs in as_dicts for d in rs if d["feature"] == "source"]
    assert set(cats) <= set(names) and any(json.dumps(v) == "-0.0" for v in cats)
    assert _reason_json([], 2).tolist() == ["[]", "[]"]


def test_top_columns_order_as_a_stable_sort_whatever_the_block():
    """Blocks take arg-max passes, requests a sort: both pick the columns a stable sort
    picks, ties to the lower column (contributions tie often: equal splits, zeros)."""
    from leadscore.scoring.scorer import _top

    rng = np.random.default_rng(11)
    for n in (1, 3, 5, 200):
        c = rng.integers(-3, 4, size=(n, 9)).astype(float)  # many ties
        for top in (1, 3, 12):
            cols, vals = _top(c.copy(), top)
            k = min(top, 9)
            want = np.argsort(-c, axis=1, kind="stable")[:, :k]
            assert (cols == want).all()
            assert (vals == np.take_along_axis(c, want, axis=1)).all()


def test_negative_zero_reads_as_zero_whichever_is_seen_first():
    """Sentences are cached by value and -0.0 == 0.0: both must read the same."""
    from leadscore.features import catalog
    from leadscore.scoring.scorer import _sentence

    f = catalog.BY_NAME["sessions_7d"]
    assert f.sentence(-0.0) == f.sentence(0.0) == "0 browsing sessions in the last 7 days"
    _sentence.cache_clear()
    assert _sentence("sessions_7d", -0.0) == f.sentence(0.0)


def test_sentence_templates_are_used_only_where_they_say_what_the_feature_says(monkeypatch):
    """Numbers are formatted into sentence templates; a feature whose sentence is not its
    template's (an overriding class) falls back to the sentence itself, and the text stays
    json.dumps' of the dicts either way."""
    from dataclasses import dataclass

    from leadscore.features import catalog
    from leadscore.scoring import scorer

    @dataclass(frozen=True)
    class Loud(catalog.Feature):
        def sentence(self, value: object, lang: str = "en") -> str | None:
            said = super().sentence(value, lang)
            return said and said.upper()

    monkeypatch.setitem(catalog.BY_NAME, "loud", Loud("loud", says="Seen {value:.0f} times"))
    monkeypatch.setitem(catalog.BY_NAME, "quoted",
                        catalog.Feature("quoted", says='Said "{value:.1f}"\\ times\n'))
    for cache in (scorer._template, scorer._sentence):
        cache.cache_clear()
    assert scorer._template("loud") is None
    assert scorer._template("quoted") is not None

    model = SimpleNamespace(name="m", features=["loud", "quoted"], categorical_mask=[False] * 2)
    x = np.array([[3.0, -0.0], [np.nan, 2.25], [3.0, 1e-7]])
    contrib = np.array([[0.5, -0.25, 0.0], [-0.5, 0.25, 0.0], [0.1, 0.2, 0.0]])
    few = _reason_dicts([_reason_table(model, contrib, 2, x, None)], 3)
    assert few[0][0]["sentence"] == "SEEN 3 TIMES"
    assert few[0][1]["sentence"] == catalog.feature("quoted").sentence(0.0)
    big = _reason_table(model, np.concatenate([contrib] * 30), 2, np.concatenate([x] * 30), None)
    assert _reason_dicts([big], 90)[:3] == few
    assert _reason_json([big], 90).tolist()[:3] == [json.dumps(d, ensure_ascii=False)
                                                    for d in few]
    for cache in (scorer._template, scorer._sentence):
        cache.cache_clear()

