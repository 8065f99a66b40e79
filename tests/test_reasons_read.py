"""Reasons an advisor reads: at most N per model by magnitude with their sign, each sentence
once per row, singular and plural right, no "none recorded" filler, English or Simplified
Chinese (issue 22, item 4). Small models trained in a blink; no session fixtures."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from leadscore import lang as language
from leadscore.features import catalog

CJK = re.compile(r"[\u4e00-\u9fff]")
ZH = language.ZH


def _every_feature() -> list[catalog.Feature]:
    """The catalogue, the slot features, and each kind of vocabulary and lead-column one."""
    return [*catalog.CATALOG, *catalog.SLOT_CATALOG,
            *catalog.vocabulary_features(["trade_in_valuation"]),
            catalog.lead_column_feature("loan_preapproved", "float"),
            catalog.lead_column_feature("lead_origin", "category")]


def _sample(f: catalog.Feature) -> object:
    return "web" if f.dtype == "category" else 2.0


# --------------------------------------------------------------------------- the words


def test_counts_read_singular_or_plural_by_the_value():
    f = catalog.feature
    assert f("finance_calc_7d").sentence(1.0) == \
        "Used the finance calculator 1 time in the last 7 days"
    assert f("finance_calc_7d").sentence(3.0) == \
        "Used the finance calculator 3 times in the last 7 days"
    assert f("config_view_30d").sentence(0.0) == \
        "Opened the configurator 0 times in the last 30 days"
    assert f("config_view_30d").sentence(1.4) == \
        "Opened the configurator 1 time in the last 30 days"  # reads "1"
    assert f("config_view_30d").sentence(1.5) == \
        "Opened the configurator 2 times in the last 30 days"
    assert f("lead_age_days").sentence(1.0) == "Lead is 1 day old"
    assert f("uncontacted_hours").sentence(1.0) == "Waited 1 hour for a first contact"
    assert f("high_intent_7d").sentence(1.0) == \
        "1 price request, test drive, visit or call in the last 7 days"
    assert f("events_count_all").sentence(1.0) == "1 interaction over the whole history"
    assert f("days_since_any").sentence(1.0) == "Last active 1.0 days ago"  # "1.0" is plural
    vocab = catalog.vocabulary_features(["trade_in_valuation"])
    assert vocab[4].sentence(1.0) == "Last did trade_in_valuation 1 day ago"
    assert vocab[4].sentence(2.0) == "Last did trade_in_valuation 2 days ago"
    # the helper, not per-feature code: the choice goes by the value as it reads
    one, other, when = catalog.forms("{value:g} {bird|birds}")
    assert (one, other) == ("{value:g} bird", "{value:g} birds") and when == "g"
    assert catalog.Feature("x", says="{value:g} {bird|birds}").sentence(1.0) == "1 bird"
    assert catalog.Feature("x", says="{value:g} {bird|birds}").sentence(1.25) == "1.25 birds"


@pytest.mark.parametrize("lang", language.LANGS)
def test_no_feature_says_none_recorded_a_missing_value_is_a_reason_or_nothing(lang):
    for f in _every_feature():
        said = f.sentence(None, lang)
        assert said == f.sentence(float("nan"), lang)
        if said is None:
            continue  # not shown: the reason is dropped
        assert "none recorded" not in said.lower() and not said.rstrip().endswith(":")
        assert "{" not in said and said.strip() == said and said
        if lang == ZH:
            assert CJK.search(said), (f.name, said)
    # where missing means something, it says so in its own words
    assert catalog.feature("days_since_order").sentence(None) == "No order recorded"
    assert catalog.feature("days_since_store_visit").sentence(None) == \
        "No showroom visit in the last 90 days"
    assert catalog.feature("days_since_contact").sentence(None, ZH) == "尚未联系过"
    assert catalog.feature("night_share_14d").sentence(None) is None


def test_every_feature_has_chinese_words_that_render_and_differ_from_english():
    for f in _every_feature():
        v = _sample(f)
        en, zh = f.sentence(v), f.sentence(v, ZH)
        assert CJK.search(zh), (f.name, zh)
        assert zh != en and not CJK.search(en), f.name
        assert (f.sentence(None, ZH) is None) == (f.sentence(None) is None), f.name
    assert catalog.feature("finance_calc_7d").sentence(2.0, ZH) == "近 7 天使用金融计算器 2 次"


def test_language_tags_and_accept_language():
    n = language.normalize
    assert [n(t) for t in ("zh", "zh-CN", "ZH-cn", "zh-Hans", "zh_Hans_CN", "zh-Hans-SG")] == \
        [ZH] * 6
    assert [n(t) for t in ("en", "en-GB", "EN-us")] == ["en"] * 3
    assert [n(t) for t in ("zh-TW", "zh-Hant", "fr", "*", "", None)] == [None] * 6
    a = language.accept_language
    assert a("zh-CN,zh;q=0.9,en;q=0.8") == ZH
    assert a("fr-FR, en;q=0.5, zh;q=0.7") == ZH  # by q, not by position
    assert a("zh-TW, en-US;q=0.8") == "en"  # traditional is not ours: the next one is
    assert a("zh;q=0, en") == "en"  # q=0: not acceptable
    assert a("de, fr;q=0.9") is None and a("*") is None and a(None) is None
    assert a("en;q=0.9, zh-Hans;q=0.9") == "en"  # a tie: the first
    with pytest.raises(ValueError, match=r"LEADSCORE_LANG.*'fr'.*en, zh-CN"):
        language.from_env({"LEADSCORE_LANG": "fr"})
    assert language.from_env({}) == "en" and language.from_env({"LEADSCORE_LANG": "zh"}) == ZH


# --------------------------------------------------------------------------- the core


def _tiny_scorer(lang: str = "en"):
    """Three small models sharing features, so the same sentence can come from several
    models for one row; missing values that say something (days since) and that do not
    (the night share, the source)."""
    import lightgbm as lgb

    from leadscore.artifact import Calibrator, LeadModel
    from leadscore.scoring.scorer import Scorer

    rng = np.random.default_rng(3)
    n = 600
    levels = ["web", "walk-in", "phone"]
    df = _frame(n, rng, levels)
    y = ((df["sessions_7d"] + 3 * (df["source"] == "web") - df["days_since_any"].fillna(60) / 5
          + 2 * df["night_share_14d"].isna() + rng.normal(size=n)) > 1).astype(int)
    models = {}
    for name in ("conversion", "contact", "churn"):
        feats = list(df.columns[3:])
        booster = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 5,
                             "num_leaves": 7, "num_threads": 1, "seed": len(name)},
                            lgb.Dataset(df[feats], y if name != "churn" else 1 - y),
                            num_boost_round=8)
        models[name] = LeadModel(name, booster, feats, {"source": levels}, Calibrator("none"))
    return Scorer(models, lang=lang)


def _frame(n: int, rng, levels=("web", "walk-in", "phone")) -> pd.DataFrame:
    nan = np.nan
    return pd.DataFrame({
        "lead_id": [f"L{i:04d}" for i in range(n)], "dealer_id": "D01",
        "as_of": pd.Timestamp("2026-06-01", tz="UTC"),
        "days_since_any": np.where(rng.random(n) < .3, nan, rng.exponential(10, n).round(1)),
        "sessions_7d": rng.integers(0, 4, n) * 1.0,
        "night_share_14d": np.where(rng.random(n) < .4, nan, rng.random(n).round(2)),
        "finance_calc_7d": rng.integers(0, 3, n) * 1.0,
        "source": pd.Categorical(np.where(rng.random(n) < .3, None, rng.choice(levels, n)),
                                 categories=list(levels))})


def _per_row(scorer, frame, reasons=3, lang=None):
    """Each row's reasons from both faces (they must agree), as dicts."""
    batch = [json.loads(t) for t in scorer.score(frame, reasons=reasons, lang=lang)["reasons"]]
    records = frame.assign(as_of=frame["as_of"].astype(str)).astype(object)
    records = records.where(records.notna(), None).to_dict("records")
    http = [r["reasons"] for r in scorer.score_records(records, reasons=reasons, slots=0,
                                                       lang=lang)]
    assert batch == http
    return http


