"""Ingest validation: every rejection reason, fuzzed files, redeliveries, lateness, crashes, and the synth generator.

Most reasons are checked on the validator directly (parse_file on a real file, no Spark); the
Spark-level tests combine several cases per ingest run to keep the suite fast.
"""

import collections
import csv
import datetime as dt
import json
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from coldstart import ingest as ingest_module
from coldstart.catalog import TABLES
from coldstart.ingest import AuditError, Rules, ingest, parse_file
from coldstart.lake import Lake
from coldstart.landing import day_dir, mark_complete
from coldstart.synth import BROKEN_KINDS, SynthConfig, synth
from tests.conftest import make_settings
from tests.landing_helpers import event, land

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
RULES = Rules(D1, 1, ("view", "click", "like", "rate", "purchase"), 100)


def parsed(tmp_path, source, lines, name="f.jsonl", rules=RULES) -> pa.Table:
    """Write lines (dicts as JSON, str/bytes as they are) to a file and validate it."""
    path = tmp_path / name
    data = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x if isinstance(x, bytes) else x.encode()) + b"\n"
                    for x in lines)
    path.write_bytes(data)
    return pa.Table.from_batches(list(parse_file(source, str(path), rules)))


def reasons(table: pa.Table) -> list:
    return table.column("reason").to_pylist()


# --- one test per rejection reason (validator level) ----------------------------------------------------
GOOD = event(1, D1)


@pytest.mark.parametrize("line, reason", [
    ('{"event_id": "e1", "user_id": ', "malformed_record"),
    ('["a list"]', "malformed_record"),
    ({k: v for k, v in GOOD.items() if k != "user_id"}, "missing_field"),
    ({k: v for k, v in GOOD.items() if k != "ts"}, "missing_field"),
    ({**GOOD, "item_id": ["i1"]}, "wrong_type"),
    ({**GOOD, "user_id": True}, "wrong_type"),
    ({**GOOD, "value": "high"}, "wrong_type"),
    ({**GOOD, "scene": {"a": 1}}, "wrong_type"),
    ({**GOOD, "ts": [2024]}, "wrong_type"),
    ({**GOOD, "event_type": "teleport"}, "unknown_event_type"),
    ({**GOOD, "ts": "yesterday"}, "bad_timestamp"),
    ({**GOOD, "ts": "2024-03-01T12:00:00"}, "bad_timestamp"),   # no zone
    ({**GOOD, "ts": "2024-13-45T12:00:00Z"}, "bad_timestamp"),
    ({**GOOD, "ts": 1e20}, "bad_timestamp"),
    ({**GOOD, "ts": "2024-02-28T23:59:59Z"}, "late_timestamp"),  # > 1 day before the run date
    ({**GOOD, "ts": "2024-03-02T00:00:00Z"}, "future_timestamp"),  # judged against the run date
    ({**GOOD, "event_id": ""}, "empty_id"),
    ({**GOOD, "item_id": "   "}, "empty_id"),
    ({**GOOD, "scene": "s" * 300}, "oversize_text"),
    ({**GOOD, "user_id": "u" * 300}, "oversize_text"),
    (json.dumps(GOOD).replace('"u1"', '"u\udcff"').encode("utf-8", "surrogateescape"), "invalid_utf8"),
])
def test_each_rejection_reason(tmp_path, line, reason):
    table = parsed(tmp_path, "interactions", [GOOD, line])
    assert reasons(table) == [None, reason]
    bad = table.slice(1).to_pylist()[0]
    assert bad["line"] == 2 and bad["raw"] and bad["detail"] and bad["source_file"].endswith("f.jsonl")


def test_accepted_forms_of_the_contract(tmp_path):
    rows = [{**GOOD, "ts": 1709294400}, {**GOOD, "ts": "1709294400"}, {**GOOD, "ts": "2024-03-01T23:30:00+01:00"},
            {**GOOD, "ts": "2024-02-29T00:00:00Z"}, {**GOOD, "ts": "2024-03-01 08:00:00.250+0000"},
            {**GOOD, "value": 4}, {**GOOD, "value": "3.5"}, {**GOOD, "scene": None}, {**GOOD, "event_id": 17}]
    table = parsed(tmp_path, "interactions", rows)
    assert reasons(table) == [None] * len(rows)
    ts = table.column("event_ts").to_pylist()
    assert ts[2] == dt.datetime(2024, 3, 1, 22, 30, tzinfo=dt.timezone.utc)
    assert ts[0] == ts[1] == dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)
    assert table.column("value").to_pylist()[5:7] == [4.0, 3.5]
    assert table.column("scene").to_pylist()[7] == "default" and table.column("event_id").to_pylist()[8] == "17"
    # 23:30 at -01:00 is 00:30 UTC the next day: in the future of the run date
    assert reasons(parsed(tmp_path, "interactions", [{**GOOD, "ts": "2024-03-01T23:30:00-01:00"}])) == ["future_timestamp"]


