"""Driver-side checks that run before Ray starts (Ray's start-up takes 10-30 s and buries errors in
tracebacks): the user's ordinary mistakes get one clear line and exit status 2 at once, and a re-run
with nothing left to do ends here without starting Ray at all.

Each check raises `models.errors.InputError` (kind `config_error`) or the sink's `ConfigMismatchError`;
`jobs/caption.py` prints it as `caption.py: error: ...` and exits 2.
"""

from __future__ import annotations

import fsspec

from models.errors import InputError
from pipeline.job_config import JobConfig
from pipeline.resume import input_units
from pipeline.schema import output_schema
from pipeline.sink import ConfigMismatchError, OutputSink
from pipeline.sources import input_ids, input_kind, media_files, parquet_files


def check_output(config: JobConfig) -> None:
    fs, path = fsspec.core.url_to_fs(config.output)
    if fs.isfile(path):
        raise InputError(f"--output {config.output} is a file; give a directory (the job writes part files "
                         "into it)", kind="config_error")


def check_input(config: JobConfig) -> None:
    kind = input_kind(config.input)  # "does not exist", or not a kind we read
    if kind == "folder":
        media_files(config.input)  # a folder without any image or video
    elif kind == "parquet":
        parquet_files(config.input)  # a glob or folder without parquet files


def check_model_path(config: JobConfig) -> None:
    """A local --model must be a checkpoint directory (URLs are checked when they are copied)."""
    from pathlib import Path

    from pipeline.model_cache import is_remote

    if is_remote(config.model):
        return
    local = Path(config.model.removeprefix("file://"))
    if not (local / "config.json").is_file():
        what = "does not exist" if not Path(config.model).exists() else "has no config.json"
        raise InputError(f"cannot use --model {config.model}: the checkpoint directory {what}", kind="config_error")
    if config.stage_vision_images:
        from models.registry import architecture

        check_staging(config, architecture(local))


def check_staging(config: JobConfig, arch: str) -> None:
    """`--stage-vision-images` works with runners that encode media apart (pipeline/engine/staging.py)."""
    from pipeline.engine.staging import can_stage

    if config.stage_vision_images and not can_stage(arch, config.tp):
        raise InputError(f"--stage-vision-images needs an Mllama model on one GPU per replica (this is {arch}, "
                         f"--tp {config.tp})", kind="config_error")


def check_resume(config: JobConfig) -> None:
    """An output written with other settings (or in another format) is refused here already."""
    fs, path = fsspec.core.url_to_fs(config.output)
    if fs.isdir(path):
        refused = OutputSink(config.output, output_schema(), config.output_format).refusal(config)
        if refused:
            raise ConfigMismatchError(refused)


def preflight(config: JobConfig) -> None:
    check_output(config)
    check_input(config)
    check_model_path(config)
    check_resume(config)


def rows_already_done(config: JobConfig) -> int | None:
    """The number of rows written when the output already holds every input row under the same settings
    (the job has nothing to do); None when there is work left or that is not cheap to know. Parquet input:
    every input file has a completion record (a listing of the input and of `_vlmcap_done/`, no ids read);
    otherwise the written ids are compared with the input's (small inputs only)."""
    if config.limit or config.overwrite:
        return None
    fs, path = fsspec.core.url_to_fs(config.output)
    if not fs.isdir(path):
        return None
    sink = OutputSink(config.output, output_schema(), config.output_format)
    stored = sink.stored_job()
    if (stored is None or stored.get("fingerprint") != config.fingerprint() or sink.parts_of_other_formats()
            or sink.weights_changed(config, stored)):
        return None  # work left, or a refusal that the pipeline's sink reports
    units = input_units(config)
    if units is not None:
        finished = sink.done_units()
        if units.files and all(k in finished for k in units.files):
            return sum(finished[k] for k in units.files)
        if not any(sink.part_unit(p) is None for p in sink.parts()):
            return None  # no parts of older versions: what is left is the unfinished files
    done = sink.existing_ids()
    if not done:
        return None
    wanted = input_ids(config)
    if wanted is None or not wanted <= done:
        return None
    return len(wanted)
