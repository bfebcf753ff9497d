"""pipeline/kept.py: a kept list column (a VQA row's `answers`) leaves a numpy-format stage as an Arrow list
column, not as pickled Python objects."""

import numpy as np
import pyarrow as pa
from ray.data.block import BlockAccessor

from pipeline.kept import kept_columns


def test_list_cells_leave_as_arrow_lists():
    answers = np.empty(2, dtype=object)
    answers[:] = [np.array(["two", "2"], dtype=object), np.array(["red"], dtype=object)]  # as Ray hands them
    batch = {"id": np.array(["a", "b"], dtype=object), "keep__answers": answers,
             "keep__n": np.array([1, 2]), "prompt_ids": np.zeros(2)}
    out = kept_columns(batch)
    assert list(out) == ["id", "keep__answers", "keep__n"]
    table = BlockAccessor.batch_to_block(out)
    assert table.schema.field("keep__answers").type == pa.list_(pa.string())
    assert table.column("keep__answers").to_pylist() == [["two", "2"], ["red"]]
    assert out["keep__n"] is batch["keep__n"]  # other columns untouched
    # what the stages returned before: Ray falls back to its pickled-object extension type
    assert not pa.types.is_list(BlockAccessor.batch_to_block(batch).schema.field("keep__answers").type)
