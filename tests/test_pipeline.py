"""The stages end to end in-process on a tiny replay slice (one shared run), and their failure modes."""

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from coldstart.features import window_start
from coldstart.catalog import MODEL_REGISTRY
from coldstart.lake import Lake


def test_every_active_user_has_a_list_of_active_unconsumed_items(tiny_run):
    settings, plan, days, _ = tiny_run
    lake = Lake.from_settings(settings)
    last = days[-1]
    recs = lake.read_pandas("recommendations", filters=[("run_date", "=", last)])
    users = lake.read_pandas("users")
    active = set(users.loc[users.last_seen >= window_start(settings, last), "user_id"])
    assert active and set(recs.user_id) == active
    assert recs.groupby(["user_id", "scene", "list"]).size().max() <= settings.top_k
    assert not recs.duplicated(["user_id", "scene", "list", "item_id"]).any()
    new = recs[recs.list == "new"]
    assert set(recs.list) == {"main", "new"} and new.item_is_new.all()
    assert new.groupby(["user_id", "scene"]).size().max() <= settings.new_list_size
    items = lake.read_pandas("items")
    assert set(recs.item_id) <= set(items.loc[items.active, "item_id"])
    consumed = lake.read_pandas("interactions", columns=["user_id", "item_id"])
    assert recs.merge(consumed, on=["user_id", "item_id"]).empty
    assert recs.reason.str.startswith("similar to").any()


def test_training_chain_warm_starts_from_the_day_before(tiny_run):
    settings, plan, days, _ = tiny_run
    registry = Lake.from_settings(settings).read_pandas("model_registry").sort_values("run_date")
    assert list(registry["mode"]) == ["cold", "warm", "warm"]
    assert registry.parent_version.iloc[1] == registry.model_version.iloc[0]
    assert registry.parent_version.iloc[2] == registry.model_version.iloc[1]
    metrics = json.loads(registry.metrics.iloc[-1])
    assert "val_interact_auc" in metrics and "val_rating_rmse" in metrics


def test_embeddings_cover_every_item_once(tiny_run):
    settings, *_ = tiny_run
    lake = Lake.from_settings(settings)
    emb = lake.read_pandas("entity_embeddings")
    items = lake.read_pandas("items")
    assert set(emb.loc[emb.entity_type == "item", "entity_id"]) == set(items.item_id)
    assert not emb.duplicated(["entity_type", "entity_id", "encoder"]).any()
    assert (emb.dim == 384).all()


def test_evaluation_compares_model_and_baselines_on_the_same_users(tiny_run):
    from coldstart.evaluate import pooled

    settings, plan, days, _ = tiny_run
    lake = Lake.from_settings(settings)
    ev = lake.read_pandas("evaluation")
    users = lake.read_pandas("evaluation_users")
    assert set(ev.run_date) == set(days[1:])
    assert {"model", "popularity"} <= set(ev.method)
    assert ev.value.between(0, 1).all()
    key = ["run_date", "slice", "metric", "k"]
    # every method is measured on the same target users, night by night and slice by slice
    assert (ev.groupby(key).n_users.nunique() == 1).all() and (ev.groupby(key).method.nunique() == ev.method.nunique()).all()
    # each figure is its per-user values pooled (evaluation_users holds what the means are made of)
    for day, part in users.groupby("run_date"):
        expected = pooled(part).set_index(["method", "slice", "metric", "k"])["value"]
        for row in ev[ev.run_date == day].itertuples():
            assert abs(row.value - expected[(row.method, row.slice, row.metric, row.k)]) < 1e-9, row
    wide = ev.pivot_table(index=key, columns="method", values="value")
    assert (wide["model"] != wide["popularity"]).any()  # two methods, two sets of figures


def test_rerun_of_a_night_changes_nothing(tiny_run, spark):
    from coldstart.pipeline import run_days

    settings, plan, days, _ = tiny_run
    lake = Lake.from_settings(settings)
    before = lake.read_pandas("recommendations", filters=[("run_date", "=", days[-1])])
    registry = lake.read_pandas("model_registry")
    run_days(settings, [days[-1]], stages=["embed", "train", "score"], spark=spark)
    after = lake.read_pandas("recommendations", filters=[("run_date", "=", days[-1])])
    key = ["user_id", "scene", "list", "rank"]
    pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True),
                                  after.sort_values(key).reset_index(drop=True))
    assert lake.read_pandas("model_registry").model_version.tolist() == registry.model_version.tolist()


def test_missing_or_corrupt_checkpoint_trains_cold(tiny_run, spark, tmp_path):
    from coldstart.model import checkpoint_files
    from coldstart.train import checkpoint_dir, train

    settings, plan, days, _ = tiny_run
    copy = settings.replace(models=str(tmp_path / "models"), lake=str(tmp_path / "lake"))
    shutil.copytree(settings.lake, copy.lake)
    shutil.copytree(settings.models, copy.models)
    lake = Lake(copy.lake)  # the copy's registry names the copy's checkpoints
    rows = lake.read_arrow("model_registry").to_pylist()
    for r in rows:
        r["checkpoint_uri"] = r["checkpoint_uri"].replace(str(Path(settings.models).resolve()), str(Path(copy.models).resolve()))
    lake.merge("model_registry", pa.Table.from_pylist(rows, schema=MODEL_REGISTRY.schema))
    prior = checkpoint_dir(copy, days[1])
    weights = Path(checkpoint_files(prior)["model.pt"])
    weights.write_bytes(weights.read_bytes()[:-10] + b"corrupted!")
    row = train(spark, copy, days[2])
    assert row.mode == "cold" and row.parent_version is None
    shutil.rmtree(prior)
    assert train(spark, copy, days[2]).mode == "cold"
    assert train(spark, copy, days[2], full_retrain=True).mode == "full"


def test_score_without_a_model_says_so(tiny_run, tmp_path):
    from coldstart.score import ModelMissingError, score

    settings, plan, days, _ = tiny_run
    with pytest.raises(ModelMissingError, match="run train first"):
        score(None, settings, days[-1] + dt.timedelta(days=5))


def test_run_days_rewrites_the_report_after_evaluate(tiny_run):
    """evaluate writes no report; run_days (``coldstart run``) rewrites it once its nights are evaluated."""
    settings, *_ = tiny_run
    assert "<svg" in (Path(settings.reports) / "report.html").read_text()


def test_a_stage_processs_peak_memory_is_its_own_not_its_parents():
    """stage_runs' driver peak must not report the size of whatever started the stage (a benchmark that
    built a 200k-user world, Airflow's supervisor): Linux carries ru_maxrss across fork and exec."""
    import subprocess
    import sys

    ballast = bytearray(600 * 2 ** 20)  # the parent holds 600 MiB, touched so that it is resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    child = subprocess.run([sys.executable, "-c", "from coldstart.pipeline import python_peak_rss; print(python_peak_rss())"],
                           capture_output=True, text=True, check=True)
    del ballast
    assert int(child.stdout) < 300 * 2 ** 20, f"child reported {int(child.stdout) >> 20} MiB"