def test_csv_wrong_column_count_and_types(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("event_id,user_id,item_id,event_type,value,ts,scene\n"
                    "e1,u1,i1,rate,4.5,2024-03-01T10:00:00Z,home\n"
                    "e2,u1,i1,click,,2024-03-01T10:00:00Z\n"
                    "\n"
                    'e3,u1,"i,1",click,,1709287200,\n'
                    'e4,u1,"i1,click,,1709287200,home\n'
                    "e5,,i1,click,,2024-03-01T10:00:00Z,home\n")
    table = pa.Table.from_batches(list(parse_file("interactions", str(path), RULES)))
    assert reasons(table) == [None, "malformed_record", None, "malformed_record", "missing_field"]
    assert table.column("line").to_pylist() == [2, 3, 5, 6, 7]  # the blank line 4 is not a row
    assert table.column("item_id").to_pylist()[2] == "i,1" and table.column("value").to_pylist()[0] == 4.5


def test_items_and_users_read_the_same_from_jsonl_csv_and_parquet(tmp_path):
    item = {"item_id": "i1", "title": "Blue boat", "description": "A boat.", "tags": ["sea", "sail"],
            "attributes": {"year": "1999"}, "active": True, "updated_at": "2024-03-01T06:00:00Z"}
    user = {"user_id": "u1", "profile": {"age": "31", "city": "Oslo"}, "updated_at": "2024-03-01T06:00:00Z"}
    from_jsonl = parsed(tmp_path, "items", [item])
    with open(tmp_path / "items.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(item))
        writer.writerow(["i1", "Blue boat", "A boat.", "sea|sail", '{"year": 1999}', "true", "2024-03-01T06:00:00Z"])
    pq.write_table(pa.Table.from_pylist([item], schema=pa.schema([
        ("item_id", pa.string()), ("title", pa.string()), ("description", pa.string()), ("tags", pa.list_(pa.string())),
        ("attributes", pa.map_(pa.string(), pa.string())), ("active", pa.bool_()), ("updated_at", pa.string())])),
        tmp_path / "items.parquet")
    for name in ("items.csv", "items.parquet"):
        other = pa.Table.from_batches(list(parse_file("items", str(tmp_path / name), RULES)))
        assert reasons(other) == [None]
        for column in ("content_text", "content_hash", "tags_json", "attributes_json", "active", "updated_at"):
            assert other.column(column).to_pylist() == from_jsonl.column(column).to_pylist(), (name, column)
    assert from_jsonl.column("content_text").to_pylist() == ["Blue boat | tags: sea, sail | A boat. | year: 1999"]

    users_jsonl = parsed(tmp_path, "users", [user])
    (tmp_path / "users.csv").write_text('user_id,profile,updated_at\nu1,"{""age"": 31, ""city"": ""Oslo""}",'
                                        "2024-03-01T06:00:00Z\n")
    pq.write_table(pa.Table.from_pylist([user], schema=pa.schema([
        ("user_id", pa.string()), ("profile", pa.map_(pa.string(), pa.string())), ("updated_at", pa.string())])),
        tmp_path / "users.parquet")
    for name in ("users.csv", "users.parquet"):
        other = pa.Table.from_batches(list(parse_file("users", str(tmp_path / name), RULES)))
        assert reasons(other) == [None]
        assert other.column("content_hash").to_pylist() == users_jsonl.column("content_hash").to_pylist(), name


def test_item_and_user_rejections(tmp_path):
    base = {"item_id": "i1", "title": "t"}
    table = parsed(tmp_path, "items", [base, {"title": "no id"}, {**base, "tags": 5}, {**base, "attributes": [1]},
                                       {**base, "active": "maybe"}, {**base, "description": "d" * 101},
                                       {**base, "item_id": ""}, {**base, "updated_at": "soon"}])
    assert reasons(table) == [None, "missing_field", "wrong_type", "wrong_type", "wrong_type", "oversize_text",
                              "empty_id", "bad_timestamp"]
    table = parsed(tmp_path, "users", [{"user_id": "u1"}, {"user_id": "u2", "profile": "not json"},
                                       {"user_id": "u3", "profile": {"bio": "b" * 101}}, {"profile": {}}])
    assert reasons(table) == [None, "wrong_type", "oversize_text", "missing_field"]


def test_unreadable_parquet_file_is_one_quarantined_row(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    table = pa.Table.from_batches(list(parse_file("interactions", str(path), RULES)))
    assert reasons(table) == ["malformed_record"] and "unreadable Parquet" in table.column("detail")[0].as_py()


# --- fuzzing: nothing read is lost --------------------------------------------------------------------
HUGE = int("9" * 401)  # past float64 (float(HUGE) raises OverflowError), still JSON


def _corrupt(line: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return line[: rng.randrange(1, len(line))]
    if kind == 1:
        data = bytearray(line)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    row = json.loads(line)
    if kind == 2:
        del row[rng.choice(list(row))]
    elif kind == 3:
        field = rng.choice(list(row))
        row[field] = rng.choice([[1], {"a": 1}, True, 3.5, None, ""])
    elif kind == 4:
        return line + b"}"
    elif kind == 5:  # numbers out of range: huge integers, their negatives, infinities and NaN (JSON extensions)
        field = rng.choice(["value", "ts", "event_id", "scene", "event_type"])
        row[field] = rng.choice([HUGE, -HUGE, float("inf"), float("-inf"), float("nan"), 10 ** 19, 1e308])
    else:  # a text that is almost a number
        row[rng.choice(["value", "ts"])] = rng.choice(["9" * 401, "-" + "9" * 401, "1e999", "0x10", "1_000", " 4 "])
    return json.dumps(row).encode()


def fuzzed_lines(seed: int, n: int, day: dt.date, prefix: str) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        line = json.dumps(event(i, day, event_id=f"{prefix}{i}")).encode()
        lines.append(_corrupt(line, rng) if rng.random() < 0.5 else line)
    return lines


def test_fuzzed_file_every_line_is_one_row(tmp_path):
    lines = fuzzed_lines(7, 400, D1, "fz")
    lines[0] = BOM + lines[0]  # a UTF-8 BOM before the first line is part of the encoding, not of the data
    table = parsed(tmp_path, "interactions", lines)
    non_blank = [i + 1 for i, line in enumerate(lines) if line.strip(b" \t\r\n")]
    assert table.column("line").to_pylist() == non_blank
    bad = table.filter(pc.is_valid(table.column("reason")))
    assert 100 < bad.num_rows < 300 and pc.all(pc.is_valid(bad.column("raw"))).as_py()
    assert set(bad.column("reason").to_pylist()) <= set(ingest_module.REASONS)
    assert pc.all(pc.is_valid(bad.column("detail"))).as_py()


# --- hostile values: quarantined with file and line, never fatal ----------------------------------------
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("row, reason", [
    ({**GOOD, "value": HUGE}, "wrong_type"),
    ({**GOOD, "value": -HUGE}, "wrong_type"),
    ({**GOOD, "ts": HUGE}, "bad_timestamp"),
    ({**GOOD, "ts": -HUGE}, "bad_timestamp"),
    ({**GOOD, "value": "9" * 401}, "wrong_type"),
    ({**GOOD, "ts": "9" * 401}, "bad_timestamp"),
    ({**GOOD, "value": float("nan")}, "wrong_type"),
    ({**GOOD, "ts": float("nan")}, "bad_timestamp"),
    ({**GOOD, "ts": 10 ** 19}, "bad_timestamp"),
    ({**GOOD, "event_id": HUGE}, "oversize_text"),
    ("[" * 100_000, "malformed_record"),  # deeper than the JSON parser's stack (RecursionError)
])
def test_numbers_out_of_range_are_quarantined(tmp_path, row, reason):
    """Before: a 401-digit integer in value or ts raised OverflowError and stopped the night."""
    table = parsed(tmp_path, "interactions", [GOOD, row, GOOD])
    assert reasons(table) == [None, reason, None]
    bad = table.slice(1, 1).to_pylist()[0]
    assert bad["line"] == 2 and bad["source_file"].endswith("f.jsonl") and bad["raw"] and bad["detail"]


def test_numbers_out_of_range_in_items_users_and_parquet(tmp_path):
    table = parsed(tmp_path, "items", [{"item_id": "i1", "updated_at": HUGE}, {"item_id": "i2", "active": HUGE},
                                       {"item_id": "i3", "attributes": {"n": HUGE}}, {"item_id": "i4"}])
    assert reasons(table) == ["bad_timestamp", "wrong_type", "oversize_text", None]  # 401 characters > 100
    assert reasons(parsed(tmp_path, "users", [{"user_id": "u1", "updated_at": -HUGE}])) == ["bad_timestamp"]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"event_id": ["p1", "p2"], "user_id": ["u1", "u1"], "item_id": ["i1", "i1"],
                             "event_type": ["view", "view"], "value": [1.0, float("inf")],
                             "ts": pa.array([1709294400, 2 ** 62], pa.int64())}), path)
    table = pa.Table.from_batches(list(parse_file("interactions", str(path), RULES)))
    assert reasons(table) == [None, "wrong_type"]


def test_a_utf8_bom_is_accepted_in_csv_and_jsonl(tmp_path):
    """Before: CSV with a BOM quarantined every row as "event_id is missing"; JSONL's line 1 was malformed."""
    header = "event_id,user_id,item_id,event_type,value,ts,scene\n"
    (tmp_path / "bom.csv").write_bytes(BOM + (header + "c1,u1,i1,rate,5,2024-03-01T09:00:00Z,home\n"
                                              "c2,u2,i9,click,,1709283600,\n").encode())
    table = pa.Table.from_batches(list(parse_file("interactions", str(tmp_path / "bom.csv"), RULES)))
    assert reasons(table) == [None, None] and table.column("event_id").to_pylist() == ["c1", "c2"]
    table = parsed(tmp_path, "interactions", [BOM + json.dumps(GOOD).encode(), GOOD])
    assert reasons(table) == [None, None] and table.column("line").to_pylist() == [1, 2]
    # only a leading BOM is encoding: one inside the data is data (and a bad id here)
    table = parsed(tmp_path, "interactions", [GOOD, BOM + json.dumps(GOOD).encode()])
    assert reasons(table) == [None, "malformed_record"]


def test_a_csv_header_that_is_not_utf8_quarantines_every_row_with_one_reason(tmp_path):
    """Before: ValueError from the reader, which stopped the whole ingest."""
    path = tmp_path / "latin1.csv"
    path.write_bytes("event_id,user_id,item_id,event_type,value,ts,scène\n".encode("latin-1") +
                     b"c1,u1,i1,rate,5,2024-03-01T09:00:00Z,home\n\nc2,u2,i9,click,,1709283600,\n")
    table = pa.Table.from_batches(list(parse_file("interactions", str(path), RULES)))
    assert table.column("line").to_pylist() == [2, 4]
    assert reasons(table) == ["malformed_record"] * 2
    assert len(set(table.column("detail").to_pylist())) == 1
    assert "header (line 1) is not valid UTF-8" in table.column("detail")[0].as_py()
    assert table.column("raw").to_pylist()[0] == "c1,u1,i1,rate,5,2024-03-01T09:00:00Z,home"


def test_any_other_exception_of_a_row_is_quarantined_naming_file_and_line(tmp_path, monkeypatch):
    """A validator bug (or an input nobody foresaw) costs the rows it hits, not the night."""
    import importlib

    validate_module = importlib.import_module("coldstart.ingest.validate")  # the package re-exports validate()

    real = validate_module._as_map

    def fragile(value):
        if isinstance(value, dict) and "boom" in value:
            raise RuntimeError("unforeseen input")
        return real(value)

    monkeypatch.setattr(validate_module, "_as_map", fragile)
    users = [{"user_id": "u1", "profile": {"age": 3}}, {"user_id": "u2", "profile": {"boom": 1}},
             {"user_id": "u3"}, {"profile": {}}]
    table = parsed(tmp_path, "users", users)
    assert reasons(table) == [None, "validation_error", None, "missing_field"]
    bad = table.slice(1, 1).to_pylist()[0]
    assert bad["line"] == 2 and bad["source_file"].endswith("f.jsonl")
    assert "RuntimeError: unforeseen input" in bad["detail"] and '"boom"' in bad["raw"]
    assert table.column("user_id").to_pylist()[2] == "u3"


def test_hostile_files_through_spark_balance_the_audit(spark, tmp_path):
    settings = make_settings(tmp_path)
    day = D1
    land(settings.landing, "interactions", day, [BOM + json.dumps(event(0, day)).encode(), event(1, day),
                                                 {**event(2, day), "value": HUGE}, {**event(3, day), "ts": -HUGE}],
         name="a.jsonl")
    folder = day_dir(settings.landing, "interactions", day)
    (folder / "b.csv").write_bytes(BOM + b"event_id,user_id,item_id,event_type,value,ts,scene\n"
                                         b"c1,u1,i1,rate,5,2024-03-01T09:00:00Z,home\n"
                                         b"c2,u1,i1,rate," + b"9" * 401 + b",2024-03-01T09:00:00Z,home\n")
    (folder / "c.csv").write_bytes(b"event_id,user_id,item_id,event_type,value,ts,sc\xe8ne\n"
                                   b"d1,u1,i1,view,,2024-03-01T09:00:00Z,home\nd2,u1,i1,view,,2024-03-01T09:00:00Z,\n")
    a = ingest(spark, settings, day).sources["interactions"]
    assert (a.rows_read, a.rows_accepted, a.rows_quarantined, a.rows_duplicate) == (8, 3, 5, 0)
    lake = Lake.from_settings(settings)
    q = lake.read_pandas("quarantine")
    got = sorted((f.rsplit("/", 1)[-1], line, reason) for f, line, reason in zip(q.source_file, q.line, q.reason))
    assert got == [("a.jsonl", 3, "wrong_type"), ("a.jsonl", 4, "bad_timestamp"), ("b.csv", 3, "wrong_type"),
                   ("c.csv", 2, "malformed_record"), ("c.csv", 3, "malformed_record")]
    assert sorted(lake.read_pandas("interactions").event_id) == ["c1", "e0", "e1"]


# --- Spark: fuzz, formats, redeliveries, lateness, the stored-events window --------------------------
def audit(settings, day):
    rows = Lake.from_settings(settings).read_pandas("ingest_audit")
    return {r.source: r for r in rows[rows.run_date == day].itertuples()}


def test_redelivery_lateness_formats_and_fuzz_through_spark(spark, tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    first = [event(i, D1) for i in range(6)]
    land(settings.landing, "interactions", D1, first, name="a.jsonl")
    land(settings.landing, "interactions", D1, first, name="b.jsonl")  # the same file twice the same day
    fuzz = fuzzed_lines(11, 200, D1, "fz")
    land(settings.landing, "interactions", D1, fuzz, name="c-fuzz.jsonl")
    folder = day_dir(settings.landing, "interactions", D1)
    (folder / "d.csv").write_text("event_id,user_id,item_id,event_type,value,ts,scene\n"
                                  "c1,u1,i9,rate,5,2024-03-01T09:00:00Z,home\nc2,u2,i9,click,,1709283600,\n")
    pq.write_table(pa.table({"event_id": ["p1", "p2"], "user_id": ["u1", "u3"], "item_id": ["i8", "i9"],
                             "event_type": ["view", "view"], "ts": ["2024-03-01T01:00:00Z", "2024-02-29T23:00:00Z"]}),
                   folder / "e.parquet")
    (day_dir(settings.landing, "items", D1)).mkdir(parents=True)
    (day_dir(settings.landing, "items", D1) / "i.csv").write_text(
        'item_id,title,tags,attributes\ni9,Nine,a|b,"{""k"": 1}"\n')
    mark_complete(day_dir(settings.landing, "items", D1))

    expected_fuzz = pa.Table.from_batches(list(parse_file("interactions", str(folder / "c-fuzz.jsonl"),
                                                           Rules.from_settings(settings, D1))))
    fuzz_valid = expected_fuzz.filter(pc.is_null(expected_fuzz.column("reason")))
    fuzz_dups = fuzz_valid.num_rows - len(set(fuzz_valid.column("event_id").to_pylist()))
    a = ingest(spark, settings, D1).sources["interactions"]
    assert a.rows_read == 12 + 200 + 2 + 2
    assert a.rows_read == a.rows_accepted + a.rows_quarantined + a.rows_duplicate
    assert a.rows_duplicate == 6 + fuzz_dups
    assert a.rows_quarantined == expected_fuzz.num_rows - fuzz_valid.num_rows
    lake = Lake.from_settings(settings)
    q = lake.read_pandas("quarantine")
    assert sorted(q.line) == sorted(expected_fuzz.filter(pc.is_valid(expected_fuzz.column("reason"))).column("line")
                                    .to_pylist())
    stored = lake.read_pandas("interactions")
    assert {"c1", "c2", "p1", "p2"} <= set(stored.event_id)
    assert lake.read_pandas("items").set_index("item_id").loc["i9", "content_text"] == "Nine | tags: a, b | k: 1"

    # next day: the same file again (within lateness: duplicates of stored events), plus a late event (accepted)
    land(settings.landing, "interactions", D2, first + [event(50, D1)], name="a.jsonl")
    a = ingest(spark, settings, D2).sources["interactions"]
    assert (a.rows_accepted, a.rows_duplicate, a.rows_quarantined) == (1, 6, 0)

    # two days later: that file is beyond the lateness (quarantined); an id stored on D1 is reused with a ts
    # inside the window: accepted, because only the partitions inside the lateness window are checked
    reads = []
    real_read_spark = Lake.read_spark

    def spy(self, spark_, name, partitions=None):
        reads.append((name, partitions))
        return real_read_spark(self, spark_, name, partitions)

    monkeypatch.setattr(Lake, "read_spark", spy)
    land(settings.landing, "interactions", D3, first + [event(0, D2, event_id="e0")], name="a.jsonl")
    a = ingest(spark, settings, D3).sources["interactions"]
    assert (a.rows_accepted, a.rows_duplicate, a.rows_quarantined) == (1, 0, 6)
    assert set(lake.read_pandas("quarantine", filters=[("run_date", "=", D3)]).reason) == {"late_timestamp"}
    assert ("interactions", {"run_date": [D2]}) in reads
    assert all(p is not None for name, p in reads if name == "interactions")


# --- crashes and reruns converge ------------------------------------------------------------------------
def snapshot(settings) -> dict:
    lake = Lake.from_settings(settings)
    out = {}
    for name in ("interactions", "quarantine", "ingest_audit", "items", "users"):
        frame = lake.read_pandas(name).drop(columns=["ingested_at"], errors="ignore")
        out[name] = frame.sort_values(list(TABLES[name].key)).reset_index(drop=True)
    return out


def test_rerun_after_a_crash_converges_to_a_clean_run(spark, tmp_path, monkeypatch):
    clean, crashed = make_settings(tmp_path / "clean"), make_settings(tmp_path / "crashed")
    crashed = crashed.replace(landing=clean.landing)
    land(clean.landing, "interactions", D1, [event(i, D1) for i in range(10)] + ["oops", event(3, D1)])
    land(clean.landing, "items", D1, [{"item_id": "i1", "title": "Blue boat", "tags": ["sea"]}, {"title": "no id"}])
    land(clean.landing, "users", D1, [{"user_id": "u1", "profile": {"age": 30}}])
    ingest(spark, clean, D1)

    real_merge, real_write = Lake.merge_spark, Lake.write_spark

    def crash_on_items(self, df, name, *args, **kwargs):
        if name == "items":
            raise RuntimeError("simulated crash after the interactions commit")
        return real_merge(self, df, name, *args, **kwargs)

    monkeypatch.setattr(Lake, "merge_spark", crash_on_items)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(spark, crashed, D1)
    assert Lake.from_settings(crashed).read_arrow("interactions").num_rows == 10
    assert Lake.from_settings(crashed).read_arrow("items").num_rows == 0
    monkeypatch.setattr(Lake, "merge_spark", real_merge)

    def lose_quarantine_rows(self, df, name, *args, **kwargs):
        return real_write(self, df.limit(0) if name == "quarantine" else df, name, *args, **kwargs)

    monkeypatch.setattr(Lake, "write_spark", lose_quarantine_rows)
    with pytest.raises(AuditError, match="interactions: rows_read=12"):
        ingest(spark, crashed, D1)
    monkeypatch.setattr(Lake, "write_spark", real_write)

    ingest(spark, crashed, D1)
    expected, got = snapshot(clean), snapshot(crashed)
    for name in expected:
        assert expected[name].equals(got[name]), name


# --- synth ------------------------------------------------------------------------------------------------
SMALL = SynthConfig(users=60, items=40, events_per_day=1500, days=2, new_items_per_day=10, new_users_per_day=8,
                    broken_share=0.05, seed=3, files_per_day=4)


def test_synth_counts_determinism_and_broken_kinds(tmp_path):
    days = synth(tmp_path / "a", SMALL)
    synth(tmp_path / "b", SMALL)
    synth(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 4}))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    part = "interactions/date=2024-01-01/part-000.jsonl"
    assert (tmp_path / "a" / part).read_bytes() != (tmp_path / "c" / part).read_bytes()
    suffixes = {p.suffix for p in (tmp_path / "a" / "interactions" / "date=2024-01-01").iterdir()}
    assert suffixes == {".jsonl", ".csv", ".parquet", ""}  # "" is the _SUCCESS marker

    seen_items: set = set()
    for summary in days:
        day = dt.date.fromisoformat(summary.date)
        rules = Rules(day, SMALL.lateness_days, ("view", "click", "like", "rate", "purchase"), SMALL.max_text_chars)
        for source in ("items", "users", "interactions"):
            folder = day_dir(tmp_path / "a", source, day)
            assert (folder / "_SUCCESS").exists()
            table = pa.concat_tables(pa.Table.from_batches(list(parse_file(source, str(p), rules)))
                                     for p in sorted(folder.iterdir()) if p.name != "_SUCCESS")
            expected = getattr(summary, source)
            assert table.num_rows == expected["rows"]
            got = collections.Counter(r for r in table.column("reason").to_pylist() if r)
            want = {BROKEN_KINDS[source][k]: n for k, n in expected["broken"].items() if k != "duplicate"}
            assert dict(got) == want, (source, day)
            valid = table.filter(pc.is_null(table.column("reason")))
            id_field = ingest_module.ID_FIELD[source]
            repeats = valid.num_rows - len(set(valid.column(id_field).to_pylist()))
            assert repeats == expected["broken"].get("duplicate", 0)
            if source == "items":
                seen_items |= set(valid.column("item_id").to_pylist())
            if source == "interactions":
                assert table.num_rows == SMALL.events_per_day
                # every interacted item's catalog row landed on an earlier day, or today for the bootstrap catalog
                assert set(valid.column("item_id").to_pylist()) <= seen_items
                assert len(set(valid.column("scene").to_pylist())) >= 3


