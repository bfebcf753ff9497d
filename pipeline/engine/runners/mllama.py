"""Mllama on the engine: slot KV cache, per-slot cross-attention K/V, batched admission, graphed decode.

Per slot we keep the self-attention K/V (`SlotKVCache`) and, for each cross-attention layer, the image
K/V of the request [slots, Hkv, max_images * T * P, D], computed once at admission, plus the cross mask
row, row gate and has-image flag that the request's generated tokens use. Padding tiles stay in the
slot: the reference lets text rows before the first image attend over them (models/mllama/text.py), so
dropping them would change the prompt's results; at decode they are masked.

Media: `models.mllama.model.MllamaImages` per request (None = text-only). uint8 pixels are normalised on
the device with the checkpoint's mean/std.
"""

from __future__ import annotations

import torch

from models.mllama.cross_mask import cross_attention_inputs, image_spans
from models.mllama.model import MllamaForConditionalGeneration, MllamaImages
from models.mllama.text import CrossAttentionInputs
from ops.slot_attention import SlotDecode, SlotKVCache, SlotPrefill


class MllamaRunner:
    def __init__(self, model: MllamaForConditionalGeneration, num_slots: int, max_len: int, max_images: int,
                 pad_id: int, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]):
        self.model, self.num_slots, self.max_len, self.max_images = model, num_slots, max_len, max_images
        self.pad_id = pad_id
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        text, vision = model.cfg.text, model.cfg.vision
        self.scale = text.head_dim**-0.5
        self.tiles, self.tokens_per_tile = vision.max_num_tiles, vision.num_patches
        kv_heads = model.language_model.model.kv_heads  # this rank's under tensor parallelism
        self.cache = SlotKVCache(model.language_model.model.num_self_attention_layers, num_slots,
                                 kv_heads, max_len, text.head_dim, self.dtype, self.device)
        vis_len = max_images * self.tiles * self.tokens_per_tile
        shape = (num_slots, kv_heads, vis_len, text.head_dim)
        z = dict(dtype=self.dtype, device=self.device)
        self.cross_kv = {i: (torch.zeros(shape, **z), torch.zeros(shape, **z)) for i in text.cross_attention_layers}
        self.cross_mask = torch.zeros(num_slots, 1, 1, vis_len, **z)
        self.row_gate = torch.zeros(num_slots, 1, 1, **z)
        self.has_image = torch.zeros(num_slots, 1, 1, **z)
        self.tokens = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.mean = torch.tensor(pixel_mean, device=self.device).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(pixel_std, device=self.device).view(1, 1, 3, 1, 1)

    @staticmethod
    def slot_bytes(model: MllamaForConditionalGeneration, max_len: int, max_images: int, dtype: torch.dtype) -> int:
        text, vision = model.cfg.text, model.cfg.vision
        kv_heads = model.language_model.model.kv_heads
        self_kv = SlotKVCache.bytes_per_slot(model.language_model.model.num_self_attention_layers,
                                             kv_heads, max_len, text.head_dim, dtype)
        cross = SlotKVCache.bytes_per_slot(len(text.cross_attention_layers), kv_heads,
                                           max_images * vision.max_num_tiles * vision.num_patches, text.head_dim, dtype)
        return self_kv + cross

    def check(self, prompt_ids: list[int], media: MllamaImages | None) -> str | None:
        """Why this request can never run here (None if it can)."""
        n_images = len(media.num_tiles) if media is not None else 0
        if n_images > self.max_images:
            return f"{n_images} images; this engine holds at most {self.max_images} per request"
        n_tokens = len(image_spans(prompt_ids, self.model.cfg.image_token_id))
        if n_tokens != n_images:
            return f"{n_tokens} <|image|> tokens in the prompt but {n_images} images"
        return None

    @staticmethod
    def media_images(media: MllamaImages) -> int:
        """How many images `encode(media)` runs through the tower (staging sizes its slices by them)."""
        return len(media.num_tiles)

    def _pixels(self, m: MllamaImages) -> torch.Tensor:
        px = m.pixel_values.to(self.device)
        if px.dtype == torch.uint8:  # rescale + normalise on the device; padding tiles stay exactly zero
            real = m.aspect_ratio_mask.to(self.device).bool()
            px = ((px.float() / 255.0 - self.mean) / self.std) * real[:, :, None, None, None]
        return px.to(self.dtype)

    @torch.inference_mode()
    def encode(self, media: MllamaImages) -> torch.Tensor:
        """One request's images through the vision tower and projector: [images, T*P, hidden]. The engine
        calls it ahead of `prefill` to stage a group's vision work over several steps
        (EngineConfig.stage_vision_images)."""
        return self._encode_batch([media])[0]

    def _encode_batch(self, media: list[MllamaImages | None]) -> list[torch.Tensor | None]:
        """Every request's vision states from one vision-tower call over all their images."""
        images = [m for m in media if m is not None]
        if not images:
            return [None] * len(media)
        states = self.model.encode_images(
            torch.cat([self._pixels(m) for m in images]),
            torch.cat([m.aspect_ratio_ids for m in images]).to(self.device),
            torch.cat([m.aspect_ratio_mask for m in images]),  # stays on the CPU: read there, no GPU sync
        )  # [images, T*P, hidden]
        out, i = [], 0
        for m in media:
            k = 0 if m is None else len(m.num_tiles)
            out.append(None if m is None else states[i: i + k])
            i += k
        return out

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], media: list[MllamaImages | None], slots: list[int],
                encoded: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Run new prompts into `slots`; returns the logits of each prompt's last token [n, V]. `encoded`:
        the requests' vision states from `encode` (None: encoded here, all images in one batch)."""
        n = len(prompts)
        lm = self.model.language_model.model
        vis_len = self.cross_mask.shape[-1]
        slot_ids = torch.tensor(slots, device=self.device)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        seq = max(len(p) for p in prompts)
        ids = torch.tensor([p + [self.pad_id] * (seq - len(p)) for p in prompts], device=self.device)
        positions = torch.arange(seq, device=self.device).expand(n, seq)
        rows = torch.arange(n, device=self.device)

        cross = None
        if any(m is not None for m in media):
            states = encoded if encoded is not None else self._encode_batch(media)
            hidden_size = next(s for s in states if s is not None).shape[-1]
            per_row = torch.zeros(n, vis_len, hidden_size, dtype=self.dtype, device=self.device)
            for b, st in enumerate(states):
                if st is not None:  # [images, T*P, hidden] -> the row's first images * T * P positions
                    per_row[b, : st.shape[0] * st.shape[1]] = st.flatten(0, 1)
            cross = cross_attention_inputs(
                [image_spans(p, self.model.cfg.image_token_id) for p in prompts],
                [m.num_tiles if m is not None else [] for m in media], [0] * n, seq, self.max_images,
                self.tiles, self.tokens_per_tile, lm.cross_attention_kv(per_row), self.dtype, self.device)
            for layer, (k, v) in cross.kv.items():
                self.cross_kv[layer][0][slot_ids] = k
                self.cross_kv[layer][1][slot_ids] = v
            self.cross_mask[slot_ids] = cross.mask[rows, :, lens - 1][:, :, None]
            self.row_gate[slot_ids] = cross.row_gate[rows, lens - 1][:, :, None]
            self.has_image[slot_ids] = cross.has_image
        else:
            self.has_image[slot_ids] = 0
            self.row_gate[slot_ids] = 0
        hidden = lm(ids, positions, SlotPrefill(self.cache, slot_ids, self.scale), cross)
        return self.model.logits(hidden[rows, lens - 1])

    @torch.inference_mode()
    def decode(self, batch: int) -> torch.Tensor:
        """One token for slots [0, batch) from the static `tokens`/`positions` buffers -> logits [batch, V]."""
        lm = self.model.language_model.model
        positions = self.positions[:batch]
        cross = CrossAttentionInputs(
            kv={i: (k[:batch], v[:batch]) for i, (k, v) in self.cross_kv.items()},
            mask=self.cross_mask[:batch], row_gate=self.row_gate[:batch], has_image=self.has_image[:batch])
        hidden = lm(self.tokens[:batch, None], positions[:, None], SlotDecode(self.cache, positions, self.scale), cross)
        return self.model.logits(hidden[:, 0])
