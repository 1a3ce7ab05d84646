"""The synthetic worlds: the item-to-item links and the sparse text of the ``shop`` preset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coldstart.cli import main as cli_main
from coldstart.synth import PRESETS, SynthConfig, World, preset_config

SHOP = preset_config("shop", users=800, items=500, events_per_day=2000, new_users_per_day=200, new_items_per_day=40,
                     days=4, broken_share=0.0)


def _events(world: World, cfg: SynthConfig) -> pd.DataFrame:
    return pd.concat([world.events(d, cfg.events_per_day, np.random.default_rng([cfg.seed, 1, d])).assign(day=d)
                      for d in range(cfg.days)], ignore_index=True)


def test_links_raise_the_chance_of_the_linked_item():
    world = World(SHOP)
    events = _events(world, SHOP)
    index = {item: n for n, item in enumerate(world.item_ids)}
    last, before = events[events.day == SHOP.days - 1], events[events.day < SHOP.days - 1]
    earlier = before.groupby("user_id")["item_id"].agg(set)
    linked_hits = linked = 0
    for user, items in last.groupby("user_id")["item_id"].agg(set).items():
        links = {world.item_ids[b] for a in earlier.get(user, ()) for b in world.related[index[a]] if b >= 0}
        linked += len(links)
        linked_hits += len(links & items)
    chance = last.groupby("item_id")["user_id"].nunique().sum() / (last["user_id"].nunique() * len(world.item_ids))
    assert linked_hits / linked > 10 * chance
    # the same world without links: the linked items are no likelier than the rest
    plain = SynthConfig(**{**SHOP.__dict__, "relation_share": 0.0})
    assert (World(plain).related == -1).all()


def test_links_only_reach_usable_items_and_sequels_share_the_title():
    world = World(SHOP)
    events = _events(world, SHOP)
    index = {item: n for n, item in enumerate(world.item_ids)}
    positions = events["item_id"].map(index).to_numpy()
    assert (world.item_usable_from[positions] <= events["day"].to_numpy()).all()
    sequels = [j for j in range(SHOP.items, len(world.item_ids)) if world.series_title[j].split()[-1].isdigit()]
    assert sequels
    j = sequels[0]
    parent = world.related[j, 0]
    assert world.related[parent, 0] == j or world.series_title[parent].split()[-1].isdigit()
    assert world.series_title[j].startswith(world.series_title[parent].rsplit(" ", 1)[0])


def test_shop_users_have_few_events_and_text_is_sparse():
    world = World(SHOP)
    per_user = _events(world, SHOP).groupby("user_id").size()
    assert (per_user <= 5).mean() > 0.6
    rows = world.item_rows(np.arange(200), np.random.default_rng(0), "2024-01-01T06:00:00Z")
    titled = sum(bool(r["title"]) for r in rows)
    described = sum(bool(r["description"]) for r in rows)
    assert 0 < described < titled < len(rows)
    media_rows = World(SynthConfig()).item_rows(np.arange(50), np.random.default_rng(0), "2024-01-01T06:00:00Z")
    assert all(r["description"] and r["title"] for r in media_rows)


def test_presets_validate_and_reach_the_cli(tmp_path, capsys):
    assert set(PRESETS) == {"media", "shop"}
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("grocery")
    with pytest.raises(ValueError, match="relation_share"):
        preset_config("shop", relation_share=1.5)
    code = cli_main(["synth", "--preset", "shop", "--users", "50", "--items", "40", "--events-per-day", "300",
                     "--new-users-per-day", "10", "--new-items-per-day", "5", "--days", "2",
                     "--landing", str(tmp_path)])
    assert code == 0
    assert "landed 2 synthetic days" in capsys.readouterr().out
    assert cli_main(["synth", "--preset", "grocery", "--landing", str(tmp_path)]) == 2
