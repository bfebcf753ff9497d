"""Compose the Ray Data pipeline: source -> preprocess (CPU actors) -> generate (GPU actors) -> postprocess.

Two entry points:
- `CaptionProcessor(config)(ds)`: for people who already have a Ray Dataset with the configured id and
  image and/or video columns (bytes or paths/URIs; plus prompt/messages/kept columns as configured);
  returns a Dataset in the output schema (`ray.data.llm`-style: build a processor from a config, apply
  it to a Dataset). Kept columns take their types from the Dataset's schema unless `keep_types` is given.
  Image cells may also be decoded uint8 arrays (`ray.data.read_images`); a Dataset without the id column
  takes its ids from `path`, or is refused on the driver (pipeline/sources.py).
- `run_job(config)`: the whole job as `jobs/caption.py` runs it: plan the resume (pipeline/resume.py: finished
  input files are not read, partly written ones lose the ids already written), process, and write part
  files and completion records from the driver (pipeline/part_writer.py) with progress lines and a summary.
"""

from __future__ import annotations

import dataclasses
import sys

import pyarrow as pa
import ray

from pipeline.cluster_watch import ClusterWatch, preprocess_pool_cap
from pipeline.context_len import resolve_max_model_len
from pipeline.generate_stage import GenerateStage
from pipeline.job_config import JobConfig
from pipeline.model_cache import local_model_dir, with_local_model
from pipeline.part_writer import PartWriter
from pipeline.postprocess import to_output_table
from pipeline.preflight import check_staging
from pipeline.preprocess_stage import PreprocessStage
from pipeline.progress import Progress
from pipeline.resume import drop_ids, plan_resume
from pipeline.schema import output_schema
from pipeline.sink import OutputSink
from pipeline.sources import check_id_column, check_parquet_columns, normalise_columns, read_input_counted
from pipeline.watchdog import iterate_with_stall_timeout

PREPROCESS_BATCH = 8  # rows per CPU-stage call


def _gpu_available() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


