"""The embed stage through real Spark, Delta and the real encoder weights: only new or changed
content is encoded, reruns change nothing, a new encoder name re-embeds without touching old rows."""

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa

from coldstart.catalog import TABLES
from coldstart.embed import embed
from coldstart.lake import Lake

D1, D2 = dt.date(2024, 2, 1), dt.date(2024, 2, 2)


def put_items(lake, texts: dict[str, str], day):
    rows = [{"item_id": i, "title": t, "description": None, "tags": [], "attributes": [], "active": True,
             "content_text": t, "content_hash": hashlib.sha256(t.encode()).hexdigest(), "first_seen": D1,
             "first_interaction": None, "updated_at": None, "last_run_date": day} for i, t in texts.items()]
    lake.merge("items", pa.Table.from_pylist(rows, schema=TABLES["items"].schema))


def put_users(lake, texts: dict[str, str]):
    rows = [{"user_id": u, "profile": [("bio", t)] if t else [], "content_text": t,
             "content_hash": hashlib.sha256(t.encode()).hexdigest(), "first_seen": D1, "last_seen": D1}
            for u, t in texts.items()]
    lake.merge("users", pa.Table.from_pylist(rows, schema=TABLES["users"].schema))


def embeddings(lake):
    return lake.read_pandas("entity_embeddings").set_index(["entity_type", "entity_id", "encoder"]).sort_index()


def test_only_new_and_changed_entities_are_encoded(spark, settings):
    lake = Lake.from_settings(settings)
    put_items(lake, {"a": "A quiet film about sailing", "b": "Loud action movie with cars", "c": ""}, D1)
    put_users(lake, {"u1": "likes sailing and the sea", "u2": ""})
    assert embed(spark, settings, D1) == {"items": 3, "users": 1}  # u2 has no profile text: pooled later
    first = embeddings(lake)
    assert len(first) == 4 and (first["dim"] == 384).all()
    vec = np.stack(first["embedding"].to_numpy())
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-4)

    assert embed(spark, settings, D2) == {"items": 0, "users": 0}  # rerun: nothing to do
    put_items(lake, {"b": "Loud action movie with cars and explosions"}, D2)
    assert embed(spark, settings, D2) == {"items": 1, "users": 0}
    second = embeddings(lake)
    assert second.loc[("item", "a", settings.encoder_name), "run_date"] == D1
    assert second.loc[("item", "b", settings.encoder_name), "run_date"] == D2
    assert not np.allclose(second.loc[("item", "b", settings.encoder_name), "embedding"],
                           first.loc[("item", "b", settings.encoder_name), "embedding"])
    # paraphrase-level sanity on the stored vectors: the sailing user is closer to the sailing film
    u = np.asarray(second.loc[("user", "u1", settings.encoder_name), "embedding"])
    a = np.asarray(second.loc[("item", "a", settings.encoder_name), "embedding"])
    b = np.asarray(second.loc[("item", "b", settings.encoder_name), "embedding"])
    assert u @ a > u @ b


def test_a_new_encoder_name_re_embeds_and_leaves_old_rows(spark, settings):
    lake = Lake.from_settings(settings)
    put_items(lake, {"a": "A quiet film about sailing"}, D1)
    embed(spark, settings, D1)
    renamed = settings.replace(encoder_name="minilm-v2-maxlen64", encoder_max_length=64)
    assert embed(spark, renamed, D2) == {"items": 1, "users": 0}
    rows = embeddings(lake)
    assert set(rows.index.get_level_values("encoder")) == {settings.encoder_name, "minilm-v2-maxlen64"}
    assert rows.loc[("item", "a", settings.encoder_name), "run_date"] == D1


def test_a_small_night_is_one_task_with_every_core(settings, monkeypatch):
    """A night's few new entities take one Python worker (one encoder in memory) that uses all the
    cores; a catalogue is split over the local slots, each worker with its share of the cores."""
    from coldstart.embed import worker_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    local4 = settings.replace(spark_master="local[4]", encoder_threads=0)
    assert worker_threads(local4, tasks=1) == 8
    assert worker_threads(local4, tasks=2) == 4
    assert worker_threads(local4, tasks=16) == 2  # more tasks than slots: 4 run at once
    assert worker_threads(local4.replace(encoder_threads=3), tasks=1) == 3  # an explicit setting wins
