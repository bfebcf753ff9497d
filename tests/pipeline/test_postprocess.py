"""pipeline/postprocess.py: kept columns with nulls survive the numpy batches Ray hands the last stage (a
nullable integer column arrives as floats with NaN for its nulls; a float column's NaN stays a value)."""

import numpy as np
import pyarrow as pa

from pipeline.postprocess import to_output_table
from pipeline.schema import output_schema


def test_kept_columns_with_nulls():
    schema = output_schema({"shapes": pa.int64(), "score": pa.float64(), "note": pa.string()})
    batch = {"id": np.array(["a", "b"], dtype=object), "text": np.array(["x", "y"], dtype=object),
             "finish_reason": np.array(["stop", "stop"], dtype=object), "error": np.array([None, None]),
             "num_prompt_tokens": np.array([3, 4]), "num_generated_tokens": np.array([1, 2]),
             "keep__shapes": np.array([4.0, np.nan]), "keep__score": np.array([0.5, np.nan]),
             "keep__note": np.array(["n", np.nan], dtype=object)}
    table = to_output_table(batch, "m", schema)
    assert table.column("shapes").to_pylist() == [4, None]
    assert table.column("note").to_pylist() == ["n", None]
    score = table.column("score").to_pylist()
    assert score[0] == 0.5 and np.isnan(score[1])  # a float NaN is a value, not a null
