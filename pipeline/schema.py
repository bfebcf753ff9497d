"""The fixed output schema (DESIGN.md): one row per input row, decided before any batch is seen."""

from __future__ import annotations

import pyarrow as pa

BASE_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("finish_reason", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("num_prompt_tokens", pa.int32()),
    pa.field("num_generated_tokens", pa.int32()),
    pa.field("model", pa.string()),
]
BASE_NAMES = [f.name for f in BASE_FIELDS]


def output_schema(keep: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """Base fields plus the user's kept columns (typed from the input schema)."""
    fields = list(BASE_FIELDS)
    for name, typ in (keep or {}).items():
        if name in BASE_NAMES:
            raise ValueError(f"cannot keep column {name!r}: it is an output column")
        fields.append(pa.field(name, typ))
    return pa.schema(fields)
