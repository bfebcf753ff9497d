"""Per-rank tensor-parallel plan of a real checkpoint: shard shapes and GPU memory, on the meta device.

    python scripts/tp_plan.py --model ../shared/checkpoints/Llama-3.2-90B-Vision-Instruct --tp 2 4 8
    python scripts/tp_plan.py --model ../shared/checkpoints/llava-onevision-qwen2-72b-ov-hf --tp 2
        [--seqs 32] [--max-len 4096] [--max-images 1] [--reserve-gib 8] [--utilization 0.9]

Only `config.json` is read (no weights). Per rank it prints the shapes of one layer's sharded tensors, the
weight bytes (bf16), the KV cache per sequence (self-attention K/V for `--max-len` tokens, plus for Mllama
the cross-attention K/V of `--max-images` 4-tile images, as pipeline/engine/runners/mllama.py keeps
them) and a verdict for H100 and H200: weights + `--seqs` sequences of KV + the activation reserve must
fit in `--utilization` of the GPU (the engine's own sizing rule, pipeline/engine/builder.py).

Shapes: each rank's model is built on the meta device with a `ParallelContext(rank, tp)`, so the shapes
are the module tree's own (both Mllama and OneVision take `tp`). `rule_shape` states the same sharding
rules (ops/parallel.py) by tensor name; it is the fallback for a model class without a `tp` argument and
is checked against the module trees of the 90B and 72B configs in tests/models/*/test_*_tp.py.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.registry import architecture, model_class  # noqa: E402
from ops.parallel import ParallelContext, head_shard, vocab_shard  # noqa: E402

GPUS_GIB = {"H100": 79.6, "H200": 140.4}  # torch.cuda total memory of the 80 GB and 141 GB parts
BF16 = 2


def meta_model(ckpt: Path, ctx: ParallelContext | None = None) -> torch.nn.Module:
    cls = model_class(architecture(ckpt))
    with torch.device("meta"):
        return cls(cls.config_class.from_dir(ckpt), ctx) if ctx else cls(cls.config_class.from_dir(ckpt))


def supports_tp(ckpt: Path) -> bool:
    return "tp" in inspect.signature(model_class(architecture(ckpt)).__init__).parameters


def rule_shape(name: str, shape: tuple[int, ...], text, ctx: ParallelContext) -> tuple[int, ...]:
    """This rank's shape of a language-model tensor under the ops/parallel.py sharding rules."""
    if not name.startswith("language_model."):
        return shape  # vision towers and projectors are replicated
    leaf = name.rsplit(".", 2)
    proj, kind = leaf[-2], leaf[-1]
    hd = text.head_dim
    if proj == "q_proj":
        return (head_shard(text.num_attention_heads, ctx)[1] * hd, *shape[1:])
    if proj in ("k_proj", "v_proj"):
        return (head_shard(text.num_key_value_heads, ctx, replicate=True)[1] * hd, *shape[1:])
    if proj in ("gate_proj", "up_proj"):
        return (shape[0] // ctx.world_size, *shape[1:])
    if proj in ("o_proj", "down_proj"):
        return (shape[0], shape[1] // ctx.world_size) if kind == "weight" else shape
    if proj in ("embed_tokens", "lm_head"):
        return (vocab_shard(shape[0], ctx)[2], shape[1])
    return shape  # norms, gates


def rank_shapes(ckpt: Path, tp: int, rank: int) -> dict[str, tuple[int, ...]]:
    ctx = ParallelContext(rank, tp)
    if supports_tp(ckpt):
        return {n: tuple(p.shape) for n, p in meta_model(ckpt, ctx).named_parameters()}
    model = meta_model(ckpt)
    text = model.cfg.text
    return {n: rule_shape(n, tuple(p.shape), text, ctx) for n, p in model.named_parameters()}


def kv_bytes_per_seq(ckpt: Path, tp: int, max_len: int, max_images: int) -> int:
    cfg = model_class(architecture(ckpt)).config_class.from_dir(ckpt)
    t = cfg.text
    hd = t.head_dim
    kv = head_shard(t.num_key_value_heads, ParallelContext(0, tp), replicate=True)[1]
    cross_layers = len(getattr(t, "cross_attention_layers", ()))
    per_token_layer = 2 * kv * hd * BF16
    total = (t.num_hidden_layers - cross_layers) * max_len * per_token_layer
    if cross_layers:
        total += cross_layers * max_images * cfg.vision.max_num_tiles * cfg.vision.num_patches * per_token_layer
    return total


def plan(ckpt: Path, tp: int, seqs: int = 32, max_len: int = 4096, max_images: int = 1,
         reserve_gib: float = 8.0, utilization: float = 0.9) -> dict:
    per_rank = [rank_shapes(ckpt, tp, r) for r in range(tp)]
    weights = max(sum(torch.Size(s).numel() for s in shapes.values()) for shapes in per_rank) * BF16
    full = sum(torch.Size(s).numel() for s in rank_shapes(ckpt, 1, 0).values()) * BF16
    kv = kv_bytes_per_seq(ckpt, tp, max_len, max_images)
    need = weights + seqs * kv + reserve_gib * 2**30
    fits = {}
    for gpu, gib in GPUS_GIB.items():
        usable = gib * 2**30 * utilization
        fits[gpu] = {"fits": need <= usable, "max_seqs": max(0, int((usable - weights - reserve_gib * 2**30) // kv))}
    return {"tp": tp, "shapes": per_rank, "weights_per_rank": weights, "weights_total": full,
            "kv_per_seq": kv, "need": need, "fits": fits,
            "budget": dict(seqs=seqs, max_len=max_len, max_images=max_images, reserve_gib=reserve_gib,
                           utilization=utilization)}


def report(ckpt: Path, p: dict) -> str:
    gb = 1e9
    b = p["budget"]
    shapes = p["shapes"][0]
    layer = next(n.rsplit("self_attn.", 1)[0] for n in shapes if n.startswith("language_model.")
                 and "self_attn.q_proj.weight" in n)
    cross = next((n.rsplit("cross_attn.", 1)[0] for n in shapes if "cross_attn.q_proj.weight" in n), None)
    keys = [layer + s for s in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
                                "mlp.gate_proj.weight", "mlp.down_proj.weight")]
    if cross:
        keys += [cross + s for s in ("cross_attn.q_proj.weight", "cross_attn.k_proj.weight")]
    keys += [n for n in shapes if n.endswith(("embed_tokens.weight", "lm_head.weight"))]
    lines = [f"{ckpt.name}  tp={p['tp']}  ({'module tree' if supports_tp(ckpt) else 'sharding rules'} on meta)",
             f"  weights: {p['weights_total'] / gb:.1f} GB total, {p['weights_per_rank'] / gb:.1f} GB per rank (bf16)"]
    for k in keys:
        per = " ".join(str(list(s[k])) for s in p["shapes"][: min(p["tp"], 2)])
        lines.append(f"    {k}: rank0/1 {per}")
    lines.append(f"  KV per sequence per rank: {p['kv_per_seq'] / 2**20:.0f} MiB ({b['max_len']} tokens"
                 + (f", {b['max_images']} image(s) cross K/V" if cross else "") + ")")
    lines.append(f"  need per rank: {p['weights_per_rank'] / gb:.1f} GB weights + {b['seqs']} seqs x KV "
                 f"= {b['seqs'] * p['kv_per_seq'] / gb:.1f} GB + {b['reserve_gib']} GiB activations "
                 f"= {p['need'] / gb:.1f} GB")
    for gpu, f in p["fits"].items():
        lines.append(f"  {gpu} ({GPUS_GIB[gpu]} GiB, {b['utilization']:.0%} usable): "
                     f"{'FITS' if f['fits'] else 'DOES NOT FIT'} (room for {f['max_seqs']} sequences)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="checkpoint dir (config.json is enough)")
    ap.add_argument("--tp", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--seqs", type=int, default=32, help="concurrent sequences to budget KV for")
    ap.add_argument("--max-len", type=int, default=4096, help="prompt + generated tokens per sequence")
    ap.add_argument("--max-images", type=int, default=1, help="images per request (Mllama cross K/V)")
    ap.add_argument("--reserve-gib", type=float, default=8.0, help="activation reserve (engine default)")
    ap.add_argument("--utilization", type=float, default=0.9, help="usable share of GPU memory")
    args = ap.parse_args(argv)
    for tp in args.tp:
        print(report(args.model, plan(args.model, tp, args.seqs, args.max_len, args.max_images, args.reserve_gib,
                                      args.utilization)))


if __name__ == "__main__":
    main()
