"""LLaVA-OneVision under tensor parallelism on the CPU.

- tp=2 in two gloo processes (the test process is rank 0) gives the logits of tp=1 (fp32, max abs diff
  <= 1e-5) and the same greedy tokens on prompts with images (that demonstrably change the output), for
  the tiny checkpoint (4 query / 2 KV heads: one KV head per rank) and a variant with one KV head
  (replicated on both ranks). The tiny checkpoint ties lm_head to the embedding, so tying is covered too.
- Rank shards of a loaded checkpoint are exactly the expected rows/columns (biases included), the vision
  tower is replicated, and each rank's cache spec has its own KV head count.
- Loading reads only the rank's shard: every slice read from safetensors is counted, per rank.
- Real shapes: the 72B config's per-rank module trees at tp=2/4/8 on the meta device, and its memory plan
  (scripts/tp_plan.py).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.generate import greedy_generate, prompt_logits
from models.onevision import anyres
from models.onevision.model import LlavaOnevisionForConditionalGeneration, OneVisionMedia
from ops.parallel import ParallelContext
from pipeline.engine.distributed import Replica

PAD = 151643


def load(ckpt, tp: ParallelContext | None = None) -> LlavaOnevisionForConditionalGeneration:
    kwargs = {"tp": tp} if tp is not None else {}
    return LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, **kwargs)


def batch(cfg, seed: int):
    """Three prompts: one anyres image (base + 1 crop), text only, two images; ids are ordinary text tokens.

    Images are small on purpose: every rank all-gathers the logits of every prompt position."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.vision.image_size

    def text(n):
        return torch.randint(100, 150000, (n,), generator=g).tolist()

    def crops(n):
        return torch.randn(n, 3, s, s, generator=g)

    one = OneVisionMedia(images=[crops(anyres.num_patches(20, 30, cfg.image_grid_pinpoints, s))],
                         image_sizes=[(20, 30)])
    two = OneVisionMedia(images=[crops(1), crops(1)], image_sizes=[(40, 40), (30, 50)])
    media = [one, None, two]
    prompts = []
    for m, n in zip(media, (5, 9, 3), strict=True):
        n_img = m.token_counts(cfg)[0] if m is not None else 0
        prompts.append([*text(2), *[cfg.image_token_id] * n_img, *text(n)])
    return prompts, media


