"""`coldstart report`: one self-contained HTML page from the lake."""

import re
from pathlib import Path

import numpy as np
import pandas as pd

from coldstart.cli import main
from coldstart.lake import Lake
from coldstart.report import line_chart, list_stats, paired_bootstrap, write_report

EXTERNAL = re.compile(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def test_report_of_the_tiny_run_is_self_contained(tiny_run, tmp_path, monkeypatch, capsys):
    settings, plan, days, _ = tiny_run
    monkeypatch.setenv("COLDSTART_LAKE", settings.lake)
    out = tmp_path / "r" / "report.html"
    assert main(["-q", "report", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 7
    assert not EXTERNAL.search(page) and "<script" not in page and "<link" not in page and "<img" not in page
    for text in ("Model Recall@20 by slice", "model vs baselines", "Catalogue coverage", "Share of new items",
                 "item_knn", "ease", "content_knn", "als", "popularity", "model - method"):
        assert text in page, text
    charts = dict(re.findall(r'<svg [^>]*aria-label="([^"]*)"(.*?)</svg>', page))
    for label in ("Model Recall@20 by slice", "Recall@20, all: model vs baselines",
                  "Catalogue coverage (share of active items recommended)", "Share of new items among recommended rows"):
        assert "<circle" in charts[label] and "no data yet" not in charts[label], label
    # one tooltip per (method, night) on the model-vs-baselines chart of all users
    assert len(re.findall(r"<title>als \d{4}-\d\d-\d\d: ", page)) >= len(days[1:])


def test_coverage_and_new_share_match_the_lists(tiny_run):
    settings, plan, days, _ = tiny_run
    lake = Lake.from_settings(settings)
    stats = list_stats(lake).set_index("run_date")
    items = lake.read_pandas("items")
    for day in days:
        recs = lake.read_pandas("recommendations", filters=[("run_date", "=", day)])
        active = (items.active & (items.first_seen <= day)).sum()
        assert stats.loc[day, "coverage"] == recs.item_id.nunique() / active
        assert np.isclose(stats.loc[day, "new_share"], recs.item_is_new.mean())


def test_report_of_an_empty_lake_says_there_is_no_data(settings):
    page = Path(write_report(settings)).read_text()
    assert page.count("no data yet") == 7 and not EXTERNAL.search(page)


def test_paired_bootstrap_interval():
    users = [f"u{i}" for i in range(50)]
    rng = np.random.default_rng(1)
    base = rng.random(50)
    frame = pd.DataFrame({"user_id": users * 2, "method": ["model"] * 50 + ["b"] * 50,
                          "value": np.r_[base + 0.1, base]})
    result = paired_bootstrap(frame, "model", "b")
    assert result["n"] == 50 and np.isclose(result["mean"], 0.1) and np.isclose(result["low"], 0.1)
    noisy = frame.assign(value=np.r_[base + rng.normal(0, 0.2, 50), base])
    interval = paired_bootstrap(noisy, "model", "b")
    assert interval["low"] < interval["mean"] < interval["high"]
    assert paired_bootstrap(frame, "model", "missing")["n"] == 0


def test_line_chart_escapes_names_and_marks_points():
    svg = line_chart("A <b> & c", {"x<y": [(pd.Timestamp("2024-01-01").date(), 0.5)]}, percent=True)
    assert "A &lt;b&gt; &amp; c" in svg and "x&lt;y" in svg and "50.0%" in svg and svg.count("<circle") == 1
