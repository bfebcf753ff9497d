"""Last stage: GPU-stage rows -> the fixed output schema (pipeline/schema.py), kept columns restored.

A row's input unit (`UNIT_COLUMN`, run_job only) is appended after the schema's columns for the driver's
writer, which strips it before writing (pipeline/part_writer.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.resume import UNIT_COLUMN
from pipeline.schema import BASE_NAMES


def _strings(values) -> pa.Array:
    """Ray may hand an all-null object column over as float NaNs: anything that is not a str is null."""
    return pa.array([v if isinstance(v, str) else None for v in values], pa.string())


def to_output_table(batch: dict[str, np.ndarray], model_name: str, schema: pa.Schema) -> pa.Table:
    n = len(batch["id"])
    cols = {
        "id": pa.array([str(x) for x in batch["id"]], pa.string()),
        "text": _strings(batch["text"]),
        "finish_reason": _strings(batch["finish_reason"]),
        "error": _strings(batch["error"]),
        "num_prompt_tokens": pa.array(batch["num_prompt_tokens"].astype(np.int32), pa.int32()),
        "num_generated_tokens": pa.array(batch["num_generated_tokens"].astype(np.int32), pa.int32()),
        "model": pa.array([model_name] * n, pa.string()),
    }
    for field in schema:
        if field.name not in BASE_NAMES:
            values = batch.get("keep__" + field.name)
            # A nullable integer (or bool) column reaches a numpy batch as floats with NaN for its nulls:
            # NaN is null there. A float column keeps its NaN values as they are.
            cols[field.name] = pa.array(list(values) if values is not None else [None] * n, field.type,
                                        from_pandas=not pa.types.is_floating(field.type))
    table = pa.table(cols, schema=schema)
    if UNIT_COLUMN in batch:
        table = table.append_column(UNIT_COLUMN, pa.array([str(x) for x in batch[UNIT_COLUMN]], pa.string()))
    return table
