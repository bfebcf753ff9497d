"""Serve a checkpoint as an OpenAI-compatible chat-completions endpoint on Ray Serve.

    python jobs/serve.py --model DIR [--port 8000] [--replicas N] [--tp N] [--api-key KEY] ...
    python jobs/serve.py --model DIR --no-ray          # one process under uvicorn, no Ray (development)
    serve run jobs.serve:app model=DIR replicas=2     # as a Serve app (keys are the flag names)

Then: `POST /v1/chat/completions` (images as data: URLs; streaming with "stream": true), `GET /v1/models`,
`GET /health`. The bearer token comes from --api-key or $VLMCAP_API_KEY (unset: no token needed).
Greedy decoding unless a request sets temperature (the batch job's default). Prompts are never logged.

Exit status: 0 stopped (Ctrl-C), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.serve.messages import MediaLimits  # noqa: E402
from pipeline.serve.service import ServeConfig  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory or fsspec URL (s3://...)")
    p.add_argument("--served-model-name", help="the `model` clients send (default: the checkpoint folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="model replicas (one engine each)")
    p.add_argument("--max-replicas", type=int, help="autoscale between --replicas and this many")
    p.add_argument("--tp", type=int, default=1, help="GPUs per replica (tensor parallelism)")
    p.add_argument("--api-key", default=os.environ.get("VLMCAP_API_KEY"),
                   help="bearer token clients must send (default $VLMCAP_API_KEY; unset: none)")
    p.add_argument("--max-model-len", type=int, help="prompt + generated tokens (default: what the model needs)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="concurrent sequences per replica (KV slots)")
    p.add_argument("--max-pending", type=int, help="choices in flight per replica before 429 (default 2x slots)")
    p.add_argument("--max-tokens", type=int, default=512, help="default when a request sets no max_tokens")
    p.add_argument("--max-n", type=int, default=8, help="largest `n` a request may ask for")
    p.add_argument("--max-images", type=int, default=8, help="images per request (the model may allow fewer)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="size bound of one image")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="size bound of one request body")
    p.add_argument("--num-frames", type=int, help="frames sampled per video (OneVision)")
    p.add_argument("--allow-http", action="store_true", help="fetch http(s) image URLs (public addresses only)")
    p.add_argument("--media-dir", help="allow file:// URLs and paths inside this directory")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--no-cuda-graphs", action="store_true", help="eager decode (debugging)")
    p.add_argument("--max-decode-stall-ms", type=float, default=150.0, help="while streams decode, admit only as "
                   "many new requests per step as fit this prefill time (0: full batches, best throughput)")
    p.add_argument("--stage-vision-images", type=int, help="while streams decode, encode waiting requests' images "
                   "at most this many per step, then admit them together (Mllama, one GPU per replica; "
                   "pipeline/engine/staging.py); under --max-decode-stall-ms a slice holds only as many images "
                   "as their measured encode time fits in it (~37-45 ms per image for "
                   "Mllama-11B on an H200); 0: off (default: 4 for Mllama on one GPU, else off)")
    p.add_argument("--engine-report-s", type=float, default=600.0, help="seconds between the replica's [engine] "
                   "lines (steps, admissions, token gaps)")
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction,
                   help="run each replica's engine in a process of its own, so its steps do not share the GIL with "
                   "the HTTP side (pipeline/serve/engine_process.py; default: on where a replica has one GPU (--tp 1), "
                   "else a thread of the replica)")
    p.add_argument("--step-trace", help="directory: each replica's engine writes one JSON line per step there "
                   "(pipeline/engine/step_trace.py; for benchmarks)")
    p.add_argument("--random-weights", action="store_true", help="benchmarks: random weights at the real shapes")
    p.add_argument("--no-ray", action="store_true", help="serve from this process with uvicorn, without Ray")
    p.add_argument("--verbose", action="store_true", help="Ray's and Serve's own logs")
    return p


def config_from_args(a: argparse.Namespace) -> ServeConfig:
    media = MediaLimits(max_image_bytes=int(a.max_image_mb * 2**20), max_images=a.max_images,
                        allow_http=a.allow_http, local_media_dir=a.media_dir)
    return ServeConfig(model=a.model, served_model_name=a.served_model_name, api_key=a.api_key or None,
                       max_model_len=a.max_model_len, max_num_seqs=a.max_num_seqs, max_pending=a.max_pending,
                       default_max_tokens=a.max_tokens, max_n=a.max_n, num_frames=a.num_frames, tp=a.tp,
                       dtype=a.dtype, cuda_graphs=not a.no_cuda_graphs, random_weights=a.random_weights,
                       max_body_bytes=int(a.max_body_mb * 2**20), media=media,
                       max_decode_stall_ms=a.max_decode_stall_ms or None, engine_report_s=a.engine_report_s,
                       engine_process=a.engine_process, step_trace=a.step_trace,
                       stage_vision_images=a.stage_vision_images)


def _argv_from_dict(args: dict) -> list[str]:
    """`serve run jobs.serve:app model=DIR tp=2 allow-http=true` -> the equivalent flags."""
    flags = {a.dest: a for a in parser()._actions}
    argv: list[str] = []
    for key, value in args.items():
        dest = str(key).lstrip("-").replace("-", "_")
        action = flags.get(dest)
        if action is None:
            raise ValueError(f"unknown option {key!r} (use the flag names of `python jobs/serve.py --help`)")
        if action.nargs == 0:  # a switch: store_true, or --x/--no-x
            on = str(value).lower() in ("1", "true", "yes", "on")
            if on or isinstance(action, argparse.BooleanOptionalAction):
                argv.append(action.option_strings[0 if on else 1])
        else:
            argv += [action.option_strings[0], str(value)]
    return argv


def app(args: dict):
    """Serve application builder: `serve run jobs.serve:app model=DIR [replicas=N tp=N ...]`."""
    ns = parser().parse_args(_argv_from_dict(args))
    from pipeline.serve.deployment import build_application

    return build_application(config_from_args(ns), replicas=ns.replicas, max_replicas=ns.max_replicas)


def _serve_without_ray(a: argparse.Namespace, config: ServeConfig) -> int:
    import uvicorn

    from pipeline.serve.app import build_app
    from pipeline.serve.service import ChatService

    service = ChatService(config)
    print(f"serve.py: serving {service.model_name} on http://{a.host}:{a.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(build_app(service, api_key=config.api_key), host=a.host, port=a.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    a = cli.parse_args(argv)
    if a.tp < 1 or a.replicas < 1 or a.max_num_seqs < 1 or a.max_tokens < 1 or a.max_n < 1:
        cli.error("--tp, --replicas, --max-num-seqs, --max-tokens and --max-n must be >= 1")
    if "://" not in a.model and not (Path(a.model) / "config.json").is_file():
        cli.error(f"--model {a.model} is not a checkpoint directory (no config.json)")
    if a.stage_vision_images and "://" not in a.model:
        from models.registry import architecture
        from pipeline.engine.staging import can_stage

        if not can_stage(architecture(Path(a.model)), a.tp):
            cli.error("--stage-vision-images needs an Mllama model on one GPU per replica (--tp 1)")
    config = config_from_args(a)
    if a.no_ray:
        return _serve_without_ray(a, config)
    import ray
    from ray import serve

    from pipeline.serve.deployment import build_application

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
             logging_level=logging.INFO if a.verbose else logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": path}} if "RAY_ADDRESS" not in os.environ else None)
    serve.start(http_options={"host": a.host, "port": a.port})
    application = build_application(config, replicas=a.replicas, max_replicas=a.max_replicas)
    serve.run(application, name="vlmcap", route_prefix="/", blocking=False)
    print(f"serve.py: serving {config.model_name} on http://{a.host}:{a.port}/v1 (Ctrl-C stops, draining "
          "in-flight requests)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
