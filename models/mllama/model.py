"""Llama-3.2-Vision (Mllama) as one module tree whose names are the checkpoint's tensor names.

`MllamaForConditionalGeneration`:
- `encode_images(pixel_values [N, T, 3, H, W], aspect_ratio_ids [N], aspect_ratio_mask [N, T])`
  -> projected vision states [N, T * P, hidden] (P tokens per tile, padding tiles included);
- `language_model.model(...)` the decoder (models/mllama/text.py), `language_model.lm_head`;
- `prepare` / `step` / `kv_cache_spec`: the hooks of models/generate.py's eager generate.

Media for a batch row is `MllamaImages` (its images' processor outputs) or None for a text-only prompt.

Tensor parallelism: pass `tp` (ops/parallel.ParallelContext) to shard the language model (see
models/mllama/text.py); the vision tower and the projector are replicated on every rank, and every rank
returns the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.generate import PaddedBatch
from models.loader import load_checkpoint
from models.mllama.config import MllamaConfig
from models.mllama.cross_mask import cross_attention_inputs, image_spans, last_token_view
from models.mllama.text import CrossAttentionInputs, MllamaForCausalLM
from models.mllama.vision import MllamaVisionModel
from ops.attention import SelfAttention
from ops.parallel import SINGLE, ParallelContext


@dataclass
class MllamaImages:
    """One prompt's images, already normalised: pixel_values [n, T, 3, H, W] (padding tiles zero)."""

    pixel_values: torch.Tensor
    aspect_ratio_ids: torch.Tensor  # [n]
    num_tiles: list[int]

    @property
    def aspect_ratio_mask(self) -> torch.Tensor:
        tiles = self.pixel_values.shape[1]
        return (torch.arange(tiles)[None, :] < torch.tensor(self.num_tiles)[:, None]).long()


class MllamaForConditionalGeneration(nn.Module):
    config_class = MllamaConfig

    def __init__(self, cfg: MllamaConfig, tp: ParallelContext = SINGLE):
        super().__init__()
        self.cfg, self.tp = cfg, tp
        self.vision_model = MllamaVisionModel(cfg.vision)
        self.multi_modal_projector = nn.Linear(cfg.vision.vision_output_dim, cfg.text.hidden_size)
        self.language_model = MllamaForCausalLM(cfg.text, tp)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                        device: torch.device | str = "cpu",
                        tp: ParallelContext = SINGLE) -> MllamaForConditionalGeneration:
        with torch.device("meta"):
            model = cls(MllamaConfig.from_dir(path), tp)
        return load_checkpoint(model, path, dtype=dtype, device=device).eval()

    def encode_images(self, pixel_values: torch.Tensor, aspect_ratio_ids: torch.Tensor,
                      aspect_ratio_mask: torch.Tensor) -> torch.Tensor:
        states = self.vision_model(pixel_values, aspect_ratio_ids, aspect_ratio_mask)  # [N, T, P, 7680]
        n, tiles, tokens, _ = states.shape
        return self.multi_modal_projector(states).reshape(n, tiles * tokens, -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    # --- hooks for models/generate.py -------------------------------------------------------------
    def kv_cache_spec(self) -> tuple[int, int, int]:
        lm = self.language_model.model
        return lm.num_self_attention_layers, lm.kv_heads, self.cfg.text.head_dim

    def prepare(self, batch: PaddedBatch, media: list[MllamaImages | None] | None) -> CrossAttentionInputs | None:
        media = media or [None] * len(batch.left_pad)
        if all(m is None for m in media):
            return None
        dtype = self.multi_modal_projector.weight.dtype
        device = self.multi_modal_projector.weight.device
        tiles, tokens = self.cfg.vision.max_num_tiles, self.cfg.vision.num_patches
        max_images = max(len(m.num_tiles) for m in media if m is not None)
        images = [m for m in media if m is not None]
        states = self.encode_images(
            torch.cat([m.pixel_values for m in images]).to(device),
            torch.cat([m.aspect_ratio_ids for m in images]).to(device),
            torch.cat([m.aspect_ratio_mask for m in images]).to(device),
        )  # [N_images, T*P, hidden]
        per_row = torch.zeros(len(media), max_images * tiles * tokens, states.shape[-1], dtype=dtype, device=device)
        i = 0
        for b, m in enumerate(media):
            if m is not None:
                n = len(m.num_tiles)
                per_row[b, : n * tiles * tokens] = states[i: i + n].flatten(0, 1)
                i += n
        ids = batch.input_ids.tolist()
        spans = []
        for b, m in enumerate(media):
            row_ids = ids[b][batch.left_pad[b]:]
            row_spans = image_spans(row_ids, self.cfg.image_token_id)
            if len(row_spans) != (len(m.num_tiles) if m is not None else 0):
                raise ValueError(f"row {b}: {len(row_spans)} image tokens but "
                                 f"{len(m.num_tiles) if m is not None else 0} images")
            spans.append(row_spans)
        return cross_attention_inputs(
            spans, [m.num_tiles if m is not None else [] for m in media], batch.left_pad,
            batch.input_ids.shape[1], max_images, tiles, tokens,
            self.language_model.model.cross_attention_kv(per_row), dtype, device,
        )

    def step(self, ids: torch.Tensor, positions: torch.Tensor, attn: SelfAttention,
             ctx: CrossAttentionInputs | None, prefill: bool) -> torch.Tensor:
        cross = ctx if ctx is None or prefill else last_token_view(ctx)
        return self.logits(self.language_model.model(ids, positions, attn, cross))
