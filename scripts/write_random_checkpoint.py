"""Write a random-weight checkpoint at a real model's shapes, in the hub's layout, with our own code.

    python scripts/write_random_checkpoint.py --config ../shared/checkpoints/Llama-3.2-11B-Vision-Instruct \
        --out /tmp/mllama-11b-random [--device cuda] [--shard-gib 5]

Why: no model hub is reachable from the GPU machines, and loading a real checkpoint under tensor parallelism
(each rank reading only its slices of every tensor) has to be tested at real sizes. The result has what a
downloaded checkpoint has: `model-0000N-of-0000M.safetensors` shards of bf16 tensors under the hub's names,
`model.safetensors.index.json`, and every metadata file of `--config` (tokenizer, chat template, processor
and generation configs), so `jobs/caption.py --model OUT` and `--tp N` run on it unchanged. Weights come from
`models.random_weights` (N(0, 0.02), gates 0.5) and are filled on `--device`, then streamed to disk one
shard at a time, so host memory holds at most one shard.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.loader import INDEX_FILE  # noqa: E402
from models.random_weights import random_model  # noqa: E402
from models.registry import architecture, model_class  # noqa: E402

WEIGHT_FILES = ("model.safetensors", INDEX_FILE)


def copy_metadata(src: Path, out: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.name not in WEIGHT_FILES and not f.name.endswith(".safetensors"):
            shutil.copyfile(f, out / f.name)
        elif f.is_dir():
            shutil.copytree(f, out / f.name, dirs_exist_ok=True)


def write_shards(state: dict[str, torch.Tensor], out: Path, shard_bytes: int) -> dict[str, str]:
    """Greedy split in name order; -> tensor name -> shard file name."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, names in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: state[n].detach().to("cpu").contiguous() for n in names}, out / fname,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, fname))
        print(f"  {fname}: {len(names)} tensors", flush=True)
    return weight_map


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="dir with config.json (+ tokenizer/processor files)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--shard-gib", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty; choose a new --out")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cls = model_class(architecture(args.config))
    # fuse=False: the checkpoint keeps the hub's separate q/k/v and gate/up tensors.
    model = random_model(cls, args.config, getattr(torch, args.dtype), args.device, seed=args.seed, fuse=False)
    tied = set(getattr(model, "tied_weights", {}))
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    total = sum(t.numel() * t.element_size() for t in state.values())
    print(f"{cls.__name__}: {len(state)} tensors, {total / 2**30:.1f} GiB ({args.dtype}), "
          f"filled in {time.perf_counter() - t0:.0f} s", flush=True)
    weight_map = write_shards(state, args.out, int(args.shard_gib * 2**30))
    (args.out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                  indent=2))
    copy_metadata(args.config, args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
