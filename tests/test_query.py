"""The analyst examples of docs/analysts.md, run as written against the shared tiny pipeline run (read-only)."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from coldstart.cli import main
from coldstart.lake import Lake

DOC = Path(__file__).resolve().parent.parent / "docs" / "analysts.md"
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", DOC.read_text(), flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SQL_LINES = [line for lang, code in BLOCKS if lang == "bash" for line in code.splitlines() if line.startswith("coldstart sql")]
ENGINES = ["duckdb_connection", "polars", "deltalake", "get_session"]


def _run_example(code: str, lake: str) -> tuple[pd.DataFrame, str]:
    assert 'LAKE = "var/lake"' in code
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace('LAKE = "var/lake"', f"LAKE = {lake!r}"), str(DOC), "exec"), namespace)
    result = namespace["result"]
    if hasattr(result, "toPandas"):
        result = result.toPandas()
    elif hasattr(result, "to_pandas"):
        result = result.to_pandas()
    return pd.DataFrame(result).reset_index(drop=True), out.getvalue()


def test_the_doc_has_one_example_per_engine_and_the_cli_ones():
    assert [next(e for e in ENGINES if e in code) for code in PYTHON] == ENGINES
    assert len(SQL_LINES) == 3


def test_python_examples_agree_with_each_other_and_the_lake(tiny_run, spark):
    settings, plan, days, _ = tiny_run
    results = {}
    for engine, code in zip(ENGINES, PYTHON):
        frame, printed = _run_example(code, settings.lake)
        assert printed.strip(), engine
        frame = frame[["user_segment", "users", "rows", "new_share"]].astype({"users": int, "rows": int, "new_share": float})
        results[engine] = frame.sort_values("user_segment").reset_index(drop=True)
    recs = Lake.from_settings(settings).read_pandas("recommendations", filters=[("run_date", "=", days[-1])])
    expected = (recs.groupby("user_segment").agg(users=("user_id", "nunique"), rows=("user_id", "size"),
                                                 new_share=("item_is_new", "mean")).reset_index())
    assert len(expected) >= 1
    for engine, frame in results.items():
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False, rtol=1e-9, obj=engine)


@pytest.mark.parametrize("line", SQL_LINES)
def test_cli_sql_examples_print_or_write(line, tiny_run, tmp_path, monkeypatch, capsys):
    settings, *_ = tiny_run
    monkeypatch.setenv("COLDSTART_LAKE", settings.lake)
    args = shlex.split(line)[1:]
    if "--output" in args:
        name = args[args.index("--output") + 1]
        args[args.index("--output") + 1] = str(tmp_path / name)
    assert main(["-q", *args]) == 0
    printed = capsys.readouterr().out
    if "--output" not in args:
        header = printed.splitlines()[0].split()
        assert header == ["method", "slice", "k", "recall"] and len(printed.splitlines()) > 2
        assert "model" in printed and "als" in printed
        return
    path = Path(args[args.index("--output") + 1])
    assert printed.strip() == f"wrote {path}"
    frame = pd.read_csv(path) if path.suffix == ".csv" else pq.read_table(path).to_pandas()
    assert len(frame) > 0 and not frame.isna().all().any()


def test_sql_output_must_be_csv_or_parquet(tiny_run, tmp_path):
    from coldstart.query import run_sql

    settings, *_ = tiny_run
    with pytest.raises(ValueError, match=r"--output must end with \.csv or \.parquet"):
        run_sql(settings, "SELECT 1", str(tmp_path / "out.xlsx"))
