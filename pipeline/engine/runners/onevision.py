"""LLaVA-OneVision on the engine: slot KV cache, batched vision at admission, graphed decode.

OneVision has no cross-attention: media become ordinary input embeddings at the `<image>`/`<video>`
positions, so a slot holds only self-attention K/V (`SlotKVCache`). The cost sits in prefill (thousands
of image tokens per request), which is why admission batches the SigLIP tower across every crop and frame
of the admitted requests and the scheduler bounds a prefill batch by `max_prefill_tokens`.

Media: `models.onevision.model.OneVisionMedia` per request (None = text-only), uint8 crops normalised on
the device with the checkpoint's mean/std (`preprocessor_config.json`). The prompt's media token counts
are checked on the CPU (`check`) before the request is admitted, so a mismatch is an error completion,
never a failed batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.onevision.model import LlavaOnevisionForConditionalGeneration, OneVisionMedia
from ops.slot_attention import SlotDecode, SlotKVCache, SlotPrefill


class OneVisionRunner:
    def __init__(self, model: LlavaOnevisionForConditionalGeneration, num_slots: int, max_len: int, pad_id: int,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...], vision_chunk: int | None = None):
        self.model, self.num_slots, self.max_len, self.pad_id = model, num_slots, max_len, pad_id
        self.pixel_mean, self.pixel_std, self.vision_chunk = pixel_mean, pixel_std, vision_chunk
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        text = model.cfg.text
        self.scale = text.head_dim**-0.5
        kv_heads = model.language_model.model.kv_heads  # this rank's under tensor parallelism
        self.cache = SlotKVCache(text.num_hidden_layers, num_slots, kv_heads, max_len,
                                 text.head_dim, self.dtype, self.device)
        self.tokens = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(num_slots, dtype=torch.long, device=self.device)

    @classmethod
    def create(cls, model: LlavaOnevisionForConditionalGeneration, num_slots: int, max_len: int, pad_id: int,
               ckpt_dir: str | Path, vision_chunk: int | None = 64) -> OneVisionRunner:
        pre = json.loads((Path(ckpt_dir) / "preprocessor_config.json").read_text())
        return cls(model, num_slots, max_len, pad_id, tuple(pre["image_mean"]), tuple(pre["image_std"]),
                   vision_chunk)

    @staticmethod
    def slot_bytes(model: LlavaOnevisionForConditionalGeneration, max_len: int, dtype: torch.dtype) -> int:
        t = model.cfg.text
        kv_heads = model.language_model.model.kv_heads
        return SlotKVCache.bytes_per_slot(t.num_hidden_layers, kv_heads, max_len, t.head_dim, dtype)

    def check(self, prompt_ids: list[int], media: OneVisionMedia | None) -> str | None:
        """Why this request can never run here (None if it can)."""
        cfg = self.model.cfg
        have = (prompt_ids.count(cfg.image_token_id), prompt_ids.count(cfg.video_token_id))
        try:
            want = media.token_counts(cfg) if media is not None else (0, 0)
        except Exception as exc:  # noqa: BLE001 - malformed media is this request's problem only
            return f"bad media: {exc}"
        if have != want:
            return (f"prompt has {have[0]} <image> / {have[1]} <video> tokens but its media need "
                    f"{want[0]} / {want[1]}")
        return None

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], media: list[OneVisionMedia | None], slots: list[int]) -> torch.Tensor:
        """Run new prompts into `slots`; returns the logits of each prompt's last token [n, V]."""
        n = len(prompts)
        seq = max(len(p) for p in prompts)
        ids = torch.tensor([p + [self.pad_id] * (seq - len(p)) for p in prompts], device=self.device)  # [n, S]
        positions = torch.arange(seq, device=self.device).expand(n, seq)
        features = self.model.encode_media(media, self.vision_chunk, self.pixel_mean, self.pixel_std)
        embeds = self.model.embed(ids, features)  # [n, S, hidden]
        attn = SlotPrefill(self.cache, torch.tensor(slots, device=self.device), self.scale)
        hidden = self.model.language_model.model(None, positions, attn, inputs_embeds=embeds)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        return self.model.logits(hidden[torch.arange(n, device=self.device), last])

    @torch.inference_mode()
    def decode(self, batch: int) -> torch.Tensor:
        """One token for slots [0, batch) from the static `tokens`/`positions` buffers -> logits [batch, V]."""
        positions = self.positions[:batch]
        hidden = self.model.language_model.model(self.tokens[:batch, None], positions[:, None],
                                                 SlotDecode(self.cache, positions, self.scale))
        return self.model.logits(hidden[:, 0])