def test_top_n_by_magnitude_with_signs_each_sentence_once_per_row():
    """At most N per model, the largest |contribution| first, positive and negative
    together, each with its sign; a missing value without words is passed over for the
    next largest; a sentence another model gave first in the row is not repeated."""
    scorer = _tiny_scorer()
    frame = _frame(200, np.random.default_rng(9))
    for top in (1, 2, 3):
        got = _per_row(scorer, frame, reasons=top)
        repeated = 0
        for i, reasons in enumerate(got):
            sentences = [r["sentence"] for r in reasons]
            assert len(sentences) == len(set(sentences))  # once per row
            seen: set[str] = set()
            for name, model in scorer.models.items():
                mine = [r for r in reasons if r["model"] == name]
                assert len(mine) <= top
                assert all(r["sign"] == ("+" if r["contribution"] > 0 else "-") for r in mine)
                assert "none recorded" not in " ".join(r["sentence"] for r in mine)
                # what the model would list on its own: the top N shown, then the repeats
                # of earlier models' sentences taken out
                c = model.contributions(model.matrix(frame.iloc[[i]]))[0, :-1]
                row = frame.iloc[i]
                shown = [j for j, f in enumerate(model.features) if c[j] != 0 and not (
                    pd.isna(row[f]) and catalog.feature(f).sentence(None) is None)]
                order = sorted(shown, key=lambda j: (-abs(c[j]), j))[:top]
                want = [model.features[j] for j in order]
                said = {f: catalog.feature(f).sentence(None if pd.isna(row[f]) else row[f])
                        for f in want}
                kept = [f for f in want if said[f] not in seen]
                repeated += len(want) - len(kept)
                assert [r["feature"] for r in mine] == kept
                for r in mine:
                    assert r["contribution"] == pytest.approx(c[model.features.index(
                        r["feature"])], abs=1e-6)
                seen |= {said[f] for f in want}
        if top == 3:
            assert repeated > 0  # the models do share sentences: the dedupe was tested


