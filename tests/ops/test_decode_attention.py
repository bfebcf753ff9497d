"""ops/decode_attention.py's Triton kernels against SDPA, run on the CPU by Triton's interpreter.

The kernels compile only on a GPU; `TRITON_INTERPRET=1` runs the same kernel code with numpy, so the
indexing, the per-row lengths, the chunk merge and the masked rows are checked here (fp32, small shapes);
tests/gpu/test_decode_attention.py checks bf16 speed-relevant shapes and CUDA-graph replay on a GPU. The
interpreter is chosen when Triton is imported, hence the subprocess.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

CHECK = r"""
import torch
import torch.nn.functional as F
from ops import decode_attention as da
from ops.attention import attention
from ops.slot_attention import SlotDecode, SlotKVCache

torch.manual_seed(0)
assert da.available(torch.zeros(1, 4, 1, 32))

def ref(q, k, v, mask=None):
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)

worst = {}
# grouped heads 1, 4 and 7 (OneVision-7B's 28/4), keys over several chunks, lengths ending mid-chunk
for hq, hkv in ((2, 2), (8, 2), (7, 1)):
    q = torch.randn(3, hq, 1, 32)
    k, v = torch.randn(4, hkv, 600, 32), torch.randn(4, hkv, 600, 32)  # one spare row: k/v may be longer than q
    lens = torch.tensor([1, 257, 600])
    out = da.decode_attention(q, k, v, lengths=lens)
    for i, n in enumerate(lens.tolist()):
        expect = ref(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n])[0]
        worst[f"len {hq}/{hkv} row {i}"] = (out[i] - expect).abs().max()
    # additive mask: a partly hidden row, a row with every key at finfo.min (uniform average), a free row
    m = torch.zeros(3, 1, 1, 600)
    m[0, ..., 300:] = torch.finfo(torch.float32).min
    m[1] = torch.finfo(torch.float32).min
    worst[f"mask {hq}/{hkv}"] = (da.decode_attention(q, k, v, scale=0.3, mask=m)
                                 - F.scaled_dot_product_attention(q, k[:3].repeat_interleave(hq // hkv, 1),
                                     v[:3].repeat_interleave(hq // hkv, 1), attn_mask=m, scale=0.3)).abs().max()
    # one mask row for every batch row goes through ops.attention's dispatch
    worst[f"broadcast {hq}/{hkv}"] = (attention(q, k[:3], v[:3], m[:1]) - ref(q, k[:3], v[:3], m[:1])).abs().max()

# keys past MAX_CHUNKS x CHUNK: longer chunks, the merge still sees at most MAX_CHUNKS of them
t = da.MAX_CHUNKS * da.CHUNK + 300
q, k, v = torch.randn(1, 2, 1, 16), torch.randn(1, 1, t, 16), torch.randn(1, 1, t, 16)
worst["long"] = (da.decode_attention(q, k, v, lengths=torch.tensor([t - 7])) - ref(q, k[:, :, :t - 7],
                 v[:, :, :t - 7])).abs().max()

# the slot cache's decode step: the kernel with lengths == the SDPA path with its boolean mask
cache = SlotKVCache(1, 4, 2, 300, 32, torch.float32, "cpu")
cache.k[0].normal_(); cache.v[0].normal_()
positions = torch.tensor([0, 5, 299])
# this step's k/v as the model hands them over: [B, Hkv, 1, D] views of a [B, 1, Hkv, D] projection
q, k, v = torch.randn(3, 8, 1, 32), torch.randn(3, 1, 2, 32).transpose(1, 2), torch.randn(3, 1, 2, 32).transpose(1, 2)
want_k, want_v = cache.k[0].clone(), cache.v[0].clone()
want_k[torch.arange(3), :, positions] = k[:, :, 0]
want_v[torch.arange(3), :, positions] = v[:, :, 0]
step = SlotDecode(cache, positions, 0.25)
out = step(0, q, k, v)
# the kernel wrote the new k/v into the cache (and nothing else), and attended to them
worst["slot write k"] = (cache.k[0] - want_k).abs().max()
worst["slot write v"] = (cache.v[0] - want_v).abs().max()
worst["slot decode"] = (out - attention(q, want_k[:3], want_v[:3], step.mask, 0.25)).abs().max()
bad = {name: float(err) for name, err in worst.items() if not err < 2e-6}
assert not bad, bad
print("ok", len(worst))
"""


ENGINE = r"""
import os, random, sys
import torch
from models.mllama.model import MllamaForConditionalGeneration
from tests.pipeline.engine.test_engine_mllama import make_engine, random_request, run_all

from ops import decode_attention

model = MllamaForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32)
assert decode_attention.available(torch.zeros(1, 4, 1, 16))  # the tiny model's head dim: the kernels run
rng = random.Random(5)
requests = [random_request(i, rng, 5, ignore_eos=True) for i in range(8)]  # images of 1-4 tiles, text-only rows
got = run_all(make_engine(model, slots=4), requests)
os.environ["VLMCAP_DECODE_ATTENTION"] = "sdpa"
want = run_all(make_engine(model, slots=4), requests)
assert got == want, (got, want)
print("ok", len(got))
"""


def test_engine_tokens_equal_with_the_kernels(tiny_mllama_dir):
    """The tiny Mllama engine (head dim 16; slot self-attention with lengths, cross-attention with masks,
    text-only rows among image rows) decodes the same greedy tokens through the kernels as through SDPA."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    env.pop("VLMCAP_DECODE_ATTENTION", None)
    run = subprocess.run([sys.executable, "-c", ENGINE, str(tiny_mllama_dir)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ok 8")


def test_kernels_match_sdpa_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    env.pop("VLMCAP_DECODE_ATTENTION", None)
    run = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok 19"


def test_not_used_on_cpu_without_the_interpreter(monkeypatch):
    import torch

    from ops import decode_attention

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not decode_attention.available(torch.zeros(1, 4, 1, 32))


def test_a_device_where_triton_fails_keeps_sdpa(monkeypatch, caplog):
    import torch

    from ops import decode_attention

    def broken(device, dtype, head_dim):
        raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(decode_attention, "_probe", broken)
    decode_attention._works_on.cache_clear()
    try:
        assert not decode_attention._works_on("cuda:0", torch.bfloat16, 128)
        assert "using SDPA" in caplog.text and "C compiler" in caplog.text
    finally:
        decode_attention._works_on.cache_clear()
