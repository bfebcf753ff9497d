"""LLaVA-OneVision under tensor parallelism on the CPU.

- tp=2 in two gloo processes (the test process is rank 0) gives the logits of tp=1 (fp32, max abs diff
  <= 1e-5) and the same greedy tokens on prompts with images (that demonstrably change the output), for
  the tiny checkpoint (4 query / 2 KV heads: one KV head per rank) and a variant with one KV head
  (replicated on both ranks). The tiny checkpoint ties lm_head to the embedding, so tying is covered too.
- Rank shards of a loaded checkpoint are exactly the expected rows/columns (biases included), the vision
  tower is replicated, and each rank's cache spec has its own KV head count.
"""

from __future__ import annotations

import json
import shutil

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
