"""Generate docs/tables.md from the catalog (a test keeps the committed file in sync)."""

from __future__ import annotations

from coldstart.catalog import TABLES


def tables_markdown() -> str:
    out = ["# Output tables", "",
           "Generated from `coldstart/catalog.py` by `python -m coldstart.docs > docs/tables.md`; do not edit by hand.",
           "Every table is a Delta table under `COLDSTART_LAKE/<name>`; every write is one atomic commit and",
           "idempotent for its run date.", ""]
    for t in TABLES.values():
        out += [f"## `{t.name}`", "", t.doc, "",
                f"Key: {', '.join(f'`{k}`' for k in t.key)}"
                + (f". Partitioned by {', '.join(f'`{p}`' for p in t.partition_by)}." if t.partition_by else "."), "",
                "| column | type | nullable | meaning |", "|---|---|---|---|"]
        for f in t.schema:
            out.append(f"| `{f.name}` | `{f.type}` | {'yes' if f.nullable else 'no'} | {t.column_doc(f.name)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables_markdown(), end="")