def test_reasons_in_chinese_from_both_faces():
    en, zh = _tiny_scorer(), _tiny_scorer(ZH)
    frame = _frame(120, np.random.default_rng(4))
    got = _per_row(zh, frame)
    assert got == _per_row(en, frame, lang=ZH)  # the scorer's default or the call's
    english = _per_row(zh, frame, lang="en")
    sentences = [r["sentence"] for rs in got for r in rs]
    assert sentences and all(CJK.search(s) for s in sentences)
    assert not any(CJK.search(r["sentence"]) for rs in english for r in rs)
    assert [[(r["model"], r["feature"]) for r in rs] for rs in got] == \
        [[(r["model"], r["feature"]) for r in rs] for rs in english]
    with pytest.raises(ValueError, match="lang: unknown language 'fr'"):
        en.score(frame, lang="fr")


def test_slot_reason_in_chinese():
    from leadscore.scoring.contact_policy import _channel_sentence

    feats = {"night_share_30d": 0.5, "phone_response_rate": 0.2,
             "message_response_rate": 0.6}
    p = {"phone": 0.3, "wechat": 0.55, "sms": 0.1}
    assert _channel_sentence(feats, "wechat", p) == (
        "50% of activity between 22:00 and 06:00; replies to 60% of messages, answers 20% of "
        "calls; best chance of an answer by wechat (by channel: wechat 55%, phone 30%, sms 10%)")
    zh = _channel_sentence(feats, "wechat", p, lang=ZH)
    assert zh == ("50% 的活动在 22:00 至 06:00 之间；消息回复率 60%，电话接听率 20%；"
                  "通过微信联系最可能得到回应（各渠道：微信 55%，电话 30%，短信 10%）")
    when = "Fri 11:00 (UTC+08:00)"  # the lead's local time, as the slot grid labels it
    assert _channel_sentence(feats, "wechat", p, when, lang=ZH).endswith(
        f"在 {when} 通过微信联系最可能得到回应（各渠道：微信 55%，电话 30%，短信 10%）")


