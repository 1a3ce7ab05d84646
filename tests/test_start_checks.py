"""Settings and arguments fail at the start, naming the variable or argument, before any stage commits;
errors that say what to fix print one line (the traceback with -v); reports follow the lake."""

import datetime as dt
from pathlib import Path

import pytest

from coldstart import jobs
from coldstart.cli import main
from coldstart.config import Settings, SettingsError
from coldstart.lake import Lake
from tests.conftest import make_settings
from tests.landing_helpers import event, land

D1 = dt.date(2024, 1, 1)


@pytest.mark.parametrize("name, value", [
    ("COLDSTART_LATENESS_DAYS", "1000000"),       # overflowed the date arithmetic of ingest
    ("COLDSTART_ACTIVE_DAYS", "1000000000"),
    ("COLDSTART_TOP_K", "1" + "0" * 30),
    ("COLDSTART_SEED", "-1"),
    ("COLDSTART_MODEL_DIM", "100000000"),
    ("COLDSTART_TRAIN_LEARNING_RATE", "inf"),
    ("COLDSTART_TRAIN_LEARNING_RATE", "nan"),
    ("COLDSTART_LOSS_WEIGHT_RATING", "-1"),
    ("COLDSTART_SPARK_DRIVER_MEMORY", "lots"),
    ("COLDSTART_ENCODER_SHA256", "abc"),
    ("COLDSTART_WEBHOOK_URL", "example.com/hook"),
    ("COLDSTART_SCHEDULE", "every night"),
    ("COLDSTART_EVENT_TYPES", "view," + "x" * 300),
    ("COLDSTART_LAKE", " "),
])
def test_every_bad_value_is_refused_at_load_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.load(env={name: value})


def test_every_numeric_setting_has_a_range():
    from dataclasses import fields

    from coldstart.config import RANGES

    numeric = {f.name for f in fields(Settings) if type(f.default) in (int, float)}
    assert numeric == set(RANGES)


def test_overflowing_setting_fails_the_cli_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLDSTART_LATENESS_DAYS", "1000000")
    assert main(["run", "--date", "2024-01-01"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "coldstart run: COLDSTART_LATENESS_DAYS=1000000: must be between 0 and 3650"


@pytest.mark.parametrize("argv", [["--top-k", "-1"], ["--top-k", "0"], ["--top-k", "5000"]])
def test_top_k_argument_is_checked_before_anything_runs(tmp_path, monkeypatch, capsys, argv):
    settings = make_settings(tmp_path)
    monkeypatch.setenv("COLDSTART_LAKE", settings.lake)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--date", "2024-01-01", *argv])
    assert exit_.value.code == 2 and "argument --top-k" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        jobs.main("score", ["--run-date", "2024-01-01", *argv])
    assert "argument --top-k" in capsys.readouterr().err
    assert not Path(settings.lake).exists()


def _env(monkeypatch, settings):
    for name in ("landing", "lake", "models", "reports"):
        monkeypatch.setenv(f"COLDSTART_{name.upper()}", getattr(settings, name))


def test_bad_encoder_path_fails_before_ingest_commits(tmp_path, monkeypatch, capsys):
    """Before: ingest committed the night's events, then embed failed on the path."""
    settings = make_settings(tmp_path)
    land(settings.landing, "interactions", D1, [event(i, D1) for i in range(5)])
    _env(monkeypatch, settings)
    monkeypatch.setenv("COLDSTART_ENCODER_PATH", str(tmp_path / "no-such-model"))
    assert main(["-q", "run", "--date", "2024-01-01"]) == 1
    assert f"COLDSTART_ENCODER_PATH={str(tmp_path / 'no-such-model')!r}: no such folder" in capsys.readouterr().err
    # the ingest job (spark-submit) checks the stages after it too
    assert jobs.main("ingest", ["--run-date", "2024-01-01"]) == 1
    assert "COLDSTART_ENCODER_PATH" in capsys.readouterr().err
    assert not Lake.from_settings(settings).exists("interactions")


def test_landing_error_is_one_line_and_the_traceback_comes_with_v(tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path)
    _env(monkeypatch, settings)
    assert main(["-q", "run", "--date", "2024-01-01", "--stages", "ingest"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coldstart run: landing folder missing: ") and "Traceback" not in err
    assert main(["-q", "-v", "run", "--date", "2024-01-01", "--stages", "ingest"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "LandingError" in err


def test_a_range_checks_every_nights_landing_before_the_first(tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path)
    land(settings.landing, "interactions", D1, [event(i, D1) for i in range(5)])
    _env(monkeypatch, settings)
    assert main(["-q", "run", "--from", "2024-01-01", "--to", "2024-01-02", "--stages", "ingest"]) == 1
    assert "interactions/date=2024-01-02" in capsys.readouterr().err
    assert not Lake.from_settings(settings).exists("interactions")


def test_reports_default_under_the_lake_not_the_working_directory(tmp_path, monkeypatch):
    from coldstart.report import write_report

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = make_settings(tmp_path, reports="")
    path = write_report(settings)
    assert path == str(Path(settings.lake) / "_reports" / "report.html") and Path(path).is_file()
    assert list(cwd.iterdir()) == []
    assert Settings.load(env={"COLDSTART_LAKE": "/data/lake"}).reports_root() == "/data/lake/_reports"
    assert Settings.load(env={"COLDSTART_REPORTS": "/r"}).reports_root() == "/r"


def test_reports_follow_a_lake_on_s3(s3_endpoint, tmp_path, monkeypatch):
    import uuid

    from coldstart import storage
    from coldstart.report import write_report
    from conftest import S3_BUCKET

    monkeypatch.chdir(tmp_path)
    lake = f"s3://{S3_BUCKET}/reports-{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, lake=lake, reports="")
    assert write_report(settings) == f"{lake}/_reports/report.html"
    assert "coldstart report" in storage.read_text(f"{lake}/_reports/report.html")
    assert not (tmp_path / "var").exists()
