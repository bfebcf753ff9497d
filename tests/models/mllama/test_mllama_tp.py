"""Mllama under tensor parallelism on the CPU.

- tp=2 in two gloo processes (the test process is rank 0) gives the logits of tp=1 (fp32, max abs diff
  <= 1e-5) and the same greedy tokens, on a tiny checkpoint with one KV head, so both ranks hold a
  replicated copy of it (self- and cross-attention), with images that demonstrably change the output.
- Loading reads only the rank's shard: every slice read from safetensors is counted, per rank.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from safetensors import safe_open

from models.generate import greedy_generate, prompt_logits
from models.mllama.model import MllamaForConditionalGeneration
from ops.parallel import ParallelContext
from pipeline.engine.distributed import Replica

PAD = 128004
IMAGE = 128256
TILE = 28


def images(n_tiles: list[int], ratio_ids: list[int], seed: int):
    from models.mllama.model import MllamaImages

    g = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(n_tiles), 4, 3, TILE, TILE)
    for i, n in enumerate(n_tiles):
        pixels[i, :n] = torch.randn(n, 3, TILE, TILE, generator=g)
    return MllamaImages(pixels, torch.tensor(ratio_ids), n_tiles)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(1000, 120000, (n,), generator=g).tolist()

    prompts = [[128000, *text(3), IMAGE, *text(6)], [128000, *text(9)], [128000, *text(2), IMAGE, *text(11)],
               [128000, *text(1), IMAGE, IMAGE, *text(4)]]
    media = [images([4], [6], seed + 1), None, images([2], [5], seed + 2), images([1, 3], [1, 3], seed + 3)]
    return prompts, media


@pytest.fixture(scope="module")
def kv1_dir(tmp_path_factory, mllama_tiny_hf_config):
    """Tiny Mllama with 4 query heads and 1 KV head: at tp=2 the KV head is replicated on both ranks."""
    from transformers import MllamaForConditionalGeneration as HF

    torch.manual_seed(0)
    model = HF(mllama_tiny_hf_config(num_key_value_heads=1)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero gates would make images irrelevant
        for name, p in model.named_parameters():
            if "gate" in name.rsplit(".", 1)[-1] and p.numel() == 1:
                p.copy_(torch.empty(1).uniform_(0.3, 1.2, generator=g))
    dest = tmp_path_factory.mktemp("tiny_mllama_kv1")
    model.save_pretrained(dest)
    return dest


def test_tp2_matches_tp1_logits_and_greedy_tokens(kv1_dir):
    ref = MllamaForConditionalGeneration.from_pretrained(kv1_dir, dtype=torch.float32)
    assert ref.kv_cache_spec()[1] == 1
    prompts, media = batch(seed=0)
    want_logits = prompt_logits(ref, prompts, media, pad_id=PAD)
    want_tokens = greedy_generate(ref, prompts, media, max_new_tokens=10, pad_id=PAD)
    # The images matter (so the replicated cross-attention K/V are exercised, not bypassed).
    other = prompt_logits(ref, prompts, [*media[:2], images([2], [5], 99), media[3]], pad_id=PAD)
    assert (other[2] - want_logits[2]).abs().max().item() > 1e-3

    with Replica.start(2, "pipeline.engine.distributed:ModelShard", (str(kv1_dir), "float32"),
                       backend="gloo", timeout_s=120) as replica:
        got_logits = replica.call("apply", "models.generate:prompt_logits", prompts, media, pad_id=PAD)
        got_tokens = replica.call("apply", "models.generate:greedy_generate", prompts, media,
                                  max_new_tokens=10, pad_id=PAD)
        spec = replica.call("kv_cache_spec")
    assert spec == ref.kv_cache_spec()  # one (replicated) KV head per rank
    assert got_logits.shape == want_logits.shape
    print(f"tp=2 vs tp=1 max abs logit diff {(got_logits - want_logits).abs().max().item():.2e}")
    assert (got_logits - want_logits).abs().max().item() <= 1e-5
    assert got_tokens == want_tokens


def test_each_rank_reads_only_its_shard(kv1_dir, shard_reads):
    with safe_open(kv1_dir / "model.safetensors", framework="pt") as f:
        sizes = {n: f.get_slice(n).get_shape() for n in f.keys()}  # noqa: SIM118
    nbytes = {n: 4 * int(torch.Size(s).numel()) for n, s in sizes.items()}

    one, _ = shard_reads(MllamaForConditionalGeneration, kv1_dir, ParallelContext())
    assert one == Counter(nbytes)  # tp=1 reads every tensor exactly once

    def sharded(n):  # what tp splits: text projections, MLPs, embedding, lm_head (1 KV head: k/v replicated)
        lm = n.startswith("language_model.")
        kv = n.endswith(("k_proj.weight", "v_proj.weight"))
        return lm and not kv and n.endswith(("_proj.weight", "embed_tokens.weight", "lm_head.weight"))

    split = {n for n in nbytes if sharded(n)}
    assert any("gate_proj" in n for n in split) and any("embed_tokens" in n for n in split)
    per_rank = []
    for rank in range(2):
        counts, full_reads = shard_reads(MllamaForConditionalGeneration, kv1_dir, ParallelContext(rank, 2))
        assert not full_reads & split  # no rank ever materialises a whole sharded tensor
        for n in nbytes:
            assert counts[n] == (nbytes[n] // 2 if n in split else nbytes[n]), n
        per_rank.append(sum(counts.values()))
    split_bytes = sum(nbytes[n] for n in split)
    assert all(r == sum(nbytes.values()) - split_bytes // 2 for r in per_rank)
    assert split_bytes > 0.9 * sum(nbytes.values())  # the embedding/lm_head dominate: ~half per rank


def test_tp_shards_hold_the_checkpoint_rows(kv1_dir):
    """Rank shards of a loaded checkpoint are exactly the expected rows/columns of the full tensors."""
    with safe_open(kv1_dir / "model.safetensors", framework="pt") as f:
        full = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
    for rank in range(2):
        model = MllamaForConditionalGeneration.from_pretrained(kv1_dir, dtype=torch.float32,
                                                               tp=ParallelContext(rank, 2))
        p = dict(model.named_parameters())
        layer = "language_model.model.layers.0."
        assert torch.equal(p[layer + "self_attn.q_proj.weight"], full[layer + "self_attn.q_proj.weight"].chunk(2)[rank])
        assert torch.equal(p[layer + "self_attn.k_proj.weight"], full[layer + "self_attn.k_proj.weight"])
        assert torch.equal(p[layer + "self_attn.o_proj.weight"],
                           full[layer + "self_attn.o_proj.weight"].chunk(2, dim=1)[rank])
        down = layer + "mlp.down_proj.weight"
        assert torch.equal(p[down], full[down].chunk(2, dim=1)[rank])
        emb = "language_model.model.embed_tokens.weight"
        assert torch.equal(p[emb], full[emb].chunk(2)[rank])
        assert torch.equal(p["vision_model.patch_embedding.weight"], full["vision_model.patch_embedding.weight"])


# --- real shapes: scripts/tp_plan.py on the 90B config (meta device) --------------------------------------
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_90b_shards_have_the_expected_shapes(shared_checkpoints, tp, tp_plan):
    ckpt = shared_checkpoints / "Llama-3.2-90B-Vision-Instruct"
    full = tp_plan.rank_shapes(ckpt, 1, 0)
    ranks = [tp_plan.rank_shapes(ckpt, tp, r) for r in (0, tp - 1)]
    lm = "language_model.model."
    want = {
        lm + "layers.0.self_attn.q_proj.weight": (8192 // tp, 8192),
        lm + "layers.0.self_attn.k_proj.weight": (1024 // tp, 8192),  # 8 KV heads x 128: one per rank at tp=8
        lm + "layers.0.self_attn.o_proj.weight": (8192, 8192 // tp),
        lm + "layers.0.mlp.gate_proj.weight": (28672 // tp, 8192),
        lm + "layers.0.mlp.down_proj.weight": (8192, 28672 // tp),
        lm + "layers.3.cross_attn.v_proj.weight": (1024 // tp, 8192),
        lm + "layers.3.cross_attn.k_norm.weight": (128,),
        lm + "embed_tokens.weight": (128264 // tp, 8192),  # 128,256 + 8 rows split evenly at 2/4/8
        "language_model.lm_head.weight": (128256 // tp, 8192),
        "multi_modal_projector.weight": (8192, 7680),
        "vision_model.transformer.layers.0.self_attn.q_proj.weight": (1280, 1280),
    }
    for shapes in ranks:
        assert shapes.keys() == full.keys()
        assert {k: shapes[k] for k in want} == want
    # every rank's shard is the module tree's own; the name rules used for models without tp agree
    model = tp_plan.meta_model(ckpt)
    for r, shapes in zip((0, tp - 1), ranks, strict=True):
        ctx = ParallelContext(r, tp)
        assert {n: tp_plan.rule_shape(n, tuple(p.shape), model.cfg.text, ctx)
                for n, p in model.named_parameters()} == shapes


def test_90b_tp2_fits_an_h200(shared_checkpoints, capsys, tp_plan):
    ckpt = shared_checkpoints / "Llama-3.2-90B-Vision-Instruct"
    p = tp_plan.plan(ckpt, 2, seqs=32, max_len=4096, max_images=1)
    assert 177e9 < p["weights_total"] < 177.3e9  # index.json total_size: 177,186,710,646 bytes
    assert 0.5 * p["weights_total"] < p["weights_per_rank"] < 0.51 * p["weights_total"]  # vision replicated
    assert p["fits"]["H200"]["fits"] and p["fits"]["H200"]["max_seqs"] >= 32
    assert not p["fits"]["H100"]["fits"]  # tp=2 is too small for 80 GB parts
    assert tp_plan.plan(ckpt, 4)["fits"]["H100"]["fits"]
    tp_plan.main(["--model", str(ckpt), "--tp", "2"])
    out = capsys.readouterr().out
    assert "H200 (140.4 GiB, 90% usable): FITS" in out and "H100 (79.6 GiB, 90% usable): DOES NOT FIT" in out