def test_synth_day_through_spark_lands_broken_rows_in_quarantine(spark, tmp_path):
    settings = make_settings(tmp_path)
    cfg = SynthConfig(**{**SMALL.__dict__, "days": 1})
    summary = synth(settings.landing, cfg)[0]
    result = ingest(spark, settings, cfg.start)
    lake = Lake.from_settings(settings)
    q = lake.read_pandas("quarantine")
    for source in ("interactions", "items", "users"):
        a, expected = result.sources[source], getattr(summary, source)
        assert a.rows_read == expected["rows"] == a.rows_accepted + a.rows_quarantined + a.rows_duplicate
        want = {BROKEN_KINDS[source][k]: n for k, n in expected["broken"].items() if k != "duplicate"}
        assert q[q.source == source].reason.value_counts().to_dict() == want
    assert result.sources["interactions"].rows_duplicate == summary.interactions["broken"]["duplicate"]
    assert result.sources["interactions"].rows_accepted == summary.interactions["valid"]
    assert lake.read_arrow("users", columns=["user_id"]).num_rows >= cfg.users


def test_huge_epoch_seconds_are_bad_timestamps_without_a_float_overflow():
    """Epoch seconds beyond datetime64[us] (1e308, inf) are quarantined as bad timestamps without a
    numpy overflow warning (CI printed one; `-W error` would turn it into a failed ingest)."""
    import warnings

    import numpy as np

    from coldstart.ingest.validate import _parse_ts, _Verdict

    values = [1e308, float("inf"), 1_700_000_000, "1700000000.5"]
    verdict = _Verdict([None] * len(values), [None] * len(values))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _parse_ts(values, verdict, "ts", required=True)
    assert np.isnat(out[:2]).all() and list(verdict.reason[:2]) == ["bad_timestamp", "bad_timestamp"]
    assert out[2] == np.datetime64("2023-11-14T22:13:20", "us") and out[3] == np.datetime64("2023-11-14T22:13:20.5", "us")
