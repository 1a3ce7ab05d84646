"""``coldstart report``: one self-contained HTML page about the recommendations and their quality.

Everything is inline (hand-made SVG charts, CSS; no script, no external file or URL), so the page can
be mailed or opened from disk. Sections:

* next-day quality of the model per slice over the nights (Recall@20, NDCG@20);
* the model against every baseline over the nights (Recall@20 for all users, cold users, cold items);
* the latest night as a table, with paired bootstrap 95 % intervals of model - baseline (Recall@20,
  all users) from the per-user values in ``evaluation_users``;
* catalogue coverage (share of the active items that appear in at least one list) and the share of
  new items (no interaction before the night) among the recommended rows, per scoring night.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from coldstart import storage
from coldstart.config import Settings
from coldstart.catalog import TARGET_SLICES
from coldstart.lake import Lake

log = logging.getLogger("coldstart.report")

HEADLINE_K = 20
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_BATCH_VALUES = 10_000_000
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


# The tables the report reads (checked before it renders anything).
REPORT_TABLES = ("evaluation", "evaluation_users", "items", "recommendations")


def default_path(settings: Settings) -> str:
    """report.html in the reports folder (setting reports, else <lake>/_reports), a path or an s3:// URI."""
    return storage.join(settings.reports_root(), "report.html")


def list_stats(lake: Lake) -> pd.DataFrame:
    """Per scoring night: active items, distinct items recommended, coverage and share of new items."""
    if not lake.exists("recommendations"):
        return pd.DataFrame(columns=["run_date", "active_items", "recommended_items", "coverage", "new_share", "rows"])
    items = lake.read_pandas("items", columns=["item_id", "active", "first_seen"])
    # distinct nights in Arrow: a Python set over every row's date took 14 s at 5.7M rows a night
    dates = sorted(pc.unique(lake.read_arrow("recommendations", columns=["run_date"]).column("run_date")).to_pylist())
    rows = []
    for day in dates:  # one night at a time: memory bounded by a night's lists
        recs = lake.read_arrow("recommendations", columns=["item_id", "item_is_new"], filters=[("run_date", "=", day)])
        active = int((items["active"] & (items["first_seen"] <= day)).sum())
        distinct = int(pc.count_distinct(recs.column("item_id")).as_py())
        new_rows = int(pc.sum(recs.column("item_is_new")).as_py() or 0)
        rows.append({"run_date": day, "active_items": active, "recommended_items": distinct,
                     "coverage": distinct / active if active else 0.0,
                     "new_share": new_rows / recs.num_rows if recs.num_rows else 0.0, "rows": recs.num_rows})
    return pd.DataFrame(rows)


