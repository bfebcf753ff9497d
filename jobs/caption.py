"""Caption or question images and videos at scale with Ray Data.

    python jobs/caption.py                                   # demo: bundled media + bundled tiny model
    python jobs/caption.py --model DIR --input URI --output URI [--prompt TEXT] ...
    ray job submit --working-dir . -- python jobs/caption.py --model ... --input s3://... --output s3://...

Every input row yields exactly one output row (id, text, finish_reason, error, token counts, model, kept
columns). Re-running the same command resumes: ids already written are skipped. A different model,
prompt or sampling configuration on the same --output is refused unless --overwrite.

Exit status: 0 done (also: nothing left to do), 1 runtime failure (e.g. the job stalled), 2 usage or
configuration error (bad flag or --config, missing --input, --output is a file, unusable --model, a
resume onto output written with other settings), 130 interrupted (Ctrl-C; what was received is saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.job_config import JobConfig, read_yaml  # noqa: E402

DEMO_MODEL = ROOT / "demo" / "model"
DEMO_INPUT = ROOT / "demo" / "media"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caption.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input / output")
    io.add_argument("--config", type=Path, help="YAML file with any of the options below (flags override it)")
    io.add_argument("--model", help="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    io.add_argument("--input", help="parquet file/dir/glob, folder of images/videos, or WebDataset .tar "
                    "shards; local or s3://")
    io.add_argument("--output", help="output directory, local or s3://")
    io.add_argument("--output-format", choices=["parquet", "jsonl"], help="default parquet")
    io.add_argument("--id-column", help="input column with unique row ids (default id)")
    io.add_argument("--image-column", help="column with image bytes or paths/URIs (default image)")
    io.add_argument("--video-column", help="column with video bytes or paths/URIs (default video)")
    io.add_argument("--keep-columns", nargs="*", help="input columns copied to the output")
    io.add_argument("--limit", type=int, help="process only the first N rows (smoke tests)")
    io.add_argument("--overwrite", action="store_true", help="replace output written with another configuration")
    io.add_argument("--gallery", type=int, metavar="N", help="when the job is done, write <output>/_gallery.html: "
                    "N sampled rows with thumbnail, id and caption or error (self-contained HTML)")
    pr = p.add_argument_group("prompt")
    pr.add_argument("--prompt", help="one user turn: the row's media, then this text (default: describe the image)")
    pr.add_argument("--prompt-column", help="per-row prompt text column")
    pr.add_argument("--messages-column", help="per-row OpenAI-style messages (JSON string or list) column")
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, help="default 128")
    gen.add_argument("--temperature", type=float, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass, default 1.0")
    gen.add_argument("--top-k", type=int, help="0 = off (default)")
    gen.add_argument("--seed", type=int, help="per-row seed base for reproducible sampling")
    gen.add_argument("--stop", nargs="*", help="stop strings (output is cut before them)")
    gen.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens (benchmarks)")
    gen.add_argument("--num-frames", type=int, help="frames sampled per video (default: the checkpoint's)")
    rt = p.add_argument_group("runtime")
    rt.add_argument("--tp", type=int, help="GPUs per model replica (tensor parallel), default 1")
    rt.add_argument("--replicas", type=int, help="model replicas (GPU actors), default 1")
    rt.add_argument("--batch-size", type=int, help="rows per Ray batch into the GPU stage, default 64 (small jobs "
                    "get smaller batches: at least one per call in flight)")
    rt.add_argument("--batches-in-flight", type=int, help="Ray batches each GPU actor works on at once, default 8; "
                    "keep batch size x this >= 2x the engine's slots (its '[engine]' line shows 'waiting' > 0)")
    rt.add_argument("--max-model-len", type=int, help="prompt + generated tokens per sequence; default: the "
                    "largest prompt the model's processor makes for one image/video (at --num-frames) + the prompt "
                    "+ --max-new-tokens, capped by the model's positions")
    rt.add_argument("--max-num-seqs", type=int, help="max concurrent sequences per replica, default 256 (fewer when "
                    "the KV cache does not fit: GPU memory, or 2 GiB on a CPU)")
    rt.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory to use, default 0.9")
    rt.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False,
                    help="run the decode step eagerly (debugging; slower)")
    rt.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default bfloat16")
    rt.add_argument("--max-prefill-requests", type=int, help="requests admitted per prefill batch (also the "
                    "vision encoder's batch), default 32")
    rt.add_argument("--max-decode-stall-ms", type=float, help="while sequences decode, admit only as many new "
                    "requests per step as fit this prefill time (latency over throughput); default: full batches")
    rt.add_argument("--stage-vision-images", type=int, help="while sequences decode, encode the next group's "
                    "images this many per step, then admit it in one cheap step (Mllama, one GPU); default 0: off")
    rt.add_argument("--random-weights", action="store_true", help="benchmark/dry run: random weights at the "
                    "checkpoint's shapes (needs only config.json + tokenizer/processor files); gibberish output")
    rt.add_argument("--allow-http", action="store_true", help="allow http(s) media URLs (bounded fetches)")
    rt.add_argument("--progress-interval", dest="progress_interval_s", type=float, help="seconds, default 5")
    rt.add_argument("--stall-timeout", dest="stall_timeout_s", type=float, help="fail the job (exit 1) when no "
                    "output row arrives for this many seconds, model loading included; 0 never, default 1800")
    rt.add_argument("--engine-report-interval", dest="engine_report_s", type=float, help="seconds between each "
                    "GPU actor's '[engine]' line (busy/idle share, sequences running/waiting, tokens/s), default 60")
    rt.add_argument("--verbose", action="store_true", help="also show Ray's and Ray Data's own logs and progress "
                    "blocks (default: only this job's progress lines, warnings and errors)")
    return p


def flag_aliases(p: argparse.ArgumentParser) -> dict[str, str]:
    """Flag name (without dashes) -> config field, for the flags whose field has another name."""
    out = {}
    for action in p._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt[2:].replace("-", "_") != action.dest:
                out[opt[2:]] = action.dest
    out["no-cuda-graphs"] = "no_cuda_graphs"  # inverted below
    return out


def config_from_args(args: argparse.Namespace, p: argparse.ArgumentParser) -> JobConfig:
    """Flags (over the --config YAML) -> JobConfig; ValueError for anything the user must fix."""
    values = {k: v for k, v in vars(args).items()
              if k not in ("config", "verbose") and v is not None and v is not False}
    for k in ("keep_columns", "stop"):
        if k in values:
            values[k] = tuple(values[k])
    if args.cuda_graphs is False:
        values["cuda_graphs"] = False
    if args.config:
        data = read_yaml(args.config, flag_aliases(p))
        if "no_cuda_graphs" in data:
            data["cuda_graphs"] = not data.pop("no_cuda_graphs")
        return JobConfig.from_dict({**data, **values})
    if not values.get("model") and not values.get("input"):
        out = values.get("output") or str(Path.cwd() / "caption_demo_output")
        print(f"[caption] no --model/--input given: running the demo on {DEMO_INPUT} with the bundled "
              f"tiny model (trained only on the shapes world of demo/world.py: right about its drawings and clips, "
              f"lost on real photos) -> {out}", flush=True)
        values.update(model=str(DEMO_MODEL), input=str(DEMO_INPUT), output=out, overwrite=True,
                      max_new_tokens=values.get("max_new_tokens", 40))  # room for a 5-shape caption
    missing = [k for k in ("model", "input", "output") if not values.get(k)]
    if missing:
        raise ValueError(f"missing --{' --'.join(missing)} (or run with no arguments for the demo)")
    return JobConfig.from_dict(values)


def fail(message: str, status: int) -> int:
    print(f"caption.py: error: {message}", file=sys.stderr, flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 runtime failure, 2 usage or configuration error, 130 interrupted (Ctrl-C;
    the rows received so far are committed and a re-run resumes)."""
    cli = parser()
    args = cli.parse_args(argv)  # argparse itself exits 2 on unknown flags
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from models.errors import CheckpointError, InputError
    from pipeline.preflight import preflight, rows_already_done
    from pipeline.sink import ConfigMismatchError

    try:
        config = config_from_args(args, cli)
        preflight(config)  # before Ray starts: a wrong path is reported in a second, not after Ray's start-up
        done = rows_already_done(config)
    except (ValueError, CheckpointError, ConfigMismatchError) as exc:  # InputError is a ValueError
        return fail(str(exc), 2)
    if done is not None:
        print(f"[caption] nothing to do: all {done} input rows are already in {config.output} (written with these "
              "settings); pass --overwrite to redo them", flush=True)
        write_gallery(config)  # the page is of the output, which is complete: asked for, it is (re)written
        print(json.dumps({"rows_written": 0, "rows_skipped_resume": done, "output": config.output}))
        return 0
    import ray

    from pipeline.builder import run_job
    from pipeline.logs import quiet_ray

    quiet_ray(verbose=args.verbose)
    # A local cluster's workers need the repo (and whatever the caller had) on their path; a submitted job's
    # working dir is already there.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
             logging_level=logging.INFO if args.verbose else logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": path}} if "RAY_ADDRESS" not in os.environ else None)
    from pipeline.watchdog import JobStalledError

    try:
        summary = run_job(config)
    except (ConfigMismatchError, InputError) as exc:  # the user's to fix: a clear message, not a traceback
        return fail(str(exc), 2)
    except JobStalledError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return interrupted(config)
    write_gallery(config)
    if config.model == str(DEMO_MODEL):
        import pyarrow.dataset as pds

        rows = pds.dataset(config.output, format=config.output_format).head(5).to_pylist()
        for r in rows:
            print(f"  {r['id']}: {r['finish_reason']} {r['text']!r}{' ' + r['error'] if r['error'] else ''}")
    print(json.dumps(summary))
    return 0


def write_gallery(config: JobConfig) -> None:
    """`--gallery N`: `<output>/_gallery.html` from what the output holds (also when a re-run had nothing
    left to do)."""
    if config.gallery:
        from pipeline.gallery import write_gallery as write

        print(f"[caption] gallery: {write(config, config.gallery)}", flush=True)


def interrupted(config: JobConfig) -> int:
    """Ctrl-C: the rows received were committed on the way out (run_job flushes in `finally`); say how
    many the output holds and how to go on."""
    from pipeline.schema import output_schema
    from pipeline.sink import OutputSink

    # Ray Data's threads notice the shutdown at exit and log tracebacks about it: nothing a user can act on.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        saved = OutputSink(config.output, output_schema(), config.output_format).count_rows()  # footers, no ids
    except Exception:  # noqa: BLE001 - the message matters more than the count here
        saved = "some"
    print(f"[caption] interrupted: {saved} rows are saved in {config.output}; re-run the same command to "
          "resume", file=sys.stderr, flush=True)
    return 130


if __name__ == "__main__":
    from pipeline.watchdog import exit_process

    exit_process(main())
