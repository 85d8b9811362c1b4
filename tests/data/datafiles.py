"""Write small data files in every supported format, for the data-layer tests."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format named by ``path``'s extension (optionally .gz)."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        data = buffer.getvalue()
    elif name.endswith(".json"):
        data = json.dumps(rows, indent=2).encode()
    elif name.endswith((".csv", ".tsv")):
        text = io.StringIO()
        writer = csv.DictWriter(
            text, fieldnames=list(rows[0]), dialect="excel-tab" if name.endswith(".tsv") else "excel"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        data = text.getvalue().encode()
    else:
        data = jsonl_bytes(rows)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