def paired_bootstrap(per_user: pd.DataFrame, a: str, b: str, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict:
    """Mean of a - b over the users both methods have (one slice/metric/K) and its percentile 95 % interval.

    The unit resampled is the user, or the (night, user) pair when ``per_user`` has a ``run_date`` column
    (several nights: user-days)."""
    index = [c for c in ("run_date", "user_id") if c in per_user.columns]
    wide = per_user.pivot_table(index=index, columns="method", values="value", aggfunc="first")
    if a not in wide or b not in wide:
        return {"n": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    diff = (wide[a] - wide[b]).dropna().to_numpy()
    if len(diff) == 0:
        return {"n": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    if len(diff) < 2:  # every resample is the one value
        return {"n": int(len(diff)), "mean": float(diff.mean()), "low": float(diff[0]), "high": float(diff[0])}
    from scipy.stats import bootstrap

    # batch: resamples computed at a time, so that memory stays ~BOOTSTRAP_BATCH_VALUES floats for any n
    interval = bootstrap((diff,), np.mean, n_resamples=resamples, batch=max(1, BOOTSTRAP_BATCH_VALUES // len(diff)),
                         method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed)).confidence_interval
    return {"n": int(len(diff)), "mean": float(diff.mean()), "low": float(interval.low), "high": float(interval.high)}


# --------------------------------------------------------------------------------------------
# inline SVG
# --------------------------------------------------------------------------------------------
def line_chart(title: str, series: dict[str, list[tuple[dt.date, float]]], percent: bool = False,
               width: int = 560, height: int = 280) -> str:
    """A line chart as an inline <svg>: one line per series over dates, a legend, a tooltip per point."""
    esc = html.escape
    left, right, top, bottom = 56, 150, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(d, v) for values in series.values() for d, v in values if v is not None and np.isfinite(v)]
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
             f'<text x="{left}" y="18" class="t">{esc(title)}</text>']
    if not points:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2:.0f}" class="n">no data yet</text></svg>')
        return "".join(parts)
    dates = sorted({d for d, _ in points})
    y_max = max(v for _, v in points)
    y_max = 1.0 if percent and y_max > 0.5 else (y_max * 1.1 if y_max > 0 else 1.0)

    def x_of(d: dt.date) -> float:
        return left + (plot_w / 2 if len(dates) == 1 else plot_w * dates.index(d) / (len(dates) - 1))

    def y_of(v: float) -> float:
        return top + plot_h - plot_h * v / y_max

    def fmt(v: float) -> str:
        return f"{100 * v:.1f}%" if percent else f"{v:.3f}"

    for i in range(5):
        v = y_max * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y_of(v):.1f}" y2="{y_of(v):.1f}" class="g"/>'
                     f'<text x="{left - 6}" y="{y_of(v) + 4:.1f}" class="a" text-anchor="end">{fmt(v)}</text>')
    step = max(1, len(dates) // 6)
    for d in dates[::step]:
        parts.append(f'<text x="{x_of(d):.1f}" y="{top + plot_h + 18}" class="a" text-anchor="middle">'
                     f'{d.isoformat()[5:]}</text>')
    for n, (name, values) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        pts = sorted((d, v) for d, v in values if v is not None and np.isfinite(v))
        if len(pts) > 1:
            path = " ".join(f"{x_of(d):.1f},{y_of(v):.1f}" for d, v in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for d, v in pts:
            parts.append(f'<circle cx="{x_of(d):.1f}" cy="{y_of(v):.1f}" r="3" fill="{color}">'
                         f'<title>{esc(name)} {d.isoformat()}: {fmt(v)}</title></circle>')
        ly = top + 14 * n + 6
        parts.append(f'<rect x="{left + plot_w + 12}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + plot_w + 26}" y="{ly + 1}" class="a">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _series(frame: pd.DataFrame, by: str) -> dict[str, list[tuple[dt.date, float]]]:
    return {str(name): list(zip(group["run_date"], group["value"])) for name, group in frame.groupby(by, sort=False)}


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fafafa;border:1px solid #ddd}.t{font-size:13px;font-weight:600}.a{font-size:11px;fill:#444}
.n{font-size:13px;fill:#888}.g{stroke:#e3e3e3}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}p.note{color:#555;font-size:13px}"""


def render(lake: Lake) -> str:
    evaluation = lake.read_pandas("evaluation") if lake.exists("evaluation") else pd.DataFrame(
        columns=["run_date", "method", "slice", "metric", "k", "value", "n_users", "model_version"])
    evaluation = evaluation.sort_values(["run_date", "method", "slice"])
    head_k = evaluation[evaluation["k"] == HEADLINE_K]
    model = head_k[head_k["method"] == "model"]
    sections = []

    charts = [line_chart(f"Model Recall@{HEADLINE_K} by slice", _series(model[model["metric"] == "recall"], "slice")),
              line_chart(f"Model NDCG@{HEADLINE_K} by slice", _series(model[model["metric"] == "ndcg"], "slice"))]
    sections.append(("Next-day quality of the model, per slice", "".join(charts),
                     "Lists of night D-1 against the events of day D; a slice's value is the mean over its target users."))

    recall = head_k[head_k["metric"] == "recall"]
    charts = [line_chart(f"Recall@{HEADLINE_K}, {s}: model vs baselines", _series(recall[recall["slice"] == s], "method"))
              for s in TARGET_SLICES]
    sections.append(("The model against the baselines", "".join(charts),
                     "Baselines are fitted on the events up to D-1 and ranked under the same exclusions as the model."))

    if not evaluation.empty:
        last = max(evaluation["run_date"])
        latest = evaluation[(evaluation["run_date"] == last) & (evaluation["slice"] == "all")]
        table = latest.pivot_table(index="method", columns=["metric", "k"], values="value").round(4)
        table.columns = [f"{m}@{k}" for m, k in table.columns]
        table = table.reset_index()
        users = lake.read_pandas("evaluation_users", filters=[("run_date", "=", last)]) \
            if lake.exists("evaluation_users") else pd.DataFrame(columns=["method", "slice", "metric", "k", "user_id", "value"])
        users = users[(users["slice"] == "all") & (users["metric"] == "recall") & (users["k"] == HEADLINE_K)]
        intervals = []
        for method in table["method"]:
            if method == "model":
                intervals.append("")
                continue
            b = paired_bootstrap(users, "model", method)
            intervals.append("" if b["n"] == 0 else f"{b['mean']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}] (n={b['n']})")
        table[f"model - method, recall@{HEADLINE_K} (95% CI)"] = intervals
        sections.append((f"Latest night ({last}), all target users", _table(table),
                         f"Paired bootstrap over users ({BOOTSTRAP_RESAMPLES} resamples): an interval above 0 means "
                         f"the model beats that method on this night."))

    stats = list_stats(lake)
    cov = {"coverage": list(zip(stats["run_date"], stats["coverage"]))}
    new = {"share of new items": list(zip(stats["run_date"], stats["new_share"]))}
    charts = [line_chart("Catalogue coverage (share of active items recommended)", cov, percent=True),
              line_chart("Share of new items among recommended rows", new, percent=True)]
    detail = _table(stats.assign(coverage=stats["coverage"].round(4), new_share=stats["new_share"].round(4))) \
        if not stats.empty else ""
    sections.append(("What the lists contain, per scoring night", "".join(charts) + detail,
                     "New item: no interaction before the scoring night."))

    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p><div class='charts'>{content}</div>"
                   for title, content, note in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>coldstart report</title>"
            f"<style>{CSS}</style></head><body><h1>coldstart report</h1>"
            f"<p class='note'>Lake {html.escape(lake.root)}; generated {generated}.</p>{body}</body></html>")


def write_report(settings: Settings, output: str | Path | None = None) -> str:
    """Render the report from the lake and write it (default: <setting reports, else <lake>/_reports>/report.html)
    atomically (a reader sees the old report or the new one), local or on an object store; returns where
    it went. The logs of the tables it reads are checked first (CorruptTableError)."""
    path = storage.normalize(str(output)) if output else default_path(settings)
    lake = Lake.from_settings(settings)
    lake.check_tables(REPORT_TABLES)
    storage.write_text(path, render(lake))
    log.info("report written to %s", path)
    return path
