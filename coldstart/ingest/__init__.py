"""Ingest one run date's landing folders into interactions, quarantine, ingest_audit, items and users.

Each landing file is one Spark task (``mapInArrow``): a Python worker streams the file (JSONL, CSV
or Parquet, read with the field lists below, never with schema inference) in batches, validates
every row column-wise (numpy and pyarrow compute; only JSON/CSV decoding is per line) and emits
typed rows, or quarantine rows with the raw text, line and reason. Spark then drops repeated
event_ids in one window over this run's events plus the stored events of the partitions inside the
lateness window only (so a day's cost does not grow with history), and each table is written in
one Delta commit. The job checks its own accounting: rows_read = accepted + quarantined + duplicate,
else AuditError.
"""

from coldstart.ingest.contract import (BAD_TIMESTAMP, COMMON_DDL, EMPTY_ID, FIELDS, FUTURE_TIMESTAMP, ID_FIELD,
                                       INVALID_UTF8, LATE_TIMESTAMP, MALFORMED, MISSING_FIELD, OVERSIZE_TEXT,
                                       PARSED_DDL, REASONS, UNKNOWN_EVENT_TYPE, VALIDATION_ERROR, WRONG_TYPE,
                                       AuditError, Rules, parsed_schema)
from coldstart.ingest.readers import BATCH_ROWS, RawBatch, read_file
from coldstart.ingest.stage import ingest
from coldstart.ingest.validate import SHORT_TEXT_CHARS, parse_file, validate

__all__ = ["AuditError", "BAD_TIMESTAMP", "BATCH_ROWS", "COMMON_DDL", "EMPTY_ID", "FIELDS", "FUTURE_TIMESTAMP",
           "ID_FIELD", "INVALID_UTF8", "LATE_TIMESTAMP", "MALFORMED", "MISSING_FIELD", "OVERSIZE_TEXT", "PARSED_DDL",
           "REASONS", "RawBatch", "Rules", "SHORT_TEXT_CHARS", "UNKNOWN_EVENT_TYPE", "VALIDATION_ERROR", "WRONG_TYPE", "ingest",
           "parse_file", "parsed_schema", "read_file", "validate"]
