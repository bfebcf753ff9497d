"""`vlmcap`: one console command over the job entry points (installed by `pip install -e .`).

    vlmcap caption --model DIR --input URI --output URI ...   # jobs/caption.py
    vlmcap eval --sweep sweep.yaml                            # jobs/eval.py
    vlmcap serve --model DIR                                  # jobs/serve.py
    vlmcap bench --model mllama-11b ...                       # jobs/bench.py (GPU)
    vlmcap --version

Each subcommand runs the same `main(argv)` as the script; the scripts stay the `ray job submit` entry points
(`-- python jobs/caption.py ...`), which need no installed package on the cluster. A subcommand's module is
imported only when it runs, so `vlmcap --help` starts in well under a second.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS = {
    "caption": ("jobs.caption", "caption images and videos (the batch job)"),
    "eval": ("jobs.eval", "run an evaluation sweep: models x tasks x settings, scored"),
    "serve": ("jobs.serve", "serve an OpenAI-compatible /v1/chat/completions endpoint"),
    "bench": ("jobs.bench", "engine benchmark at real model shapes (needs a GPU)"),
    "bench-pipeline": ("jobs.bench_pipeline", "Ray Data end-to-end benchmark (needs a GPU)"),
}


def package_version() -> str:
    try:
        return version("vlmcap")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def usage() -> str:
    lines = ["usage: vlmcap COMMAND [options]   (vlmcap COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "  --version       print the version and exit"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"vlmcap {package_version()}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"vlmcap: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"vlmcap {argv[0]}", *argv[1:]]  # argparse's usage lines name the subcommand
    status = module.main(argv[1:])
    return status if isinstance(status, int) else 0


def run() -> None:
    """The `vlmcap` console script: `main`, then the jobs' exit (pipeline/watchdog.py: a job stopped mid-stream
    ends at once, so Ray Data's threads cannot crash the interpreter's shutdown)."""
    from pipeline.watchdog import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
