"""The HF transformers peer for jobs/bench.py (transformers is a test-only oracle, so it lives here).

`run_hf(ckpt_dir, images, batch, new_tokens, prompt)` builds transformers' model for the checkpoint's
config with random bf16 weights on the GPU, processes the same PIL images with transformers' own
processor, and runs `generate()` (greedy, exactly `new_tokens` tokens: EOS ignored via min_new_tokens)
in batches of `batch`. Processor outputs are computed (and moved to the GPU) before the clock starts, as
our engine's inputs are in jobs/bench.py, so both sides time the model only. Returns images/s, output
tokens/s, batch-1 decode step (ms) and peak memory.
"""

from __future__ import annotations

import time

import torch


def _sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def run_hf(ckpt_dir, images: list, batch: int, new_tokens: int, prompt: str) -> dict:
    import transformers

    config = transformers.AutoConfig.from_pretrained(ckpt_dir)
    cls = getattr(transformers, config.architectures[0])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = cls._from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name.rsplit(".", 1)[-1] and p.numel() == 1:
                p.fill_(0.5)
    processor = transformers.AutoProcessor.from_pretrained(ckpt_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def inputs(imgs):
        batch_inputs = processor(images=[[im] for im in imgs] if "Mllama" in cls.__name__ else imgs,
                                 text=[text] * len(imgs), return_tensors="pt", padding=True)
        return {k: (v.to("cuda", torch.bfloat16) if v.is_floating_point() else v.to("cuda"))
                for k, v in batch_inputs.items()}

    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model.generate(**inputs(images[:1]), **gen)  # warm-up
        batches = [inputs(images[i: i + batch]) for i in range(0, len(images), batch)]
        t0 = _sync_time()
        for b in batches:
            model.generate(**b, **gen)
        secs = _sync_time() - t0
        one = inputs(images[:1])
        t1 = _sync_time()
        model.generate(**one, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        t2 = _sync_time()
        model.generate(**one, max_new_tokens=33, min_new_tokens=33, do_sample=False)
        t3 = _sync_time()
    step_ms = ((t3 - t2) - (t2 - t1)) / 32 * 1e3
    return {"images_per_s": len(images) / secs, "tokens_per_s": len(images) * new_tokens / secs,
            "decode_ms_b1": step_ms, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