class CaptionProcessor:
    def __init__(self, config: JobConfig, keep_types: dict[str, pa.DataType] | None = None, *,
                 input_checked: bool = False):
        self.config = resolve_max_model_len(config, local_model_dir(config.model, weights=False))
        self.keep_types = keep_types
        # run_job's rows come from read_input (ids made and checked there): asking a lazily mapped Dataset
        # for its schema would execute its first block on the driver, maybe the whole input.
        self.input_checked = input_checked
        self.schema = output_schema(keep_types or {})

    def preprocess(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """The CPU half alone: rows with `prompt_ids`, packed uint8 `media` and `error` (benchmarks use it)."""
        c = self.config
        schema = ds.schema() if not self.input_checked or (self.keep_types is None and c.keep_columns) else None
        if not self.input_checked and schema is not None:
            check_id_column(schema.names, c)  # a caller's Dataset: refused here, not deep inside a Ray task
        if self.keep_types is None and c.keep_columns:
            types = dict(zip(schema.names, schema.types, strict=True))
            self.schema = output_schema({k: _arrow_type(types[k]) for k in c.keep_columns})
        ds = normalise_columns(ds, c)  # idempotent: rows from read_input are already normalised
        lo, hi = c.preprocess_actors
        capped = preprocess_pool_cap(lo, hi)  # spare CPUs for the actors of a lost node (pipeline/cluster_watch.py)
        if capped < hi:
            print(f"[caption] preprocess actors capped at {capped} (of {hi}): the cluster's CPUs minus its largest "
                  "node's, so the actors of a lost node can start again elsewhere", file=sys.stderr, flush=True)
        hi = capped
        # Small input files are read as one big block, and an actor stage emits a block only when it has
        # processed all of it: without this, a job's first output (and its first committed part file,
        # i.e. what a crash can keep) would wait for the whole input. Streaming, not a shuffle.
        ds = ds.repartition(target_num_rows_per_block=c.batch_size)
        # A CPU batch never spans two GPU batches: small jobs' rows then reach the GPU (and come back) apart.
        return ds.map_batches(PreprocessStage, fn_constructor_args=(c,), batch_size=min(PREPROCESS_BATCH,
                              c.batch_size), num_cpus=1, compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi))

    def __call__(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        c = self.config
        ds = self.preprocess(ds)
        gpus = c.tp if _gpu_available() else 0
        ds = apply_generate_stage(ds, with_local_model(GenerateStage), c, gpus)
        model_name = c.model.rstrip("/").rsplit("/", 1)[-1]
        schema = self.schema
        return ds.map_batches(lambda b: to_output_table(b, model_name, schema), batch_format="numpy", num_cpus=0)


def apply_generate_stage(ds: ray.data.Dataset, stage_cls: type, c: JobConfig, gpus: float) -> ray.data.Dataset:
    """`stage_cls` as `c.replicas` actors, each running `c.batches_in_flight` calls at once (so its engine
    holds several Ray batches of requests and never drains between them). Ray Data runs the calls of a
    sync callable class one at a time unless `enable_true_multi_threading` is set: without it the engine
    saw a single batch (~30 of its 172 slots busy for Mllama-11B) and the job ran at 80-88% of its speed.
    Restarts: Ray Data's defaults (`max_restarts=-1`, `max_task_retries=-1`) recreate a dead actor and
    retry its batches. The stage and the postprocess tasks reserve no CPU: on a small (or CPU-only)
    cluster an autoscaled preprocess pool could otherwise take every CPU and leave them unschedulable."""
    k = c.batches_in_flight
    return ds.map_batches(
        stage_cls, fn_constructor_args=(c,), batch_size=c.batch_size, num_gpus=gpus, num_cpus=0,
        compute=ray.data.ActorPoolStrategy(size=c.replicas, max_tasks_in_flight_per_actor=k,
                                           max_concurrent_calls_per_actor=k, enable_true_multi_threading=True))


def _arrow_type(t) -> pa.DataType:
    return t if isinstance(t, pa.DataType) else pa.from_numpy_dtype(t)


def check_model(config: JobConfig) -> None:
    """Fail before any actor starts, with a one-line message (a GPU actor constructor that raises would
    fail the job only after start-up, behind a long Ray traceback)."""
    from models.errors import InputError
    from models.registry import architecture

    try:
        # Both registered models run under any --tp their head counts allow; a URL's metadata is cached here.
        arch = architecture(local_model_dir(config.model, weights=False))
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint dir is the user's to fix
        raise InputError(f"cannot use --model {config.model}: {exc}", kind="config_error") from None
    check_staging(config, arch)  # a remote --model's architecture is known only now


def fit_batch_size(config: JobConfig, rows: int | None) -> JobConfig:
    """Small jobs get smaller Ray batches: at least as many batches as the GPU stage holds in flight, so
    every replica gets work and output (progress, committed parts) arrives row group by row group instead
    of in one block at the end (a 6-row demo at batch size 64 was one batch: progress sat at 0/6). Large
    jobs keep `batch_size`; the engine sees every row in flight either way. The CPU stage's batches shrink
    with it (see `CaptionProcessor.preprocess`), but its actor pool stays as large as `PREPROCESS_BATCH`-row
    batches would have needed: more batches must not start more actors (each spawns a decoding child; on a
    2-CPU machine that made the 6-row demo 5 s slower)."""
    if not rows:
        return config
    fitted = max(1, -(-rows // (config.replicas * config.batches_in_flight)))
    if fitted >= config.batch_size:
        return config
    lo, hi = config.preprocess_actors
    actors = min(hi, max(lo, -(-rows // PREPROCESS_BATCH)))
    return dataclasses.replace(config, batch_size=fitted, preprocess_actors=(lo, actors))


def run_job(config: JobConfig) -> dict:
    check_model(config)
    check_parquet_columns(config)  # before the sink touches the output (--overwrite deletes old parts)
    sink = OutputSink(config.output, output_schema(), config.output_format)
    sink.prepare(config)
    plan = plan_resume(config, sink)
    if plan.nothing_to_read:
        return Progress(0, config.progress_interval_s).summary(config.output, skipped=plan.skipped)
    ds, keep_types, total = read_input_counted(config, plan)
    if config.limit:
        ds = ds.limit(config.limit)
        total = min(total, config.limit) if total is not None else None
    processor = CaptionProcessor(config, keep_types, input_checked=True)
    sink.schema = processor.schema
    if plan.skip_ids:  # only partly written input files' ids (and ids of parts without a unit)
        ds = ds.map_batches(drop_ids, fn_kwargs={"done": pa.array(sorted(plan.skip_ids), pa.string())},
                            batch_format="pyarrow")
    remaining = plan.remaining if plan.units is not None else (
        total - len(plan.skip_ids) if total is not None and len(plan.skip_ids) <= total else None)
    if config.limit and remaining is not None:
        remaining = min(remaining, config.limit)
    processor.config = fit_batch_size(processor.config, remaining)  # before the stages are built below
    progress = Progress(remaining, config.progress_interval_s)
    writer = PartWriter(sink, progress, config.rows_per_file, plan)
    stream = processor(ds).iter_batches(batch_format="pyarrow", batch_size=None)
    complete = False
    with progress.heartbeat():
        try:
            for table in iterate_with_stall_timeout(stream, config.stall_timeout_s, what="output row",
                                                    watch=ClusterWatch()):
                writer.add(table)
            complete = not config.limit
        finally:
            # Complete rows already received are committed, whatever stopped the stream; a stream that ended
            # complete also records its units as finished.
            writer.finish() if complete else writer.flush()
    return progress.summary(config.output, skipped=plan.skipped)