def test_csv_labels_each_reason_with_its_model_and_sign():
    from leadscore.nightly.batch import reasons_as_sentences

    text = json.dumps([
        {"model": "conversion", "feature": "finance_calc_7d", "value": 3.0,
         "contribution": 0.4, "sign": "+", "sentence": "近 7 天使用金融计算器 3 次"},
        {"model": "churn", "feature": "days_since_any", "value": None,
         "contribution": -0.1, "sign": "-", "sentence": "近 90 天没有任何活动"}],
        ensure_ascii=False)
    assert reasons_as_sentences(text, ZH) == \
        "[成交 +] 近 7 天使用金融计算器 3 次; [流失 -] 近 90 天没有任何活动"
    assert reasons_as_sentences(text).startswith("[conversion +] ")
    assert reasons_as_sentences("[]") == reasons_as_sentences(None) == ""


# --------------------------------------------------------------------------- the edges


@pytest.fixture
def http(tmp_path):
    from fastapi.testclient import TestClient

    from leadscore.serving import store as online
    from leadscore.serving.api import create_app
    from leadscore.serving.auth import KeyRing, write_key_file
    from leadscore.serving.runtime import Runtime

    frame = _frame(40, np.random.default_rng(5))
    online.write(frame.astype({"source": object}), tmp_path / "features.db")
    keys = write_key_file(tmp_path / "keys.json", {"t": ("reasons-key-1", ["D01"])})
    scorer = _tiny_scorer()
    runtime = Runtime(online.OnlineStore(tmp_path / "features.db"), KeyRing.from_file(keys),
                      loader=lambda: scorer, reload_seconds=0)
    assert runtime.reload()
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield client, list(frame["lead_id"])


def test_accept_language_chooses_the_reasons_language(http):
    client, ids = http

    def post(ids, header=None, reasons=3):
        headers = {"X-API-Key": "reasons-key-1"}
        if header is not None:
            headers["Accept-Language"] = header
        r = client.post("/score", json={"leads": [{"lead_id": i} for i in ids],
                                        "reasons": reasons}, headers=headers)
        assert r.status_code == 200, r.text
        return r

    few, many = ids[:3], ids  # the coalesced path and the thread-pool one
    for leads in (few, many):
        default = post(leads)
        assert default.headers["content-language"] == "en"
        for header in ("zh", "zh-CN", "zh-Hans", "zh-CN,zh;q=0.9,en;q=0.8"):
            r = post(leads, header)
            assert r.headers["content-language"] == ZH
            sentences = [x["sentence"] for res in r.json()["results"] for x in res["reasons"]]
            assert sentences and all(CJK.search(s) for s in sentences)
            for res in r.json()["results"]:
                said = [x["sentence"] for x in res["reasons"]]
                assert len(said) == len(set(said))
                assert all(x["sign"] in "+-" for x in res["reasons"])
        for header in ("en-US", "fr, de;q=0.5", "zh-TW", ""):
            r = post(leads, header)
            assert r.headers["content-language"] == "en"
            assert r.json() == default.json()  # English, as the deployment's default
    assert "accept-language" in post(few).headers["vary"].lower()


def test_a_bad_lang_is_refused_with_exit_code_2(tmp_path, monkeypatch):
    from leadscore.cli import app

    runner = CliRunner()
    args = ["rescore", "--data", str(tmp_path), "--as-of", "2026-06-01",
            "--out", str(tmp_path / "out")]
    got = runner.invoke(app, [*args, "--lang", "fr"])
    assert got.exit_code == 2
    assert "--lang: unknown language 'fr'; expected one of en, zh-CN" in got.output
    monkeypatch.setenv("LEADSCORE_LANG", "klingon")
    got = runner.invoke(app, args)
    assert got.exit_code == 2 and "LEADSCORE_LANG: unknown language 'klingon'" in got.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_scorer_takes_its_language_as_an_argument():
    """Like the contact rules: the edges read the environment, the scorer is given it."""
    from leadscore.scoring.scorer import Scorer

    assert Scorer({}).lang == "en" and Scorer({}, lang="zh").lang == ZH
    with pytest.raises(ValueError, match="lang: unknown language"):
        Scorer({}, lang="fr")
