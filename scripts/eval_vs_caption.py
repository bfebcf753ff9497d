"""Does a sweep cell run as fast as the caption job on the same rows? (issue 12: the sweep adds scoring, not
slowness.)

    python scripts/eval_vs_caption.py --model ../shared/checkpoints/llava-onevision-qwen2-0.5b-ov-hf \
        --random-weights --rows 2000 --work /tmp/evc --json /tmp/evc.json

Writes `--rows` JPEG rows (id, image, question, answers) into Parquet, then runs, each in its own process
and Ray session as a user would: `jobs/caption.py` with the rendered eval prompt as a prompt column, and
`jobs/eval.py` on a one-cell sweep (same model, same rows, same prompt, same max_new_tokens, EOS ignored so
both generate the same number of tokens). Compares the rows/s each reports (the same progress clock of
`pipeline.builder.run_job`) and each process's wall time (which also holds Ray start-up, model build, the
sweep's data preparation and scoring). Prints a Markdown table; `--json` writes it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.eval.tasks import TaskSpec  # noqa: E402

QUESTIONS = ("What color is the square?", "How many shapes are there?", "What shape is red?")
TEMPLATE = TaskSpec(name="rows", metrics=("exact_match",)).prompt  # what the sweep's cell renders


def write_rows(path: Path, n: int, size: int, seed: int = 0) -> None:
    """`n` rows of smooth random JPEGs (a few distinct images, as a real set has repeats of nothing)."""
    rng = np.random.default_rng(seed)
    rows = {"id": [], "image": [], "question": [], "answers": [], "prompt": []}
    for i in range(n):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        q = QUESTIONS[i % len(QUESTIONS)]
        rows["id"].append(f"r{i:06d}")
        rows["image"].append(buf.getvalue())
        rows["question"].append(q)
        rows["answers"].append(["red"])
        rows["prompt"].append(TEMPLATE.format(question=q))
    pq.write_table(pa.table(rows), path)


def timed_run(cmd: list[str], log: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - t0
    text = log.read_text()
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-30:])
        raise SystemExit(f"{cmd[1]} failed (exit {proc.returncode}); last lines:\n{tail}")
    return wall, text


def last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit("no JSON summary line in the output")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("/tmp/eval_vs_caption"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--order", choices=["caption-first", "eval-first"], default="caption-first")
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "rows.parquet"
    write_rows(data, args.rows, args.image_size)
    extra = ["--random-weights"] if args.random_weights else []
    sweep = {"output": str(args.work / f"eval-{time.time_ns()}"),
             "models": {"m": {"model": args.model, "random_weights": args.random_weights}},
             "tasks": [{"name": "rows", "metrics": ["exact_match"], "input": str(data),
                        "max_new_tokens": args.max_new_tokens}],
             "job": {"ignore_eos": True}}
    (args.work / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    result: dict = {"rows": args.rows, "model": args.model, "order": args.order}

    def caption() -> None:
        wall, out = timed_run(
            [sys.executable, "jobs/caption.py", "--model", args.model, "--input", str(data), "--output",
             str(args.work / f"caption-{time.time_ns()}"), "--prompt-column", "prompt", "--max-new-tokens",
             str(args.max_new_tokens), "--ignore-eos", *extra], args.work / "caption.log")
        result.update(caption_rows_per_s=last_json(out)["rows_per_s"], caption_wall_s=round(wall, 1))

    def sweep_cell() -> None:
        wall, out = timed_run([sys.executable, "jobs/eval.py", "--sweep", str(args.work / "sweep.yaml")],
                              args.work / "eval.log")
        run = last_json(out)["run_id"]
        cell = json.loads((Path(sweep["output"]) / run / "m" / "rows" / "default" / "cell.json").read_text())
        result.update(eval_cell_rows_per_s=cell["rows_per_s"], eval_wall_s=round(wall, 1),
                      scoring_s=cell["scoring_s"])

    for phase in (caption, sweep_cell) if args.order == "caption-first" else (sweep_cell, caption):
        phase()  # the second process may find warmer caches (page cache, compile caches): --order swaps them
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    cap_rate, ev_rate = result["caption_rows_per_s"], result["eval_cell_rows_per_s"]
    result["rate_ratio"] = round(ev_rate / cap_rate, 3)
    print("| run | rows/s (job clock) | process wall s |\n|---|---|---|")
    print(f"| jobs/caption.py | {cap_rate:.2f} | {result['caption_wall_s']:.1f} |")
    print(f"| jobs/eval.py cell | {ev_rate:.2f} | {result['eval_wall_s']:.1f} |")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
