"""Reading a landing file (JSONL, CSV or Parquet) into batches of raw columns, with read-time failures."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from itertools import repeat
from typing import Iterator

import numpy as np
import pyarrow as pa

from coldstart import storage
from coldstart.ingest.contract import FIELDS, INVALID_UTF8, MALFORMED

# Rows per validated batch. 10k keeps a worker's peak at about 170 MB on a 250k-line JSONL file (300 MB at
# 50k) at the same speed (bench/results/nightly_scale.md).
BATCH_ROWS = 10_000
# A UTF-8 byte-order mark at the start of a file is part of the encoding, not of the data: RFC 8259 section
# 8.1 lets JSON parsers ignore it, and spreadsheet programs write one before a CSV's header.
UTF8_BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------------------------------------
@dataclass
class RawBatch:
    lines: np.ndarray                 # 1-based line (text files) or row number (Parquet)
    columns: dict[str, list]          # field -> values as decoded (None where absent)
    reasons: list[str | None]         # failures found while reading (malformed, invalid UTF-8)
    details: list[str | None]
    raws: list[str] | None = None     # the lines as read (text files); Parquet rows are rebuilt on demand

    def __len__(self) -> int:
        return len(self.lines)

    def raw(self, i: int) -> str:
        if self.raws is not None:
            return self.raws[i]
        return json.dumps({f: v for f, v in ((f, vs[i]) for f, vs in self.columns.items()) if v is not None},
                          default=str, ensure_ascii=False)


def _text_lines(path: str) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, decoded text or None when not UTF-8, raw bytes) of each non-blank line; a leading
    UTF-8 BOM is dropped."""
    with storage.open_lines(path) as fh:
        for number, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if not raw.strip():
                continue
            try:
                yield number, raw.decode("utf-8"), raw
            except UnicodeDecodeError:
                yield number, None, raw


def _chunks(items: Iterator, size: int = BATCH_ROWS) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _undecodable(raw: bytes) -> str:
    # backslashreplace keeps the offending bytes visible (and recoverable) in quarantine.raw
    return raw.decode("utf-8", "backslashreplace")


def _read_jsonl(path: str, fields: tuple[str, ...]) -> Iterator[RawBatch]:
    loads = json.loads
    for chunk in _chunks(_text_lines(path)):
        records, raws, reasons, details = [], [], [], []
        for _, text, raw in chunk:
            record = reason = detail = None
            if text is None:
                text, reason, detail = _undecodable(raw), INVALID_UTF8, "line is not valid UTF-8"
            else:
                try:
                    record = loads(text)
                    if type(record) is not dict:
                        record, reason, detail = None, MALFORMED, f"line is JSON but not an object ({type(record).__name__})"
                except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
                    reason, detail = MALFORMED, f"unparseable JSON: {exc}"
            records.append(record if record is not None else {})
            raws.append(text)
            reasons.append(reason)
            details.append(detail)
        columns = {f: list(map(dict.get, records, repeat(f))) for f in fields}
        yield RawBatch(np.fromiter((c[0] for c in chunk), np.int64, len(chunk)), columns, reasons, details, raws)


def _split_csv_line(text: str) -> list[str]:
    if '"' not in text:  # the common case needs no quote handling
        return text.split(",")
    return next(csv.reader([text], strict=True))


def _read_csv(path: str, fields: tuple[str, ...]) -> Iterator[RawBatch]:
    """CSV with a header line; one record per physical line (a quoted newline is a malformed record). A header
    that is not UTF-8 leaves the columns unknown: every row of the file is quarantined with that one reason."""
    lines = _text_lines(path)
    header: list[str] | None = None
    header_problem: str | None = None
    for number, text, raw in lines:
        if text is None:
            header_problem = (f"the CSV header (line {number}) is not valid UTF-8, so the columns of every row of "
                              f"this file are unknown: {_undecodable(raw)[:200]}")
        else:
            header = [h.strip() for h in next(csv.reader([text]))]
        break
    if header is None and header_problem is None:
        return
    width = len(header) if header is not None else 0
    positions = {f: header.index(f) for f in fields if f in header} if header is not None else {}
    for chunk in _chunks(lines):
        rows, raws, reasons, details = [], [], [], []
        for _, text, raw in chunk:
            values: list[str] | None = None
            reason: str | None = None
            detail: str | None = None
            if header_problem is not None:
                text = text if text is not None else _undecodable(raw)
                reason, detail = MALFORMED, header_problem
            elif text is None:
                text, reason, detail = _undecodable(raw), INVALID_UTF8, "line is not valid UTF-8"
            else:
                try:
                    split = _split_csv_line(text)
                    if len(split) == width:
                        values = split
                    else:
                        reason, detail = MALFORMED, f"{len(split)} columns, header has {width}"
                except csv.Error as exc:
                    reason, detail = MALFORMED, f"unparseable CSV: {exc}"
            rows.append(values)
            raws.append(text)
            reasons.append(reason)
            details.append(detail)
        columns = {}
        for f in fields:
            if f in positions:
                p = positions[f]
                columns[f] = [(row[p] or None) if row is not None else None for row in rows]  # "" is absent
            else:
                columns[f] = [None] * len(rows)
        yield RawBatch(np.fromiter((c[0] for c in chunk), np.int64, len(chunk)), columns, reasons, details, raws)


def _column_values(column: pa.ChunkedArray | pa.Array) -> list:
    """Python values of an Arrow column; strings that are not UTF-8 become bytes (flagged by the validator)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        return [v if v is None else _utf8_or_bytes(v) for v in column.cast(pa.binary()).to_pylist()]


def _utf8_or_bytes(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _read_parquet(path: str, fields: tuple[str, ...]) -> Iterator[RawBatch]:
    """Only the contract's columns are read (others ignored); a file that cannot be read at all is
    one malformed record, so that it shows up in quarantine instead of vanishing."""
    import pyarrow.parquet as pq

    number = 0
    # Opening is outside the try: a store that cannot be read fails the task (Spark and Airflow retry it)
    # instead of turning a good file into a quarantine row.
    with storage.open_input(path) as fh:
        try:
            reader = pq.ParquetFile(fh)
            present = [f for f in fields if f in reader.schema_arrow.names]
            for rb in reader.iter_batches(batch_size=BATCH_ROWS, columns=present):
                n = rb.num_rows
                columns = {f: _column_values(rb.column(f)) if f in present else [None] * n for f in fields}
                yield RawBatch(np.arange(number + 1, number + 1 + n, dtype=np.int64), columns, [None] * n, [None] * n)
                number += n
        except (OSError, pa.ArrowException) as exc:
            yield RawBatch(np.array([number + 1], dtype=np.int64), {f: [None] for f in fields}, [MALFORMED],
                           [f"unreadable Parquet from row {number + 1} on: {exc}"], [f"<{path}>"])


def read_file(path: str, source: str) -> Iterator[RawBatch]:
    name = path.lower()
    fields = FIELDS[source]
    if name.endswith((".jsonl", ".json")):
        return _read_jsonl(path, fields)
    if name.endswith(".csv"):
        return _read_csv(path, fields)
    if name.endswith(".parquet"):
        return _read_parquet(path, fields)
    raise ValueError(f"unsupported landing file type: {path}")

