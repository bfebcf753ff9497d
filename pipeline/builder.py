"""Compose the Ray Data pipeline: source -> preprocess (CPU actors) -> generate (GPU actors) -> postprocess.

Two entry points:
- `CaptionProcessor(config)(ds)`: for people who already have a Ray Dataset with `id` and `image` and/or
  `video` columns (plus prompt/messages columns as configured); returns a Dataset in the output schema
  (`ray.data.llm`-style: build a processor from a config, apply it to a Dataset).
- `run_job(config)`: the whole job as `jobs/caption.py` runs it: read, skip ids already written (resume),
  process, and write part files from the driver with progress lines and a final summary.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.generate_stage import GenerateStage
from pipeline.job_config import JobConfig
from pipeline.postprocess import to_output_table
from pipeline.preprocess_stage import PreprocessStage
from pipeline.progress import Progress
from pipeline.schema import output_schema
from pipeline.sink import OutputSink
from pipeline.sources import read_input

FLUSH_SECONDS = 30.0


def _gpu_available() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


class CaptionProcessor:
    def __init__(self, config: JobConfig, keep_types: dict[str, pa.DataType] | None = None):
        self.config = config
        self.schema = output_schema(keep_types or {})

    def __call__(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        c = self.config
        lo, hi = c.preprocess_actors
        # Small input files are read as one big block, and an actor stage emits a block only when it has
        # processed all of it: without this, a job's first output (and its first committed part file,
        # i.e. what a crash can keep) would wait for the whole input. Streaming, not a shuffle.
        ds = ds.repartition(target_num_rows_per_block=c.batch_size)
        ds = ds.map_batches(PreprocessStage, fn_constructor_args=(c,), batch_size=8, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi))
        gpus = c.tp if _gpu_available() else 0
        # The GPU stage and the postprocess tasks reserve no CPU: on a small (or CPU-only) cluster an
        # autoscaled preprocess pool could otherwise take every CPU and leave them unschedulable forever.
        ds = ds.map_batches(
            GenerateStage, fn_constructor_args=(c,), batch_size=c.batch_size, num_gpus=gpus, num_cpus=0,
            compute=ray.data.ActorPoolStrategy(size=c.replicas, max_tasks_in_flight_per_actor=c.batches_in_flight),
            max_concurrency=c.batches_in_flight, max_restarts=-1, max_task_retries=-1)
        model_name = c.model.rstrip("/").rsplit("/", 1)[-1]
        schema = self.schema
        return ds.map_batches(lambda b: to_output_table(b, model_name, schema), batch_format="numpy", num_cpus=0)


def _drop_ids(table: pa.Table, done: pa.Array) -> pa.Table:
    return table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))


def check_model(config: JobConfig) -> None:
    """Fail before any actor starts: a GPU actor whose constructor raises is restarted forever by Ray."""
    from models.errors import InputError
    from models.registry import architecture

    try:
        architecture(config.model)  # both registered models run under any --tp their head counts allow
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint dir is the user's to fix
        raise InputError(f"cannot use --model {config.model}: {exc}", kind="config_error") from None


def run_job(config: JobConfig) -> dict:
    check_model(config)
    ds, keep_types = read_input(config)
    if config.limit:
        ds = ds.limit(config.limit)
    processor = CaptionProcessor(config, keep_types)
    sink = OutputSink(config.output, processor.schema, config.output_format)
    done = sink.prepare(config)
    total = ds.count()
    if done:
        ds = ds.map_batches(_drop_ids, fn_kwargs={"done": pa.array(sorted(done), pa.string())},
                            batch_format="pyarrow")
    progress = Progress(max(total - len(done), 0), config.progress_interval_s)
    pending: list[pa.Table] = []
    rows, last_flush = 0, time.monotonic()
    seen: set[str] = set()
    for table in processor(ds).iter_batches(batch_format="pyarrow", batch_size=None):
        ids = table.column("id").to_pylist()
        if any(i in seen for i in ids):  # defensive: never write an id twice
            keep = [i not in seen for i in ids]
            table = table.filter(pa.array(keep))
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
        seen.update(ids)
        pending.append(table)
        rows += table.num_rows
        progress.update(table)
        # Commit often enough that a crash loses little work; resume skips whatever was committed.
        if rows >= config.rows_per_file or time.monotonic() - last_flush > FLUSH_SECONDS:
            sink.write(pa.concat_tables(pending))
            pending, rows, last_flush = [], 0, time.monotonic()
    if pending:
        sink.write(pa.concat_tables(pending))
    return progress.summary(config.output, skipped=len(done))
