"""Columns that ride through the CPU and GPU stages unchanged (`id` and the `keep__<name>` copies of
`--keep-columns`), handed back in a form Ray turns into Arrow again without loss or warnings.

A list cell (e.g. a VQA row's `answers`) reaches a numpy-format `map_batches` as a numpy array inside an
object column. Returned like that, Ray reads the column as a ragged tensor, fails to convert it, logs
"Failed to convert column ... falling back to serialize as pickled python objects" and ships pickles; as
Python lists it becomes an Arrow list column again.
"""

from __future__ import annotations

import numpy as np


def kept_columns(batch: dict[str, np.ndarray], also: tuple[str, ...] = ("id",)) -> dict[str, np.ndarray]:
    """`batch`'s kept columns (`keep__*` and `also`), array cells turned back into lists."""
    out = {}
    for name, col in batch.items():
        if name in also or name.startswith("keep__"):
            if col.dtype == object and any(isinstance(v, np.ndarray) for v in col):
                fixed = np.empty(len(col), dtype=object)
                fixed[:] = [v.tolist() if isinstance(v, np.ndarray) else v for v in col]
                col = fixed
            out[name] = col
    return out
