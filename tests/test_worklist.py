"""The advisor's worklist: order, expected time, what changed, reasons, local call time."""

from __future__ import annotations

import json
import re

import pandas as pd
from typer.testing import CliRunner

from leadscore import worklist
from leadscore.cli import app

CJK = re.compile(r"[\u4e00-\u9fff]")


def _scored() -> pd.DataFrame:
    reason = [{"model": "conversion", "feature": "finance_calc_7d", "value": 2.0,
               "contribution": 0.8, "sign": "+", "sentence": "近 7 天使用金融计算器 2 次"},
              {"model": "churn", "feature": "days_since_any", "value": 3.0,
               "contribution": -0.2, "sign": "-", "sentence": "最近一次活动在 3 天前"}]
    rows = [
        # lead, grade, score, p7, p15, p30, p90, delta, trend, slot
        ("L-n", "N", 2, 0.0, 0.01, 0.02, 0.05, 0, "steady", None),
        ("L-b", "B", 30, 0.05, 0.1, 0.3, 0.4, -6, "falling", "2026-07-03T15:00:00+08:00"),
        ("L-h2", "H", 55, 0.4, 0.5, 0.55, 0.6, None, "new", "2026-07-03T11:00:00+08:00"),
        ("L-h1", "H", 71, 0.45, 0.6, 0.71, 0.8, 12, "rising", "2026-07-03T10:00:00+02:00"),
        ("owner", None, None, None, None, None, None, None, None, None),
    ]
    out = []
    for lid, g, s, p7, p15, p30, p90, d, t, slot in rows:
        out.append({
            "lead_id": lid, "dealer_id": "D1", "intent_grade": g, "lead_score": s,
            "p_order_7d": p7, "p_order_15d": p15, "p_order_30d": p30, "p_order_90d": p90,
            "score_delta": d, "trend": t, "best_channel": "phone" if slot else None,
            "best_slot_local": slot,
            "changes": json.dumps([{"sentence": "近 7 天使用金融计算器 2 次（之前 0 次）：+12"}]
                                  if lid == "L-h1" else [], ensure_ascii=False),
            "reasons": json.dumps(reason, ensure_ascii=False),
        })
    return pd.DataFrame(out).astype({"lead_score": "Int64", "score_delta": "Int64"})


def test_order_is_grade_then_score_owners_last():
    assert worklist.order(_scored())["lead_id"].tolist() == ["L-h1", "L-h2", "L-b", "L-n",
                                                             "owner"]


def test_lines_say_grade_time_change_call_and_reasons():
    text = worklist.lines(_scored(), top=2)
    assert text[0] == "H  L-h1  score 71  +12 (rising)  expected order: within 7 days (45%)"
    assert "   call: phone, Fri 10:00 (UTC+02:00)" in text  # the lead's own zone
    assert any(line.startswith("   changed: ") for line in text)
    assert "   why: [conversion +] 近 7 天使用金融计算器 2 次" in text
    assert "   why: [churn -] 最近一次活动在 3 天前" in text
    assert text[text.index("H  L-h2  score 55  (new)  expected order: within 7 days (40%)")
                + 1] == "   call: phone, Fri 11:00 (UTC+08:00)"
    falling = worklist.lines(_scored(), top=3)
    assert "B  L-b  score 30  -6 (falling)  expected order: within 30 days (30%)" in falling


def test_cli_worklist_in_chinese(tmp_path):
    out = tmp_path / "scores"
    out.mkdir()
    _scored().to_parquet(out / "part-00000.parquet")
    r = CliRunner().invoke(app, ["worklist", "--scores", str(out), "--top", "3",
                                 "--lang", "zh-CN"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("H  L-h1  评分 71  +12 (上升)  预计 7 天内下单（45%）")
    assert "   联系: 电话, Fri 10:00 (UTC+02:00)" in lines
    assert "   原因: [成交 +] 近 7 天使用金融计算器 2 次" in lines
    assert all(CJK.search(line) for line in lines if not line.startswith("   联系"))
    assert CliRunner().invoke(app, ["worklist", "--scores", str(out), "--lang",
                                    "fr"]).exit_code == 2
    missing = CliRunner().invoke(app, ["worklist", "--scores", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "not a rescore output" in missing.output
