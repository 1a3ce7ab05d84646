from dataclasses import fields

import pytest

from coldstart.config import Settings, SettingsError, describe


def test_defaults_live_under_var():
    s = Settings.load(env={})
    assert (s.landing, s.lake, s.models) == ("var/landing", "var/lake", "var/models")
    assert s.spark_master == "local[2]"


def test_environment_overrides_and_types():
    s = Settings.load(env={"COLDSTART_TOP_K": "7", "COLDSTART_BASELINES": "false",
                           "COLDSTART_EVENT_TYPES": "view, buy"})
    assert s.top_k == 7 and s.baselines is False and s.event_types == ["view", "buy"]


@pytest.mark.parametrize("name,value", [("COLDSTART_TOP_K", "many"), ("COLDSTART_TOP_K", "0"),
                                        ("COLDSTART_BASELINES", "perhaps"), ("COLDSTART_ENCODER_DEVICE", "tpu"),
                                        ("COLDSTART_SCORE_PREFILTER", "maybe"),
                                        ("COLDSTART_SPARK_MEMORY_FRACTION", "1.5"),
                                        ("COLDSTART_TRAIN_ID_LEARNING_RATE", "0"),
                                        ("COLDSTART_TRAIN_LEARNING_RATE", "-0.1"),
                                        ("COLDSTART_COLD_USER_POPULARITY_BOOST", "-1")])
def test_bad_value_names_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.load(env={name: value})


def test_toml_file_and_precedence(tmp_path):
    path = tmp_path / "coldstart.toml"
    path.write_text('[coldstart]\ntop_k = 11\nlake = "/data/lake"\n')
    s = Settings.load(env={"COLDSTART_CONFIG": str(path), "COLDSTART_TOP_K": "12"})
    assert s.lake == "/data/lake" and s.top_k == 12  # the environment beats the file


def test_toml_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("top_kk = 3\n")
    with pytest.raises(SettingsError, match="top_kk"):
        Settings.load(env={"COLDSTART_CONFIG": str(path)})


def test_describe_lists_every_setting():
    lines = describe().splitlines()
    assert len(lines) == len(fields(Settings))
    for f, line in zip(fields(Settings), lines):
        assert line.startswith(f"COLDSTART_{f.name.upper()} ") and line.endswith(f.metadata["doc"]), f.name


def test_table_docs_are_in_sync_with_the_catalog():
    from pathlib import Path

    from coldstart.docs import tables_markdown

    committed = (Path(__file__).resolve().parent.parent / "docs" / "tables.md").read_text()
    assert committed == tables_markdown(), "run: python -m coldstart.docs > docs/tables.md"


def test_spark_session_takes_the_memory_fraction(spark):
    from tests.conftest import SPARK_MEMORY_FRACTION

    assert SPARK_MEMORY_FRACTION != Settings.load(env={}).spark_memory_fraction  # so a hard-coded default fails
    assert spark.sparkContext.getConf().get("spark.memory.fraction") == str(SPARK_MEMORY_FRACTION)
