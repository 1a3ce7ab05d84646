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
    assert embed(spark, settings, D1).as_dict() == {"items": 3, "users": 1}  # u2 has no profile text: pooled later
    first = embeddings(lake)
    assert len(first) == 4 and (first["dim"] == 384).all()
    vec = np.stack(first["embedding"].to_numpy())
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-4)

    assert embed(spark, settings, D2).as_dict() == {"items": 0, "users": 0}  # rerun: nothing to do
    put_items(lake, {"b": "Loud action movie with cars and explosions"}, D2)
    assert embed(spark, settings, D2).as_dict() == {"items": 1, "users": 0}
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
    assert embed(spark, renamed, D2).as_dict() == {"items": 1, "users": 0}
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
    # on a cluster the node's cores are shared with other executors: outside a task, one thread
    assert worker_threads(settings.replace(spark_master="spark://127.0.0.1:7077", encoder_threads=0)) == 1


def test_vectors_do_not_depend_on_the_order_the_rows_arrive_in(spark, tmp_path):
    """The encoder pads each batch to its longest text, so a text's vector depends (in the last float bits) on
    its batch-mates: the same entities arriving in another file or task order (a cluster's, say) must meet
    the same batch-mates and get bit-identical vectors."""
    from tests.conftest import make_settings

    # Short texts of a few token lengths in batches of 4: which texts share a batch decides the padding
    # (on this set, one permutation of the input moves two vectors by 1.2e-7).
    words = ["sailing", "cars", "quiet", "loud", "sea", "film", "jazz", "chess", "rain", "desert"]
    texts = {f"i{n:02d}": " ".join(words[(n * 7 + j) % len(words)] for j in range(5 + (n * 13) % 4)) for n in range(40)}
    shuffled = [list(texts)[i] for i in np.random.default_rng(0).permutation(40)]
    lakes = []
    for name, chunks in (("one", [list(texts)]), ("shuffled", [shuffled[:13], shuffled[13:27], shuffled[27:]])):
        settings = make_settings(tmp_path / name, encoder_batch_size=4)
        lake = Lake.from_settings(settings)
        for chunk in chunks:
            put_items(lake, {i: texts[i] for i in chunk}, D1)
        # the second lake is read as a cluster might: each small file its own task
        conf = {"spark.sql.files.maxPartitionBytes": "1024", "spark.sql.files.openCostInBytes": "1024"} \
            if name == "shuffled" else {}
        saved = {k: spark.conf.get(k) for k in conf}
        try:
            for k, v in conf.items():
                spark.conf.set(k, v)
            assert embed(spark, settings, D1).as_dict() == {"items": 40, "users": 0}
        finally:
            for k, v in saved.items():
                spark.conf.set(k, v)
        lakes.append(embeddings(lake))
    a, b = (np.stack(frame["embedding"].to_numpy()) for frame in lakes)
    assert list(lakes[0].index) == list(lakes[1].index)
    assert np.array_equal(a, b), f"{int((a != b).any(axis=1).sum())} of {len(a)} vectors differ"