@pytest.fixture(scope="module")
def kv1_dir(tiny_ov_dir, tmp_path_factory):
    """The tiny checkpoint cut to one KV head (its first): at tp=2 both ranks hold a copy of it."""
    dest = tmp_path_factory.mktemp("tiny_ov_kv1")
    shutil.copytree(tiny_ov_dir, dest, dirs_exist_ok=True)
    cfg = json.loads((tiny_ov_dir / "config.json").read_text())
    text = cfg["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text["num_key_value_heads"] = 1
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    with safe_open(tiny_ov_dir / "model.safetensors", framework="pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    for n in tensors:
        if n.startswith("language_model.") and ("k_proj." in n or "v_proj." in n):
            tensors[n] = tensors[n][:head_dim].clone()
    save_file(tensors, dest / "model.safetensors", metadata=metadata)
    return dest


@pytest.mark.parametrize("variant", ["kv2", "kv1"])
def test_tp2_matches_tp1_logits_and_greedy_tokens(tiny_ov_dir, kv1_dir, variant):
    ckpt = tiny_ov_dir if variant == "kv2" else kv1_dir
    ref = load(ckpt)
    kv = 2 if variant == "kv2" else 1
    assert ref.kv_cache_spec()[1] == kv
    prompts, media = batch(ref.cfg, seed=0)
    want_logits = prompt_logits(ref, prompts, media, pad_id=PAD)
    want_tokens = greedy_generate(ref, prompts, media, max_new_tokens=8, pad_id=PAD)
    # The images matter (so the replicated vision path feeds the sharded decoder, not bypassed).
    other_media = batch(ref.cfg, seed=1)[1]
    other = prompt_logits(ref, prompts, [media[0], None, other_media[2]], pad_id=PAD)
    assert (other[2] - want_logits[2]).abs().max().item() > 1e-3

    with Replica.start(2, "pipeline.engine.distributed:ModelShard", (str(ckpt), "float32"),
                       backend="gloo", timeout_s=120) as replica:
        got_logits = replica.call("apply", "models.generate:prompt_logits", prompts, media, pad_id=PAD)
        got_tokens = replica.call("apply", "models.generate:greedy_generate", prompts, media,
                                  max_new_tokens=8, pad_id=PAD)
        spec = replica.call("kv_cache_spec")
    # per rank: one KV head each (kv2 split, kv1 replicated)
    assert spec == (ref.cfg.text.num_hidden_layers, 1, ref.cfg.text.head_dim)
    assert got_logits.shape == want_logits.shape
    print(f"{variant}: tp=2 vs tp=1 max abs logit diff {(got_logits - want_logits).abs().max().item():.2e}")
    assert (got_logits - want_logits).abs().max().item() <= 1e-5
    assert got_tokens == want_tokens


def test_tp_shards_hold_the_checkpoint_rows(tiny_ov_dir, kv1_dir):
    for ckpt, kv_split in ((tiny_ov_dir, True), (kv1_dir, False)):
        with safe_open(ckpt / "model.safetensors", framework="pt") as f:
            full = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
        for rank in range(2):
            model = load(ckpt, ParallelContext(rank, 2))
            p = dict(model.named_parameters(remove_duplicate=False))
            att = "language_model.model.layers.1.self_attn."
            for leaf in ("q_proj.weight", "q_proj.bias"):
                assert torch.equal(p[att + leaf], full[att + leaf].chunk(2)[rank])
            for leaf in ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"):
                assert torch.equal(p[att + leaf], full[att + leaf].chunk(2)[rank] if kv_split else full[att + leaf])
            assert torch.equal(p[att + "o_proj.weight"], full[att + "o_proj.weight"].chunk(2, dim=1)[rank])
            mlp = "language_model.model.layers.0.mlp."
            assert torch.equal(p[mlp + "up_proj.weight"], full[mlp + "up_proj.weight"].chunk(2)[rank])
            assert torch.equal(p[mlp + "down_proj.weight"], full[mlp + "down_proj.weight"].chunk(2, dim=1)[rank])
            emb = "language_model.model.embed_tokens.weight"
            assert torch.equal(p[emb], full[emb].chunk(2)[rank])
            # tied: the lm_head is this rank's embedding shard, not a separate copy
            assert p["language_model.lm_head.weight"].data_ptr() == p[emb].data_ptr()
            for n in ("image_newline", "multi_modal_projector.linear_1.weight"):
                assert torch.equal(p[n], full[n])
            vision = [n for n in full if n.startswith("vision_tower.")]
            assert vision and all(torch.equal(p[n], full[n]) for n in vision)
            assert model.kv_cache_spec()[1] == 1


@pytest.mark.parametrize("variant", ["kv2", "kv1"])
def test_each_rank_reads_only_its_shard(tiny_ov_dir, kv1_dir, variant, shard_reads):
    ckpt = tiny_ov_dir if variant == "kv2" else kv1_dir
    with safe_open(ckpt / "model.safetensors", framework="pt") as f:
        nbytes = {n: f.get_tensor(n).nbytes for n in f.keys()}  # noqa: SIM118  (bytes as stored)

    def sharded(n: str) -> bool:  # text q/k/v (+ biases), o_proj, MLP, embedding; k/v only when there are 2 heads
        if "language_model" not in n:
            return False
        if ("k_proj." in n or "v_proj." in n) and variant == "kv1":
            return False
        return n.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
                           "v_proj.bias", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
                           "down_proj.weight", "embed_tokens.weight", "lm_head.weight"))

    split = {n for n in nbytes if sharded(n)}
    assert any("embed_tokens" in n for n in split) and any("down_proj" in n for n in split)
    assert any("v_proj.bias" in n for n in split) == (variant == "kv2")
    one, _ = shard_reads(LlavaOnevisionForConditionalGeneration, ckpt, ParallelContext())
    assert one == Counter(nbytes)  # tp=1 reads every tensor exactly once (the tied lm_head reads nothing more)
    for rank in range(2):
        counts, full_reads = shard_reads(LlavaOnevisionForConditionalGeneration, ckpt, ParallelContext(rank, 2))
        assert not full_reads & split  # no rank ever materialises a whole sharded tensor
        assert counts == Counter({n: b // 2 if n in split else b for n, b in nbytes.items()}), rank


# --- real shapes: scripts/tp_plan.py on the 72B config (meta device) --------------------------------------
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_72b_shards_have_the_expected_shapes(shared_checkpoints, tp, tp_plan):
    ckpt = shared_checkpoints / "llava-onevision-qwen2-72b-ov-hf"
    assert tp_plan.supports_tp(ckpt)  # per-rank module trees, not name rules
    full = tp_plan.rank_shapes(ckpt, 1, 0)
    att, mlp = "language_model.model.layers.0.self_attn.", "language_model.model.layers.0.mlp."
    want = {
        att + "q_proj.weight": (8192 // tp, 8192), att + "q_proj.bias": (8192 // tp,),
        att + "k_proj.weight": (1024 // tp, 8192),  # 8 KV heads x 128: one per rank at tp=8
        att + "v_proj.bias": (1024 // tp,),
        att + "o_proj.weight": (8192, 8192 // tp),
        mlp + "gate_proj.weight": (29568 // tp, 8192), mlp + "up_proj.weight": (29568 // tp, 8192),
        mlp + "down_proj.weight": (8192, 29568 // tp),
        "language_model.model.embed_tokens.weight": (152128 // tp, 8192),
        "language_model.lm_head.weight": (152128 // tp, 8192),
        "language_model.model.norm.weight": (8192,),
        "multi_modal_projector.linear_1.weight": (8192, 1152),
        "image_newline": (8192,),
    }
    vision = {n: s for n, s in full.items() if n.startswith("vision_tower.")}
    assert len(vision) > 400
    model = tp_plan.meta_model(ckpt)
    for rank in (0, tp - 1):
        shapes = tp_plan.rank_shapes(ckpt, tp, rank)
        assert shapes.keys() == full.keys()
        assert {k: shapes[k] for k in want} == want
        assert {n: shapes[n] for n in vision} == vision  # the SigLIP tower is replicated
        # the name rules (used for reports) agree with the module tree's own shards
        ctx = ParallelContext(rank, tp)
        assert {n: tp_plan.rule_shape(n, tuple(p.shape), model.cfg.text, ctx)
                for n, p in model.named_parameters()} == shapes


def test_72b_memory_plan(shared_checkpoints, capsys, tp_plan):
    ckpt = shared_checkpoints / "llava-onevision-qwen2-72b-ov-hf"
    p = tp_plan.plan(ckpt, 2, seqs=32, max_len=4096)
    assert 146.3e9 < p["weights_total"] < 146.4e9  # index.json total_size: 146,363,141,184 bytes
    assert 0.5 * p["weights_total"] < p["weights_per_rank"] < 0.51 * p["weights_total"]
    assert p["fits"]["H200"]["fits"] and not p["fits"]["H100"]["fits"]
    assert tp_plan.plan(ckpt, 4)["fits"]["H100"]["fits"]
    tp_plan.main(["--model", str(ckpt), "--tp", "4"])
    out = capsys.readouterr().out
    assert "tp=4  (module tree on meta)" in out and "H100 (79.6 GiB, 90% usable): FITS" in out
