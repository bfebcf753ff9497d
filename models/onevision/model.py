"""LLaVA-OneVision as one module tree whose parameter names are the checkpoint's tensor names.

`LlavaOnevisionForConditionalGeneration`:
- `vision_tower` (SigLIP, models/onevision/siglip.py), `multi_modal_projector` (linear_1, GELU, linear_2),
  `image_newline`, `language_model` (Qwen2 decoder + lm_head, models/onevision/qwen2.py);
- `encode_media(media)` -> per prompt the features of its `<image>` tokens followed by those of its
  `<video>` tokens (SigLIP runs once over every crop and frame of every prompt);
- `embed(input_ids, features)` -> inputs_embeds with the features scattered at the media tokens: the
  row's `<image>` positions (in order) take the first rows of its features, its `<video>` positions the
  rest, as the reference fills them; a count mismatch raises ValueError;
- `language_model.model(input_ids | None, positions, attn, inputs_embeds=None)` the decoder, `logits(h)`;
- `kv_cache_spec` / `prepare` / `step`: the hooks of models/generate.py's eager generate.

Checkpoint layouts: the hub's names (`vision_tower.vision_model.*`, `language_model.model.*`,
`language_model.lm_head.weight`) and the names transformers 5 writes with `save_pretrained` (identical except
`vision_tower.*` without the `vision_model.` level) are both accepted: `from_pretrained` looks at the
tensor names and builds the matching SigLIP tree. With tied embeddings (0.5B) `language_model.lm_head.weight`
is not in the checkpoint and shares `embed_tokens`' storage.

Tensor parallelism: pass `tp` (ops/parallel.ParallelContext) to shard the language model (see
models/onevision/qwen2.py); SigLIP, the projector and `image_newline` are replicated on every rank, so
every rank computes the same media features, and every rank returns the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.generate import PaddedBatch
from models.loader import checkpoint_files, load_checkpoint
from models.onevision import anyres
from models.onevision.config import OneVisionConfig
from models.onevision.pack import pack_image, pack_video
from models.onevision.qwen2 import Qwen2ForCausalLM
from models.onevision.siglip import SiglipVisionModel
from ops.activations import activation
from ops.attention import SelfAttention
from ops.parallel import SINGLE, ParallelContext


@dataclass
class OneVisionMedia:
    """One prompt's media: normalized float pixels as the reference processors emit them (or uint8, see
    `encode_media`).

    images[i]: [P_i, 3, S, S], the base image first then the anyres grid crops row-major (P_i = 1 for each
    image of a prompt with several images); image_sizes[i]: original (height, width);
    videos[j]: [F_j, 3, S, S] sampled frames.
    """

    images: list[torch.Tensor] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    videos: list[torch.Tensor] = field(default_factory=list)

    def token_counts(self, cfg: OneVisionConfig) -> tuple[int, int]:
        """(`<image>` tokens, `<video>` tokens) this media needs in the prompt (CPU only)."""
        v = cfg.vision
        multi = len(self.images) > 1
        n_img = sum(anyres.num_image_tokens(h, w, cfg.image_grid_pinpoints, v.image_size, v.patch_size,
                                            cfg.max_num_patches, multi_image=multi) for h, w in self.image_sizes)
        n_vid = sum(anyres.num_video_tokens(x.shape[0], v.image_size, v.patch_size) for x in self.videos)
        return n_img, n_vid


class LlavaOnevisionMultiModalProjector(nn.Module):
    def __init__(self, cfg: OneVisionConfig):
        super().__init__()
        vis_dim = cfg.vision.hidden_size * len(cfg.feature_layers)
        hidden = cfg.text.hidden_size
        self.linear_1 = nn.Linear(vis_dim, hidden, bias=cfg.multimodal_projector_bias)
        self.act = activation(cfg.projector_hidden_act)
        self.linear_2 = nn.Linear(hidden, hidden, bias=cfg.multimodal_projector_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaOnevisionForConditionalGeneration(nn.Module):
    config_class = OneVisionConfig

    def __init__(self, cfg: OneVisionConfig, tp: ParallelContext = SINGLE, *, flat_vision_names: bool = False):
        super().__init__()
        self.cfg, self.tp = cfg, tp
        self.vision_tower = SiglipVisionModel(cfg.vision, cfg.feature_layers, flat=flat_vision_names)
        self.multi_modal_projector = LlavaOnevisionMultiModalProjector(cfg)
        self.image_newline = nn.Parameter(torch.zeros(cfg.text.hidden_size))
        self.language_model = Qwen2ForCausalLM(cfg.text, tp)
        self.tied_weights = ({"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}
                             if cfg.text.tie_word_embeddings else {})

    @staticmethod
    def has_flat_vision_names(names) -> bool:
        """True for checkpoints written by transformers 5 (`vision_tower.embeddings...`)."""
        return any(n.startswith("vision_tower.embeddings.") for n in names)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                        device: torch.device | str = "cpu",
                        tp: ParallelContext = SINGLE) -> LlavaOnevisionForConditionalGeneration:
        flat = cls.has_flat_vision_names(checkpoint_files(path))
        with torch.device("meta"):
            model = cls(OneVisionConfig.from_dir(path), tp, flat_vision_names=flat)
        return load_checkpoint(model, path, dtype=dtype, device=device).eval()

    # --- vision -----------------------------------------------------------------------------------
    def encode_crops(self, pixel_values: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """[N, 3, S, S] -> projected features [N, side*side, hidden], optionally `chunk` crops per call."""
        p = self.multi_modal_projector.linear_1.weight
        pixel_values = pixel_values.to(device=p.device, dtype=p.dtype)
        parts = [pixel_values] if not chunk else pixel_values.split(chunk)
        return torch.cat([self.multi_modal_projector(self.vision_tower(x)) for x in parts])

    def _check_media(self, m: OneVisionMedia) -> None:
        s = self.cfg.vision.image_size
        if len(m.images) != len(m.image_sizes):
            raise ValueError(f"{len(m.images)} images but {len(m.image_sizes)} image sizes")
        for x in [*m.images, *m.videos]:
            if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s) or x.shape[0] == 0:
                raise ValueError(f"media tensors must be [N>0, 3, {s}, {s}], got {list(x.shape)}")
            if not (x.is_floating_point() or x.dtype == torch.uint8):
                raise ValueError(f"media tensors must be uint8 or normalized floats, got {x.dtype}")

    def _normalize(self, x: torch.Tensor, mean, std) -> torch.Tensor:
        """uint8 -> normalized float on the model's device, as the reference's fused rescale+normalize:
        (x - 255 * mean) / (255 * std) in fp32."""
        p = self.multi_modal_projector.linear_1.weight
        x = x.to(p.device, non_blocking=True)
        if x.dtype != torch.uint8:
            return x.to(p.dtype)
        if mean is None or std is None:
            raise ValueError("uint8 media need pixel_mean and pixel_std")
        m = torch.tensor(mean, dtype=torch.float32, device=p.device).view(1, 3, 1, 1) * 255.0
        s = torch.tensor(std, dtype=torch.float32, device=p.device).view(1, 3, 1, 1) * 255.0
        return ((x.float() - m) / s).to(p.dtype)

    @torch.no_grad()
    def encode_media(self, media: list[OneVisionMedia | None], chunk: int | None = None,
                     pixel_mean: tuple[float, ...] | None = None,
                     pixel_std: tuple[float, ...] | None = None) -> list[torch.Tensor | None]:
        """Per prompt: [n_image_tokens + n_video_tokens, hidden] (image features first), or None.

        Pixels are normalized floats, or uint8 (then normalized on the device with `pixel_mean`/`pixel_std`,
        the checkpoint's preprocessor values). `chunk` caps the crops per SigLIP call.
        """
        return self.media_features(media, chunk, pixel_mean, pixel_std)

    def media_features(self, media: list[OneVisionMedia | None], chunk: int | None = None,
                       pixel_mean: tuple[float, ...] | None = None,
                       pixel_std: tuple[float, ...] | None = None) -> list[torch.Tensor | None]:
        """`encode_media` with autograd (scripts/train_demo_model.py trains through it)."""
        crops = []
        for m in media:
            if m is not None:
                self._check_media(m)
                crops += [*m.images, *m.videos]
        if not crops:
            return [None] * len(media)
        pixels = torch.cat([self._normalize(x, pixel_mean, pixel_std) for x in crops])
        return self.pack_media(media, self.encode_crops(pixels, chunk).split([x.shape[0] for x in crops]))

    def pack_media(self, media: list[OneVisionMedia | None], crop_features) -> list[torch.Tensor | None]:
        """Per-request features (None without media) from the crops' features, in `media` order: per
        request its images, then its videos (what `media_features` encodes; the demo trainer encodes one
        concatenated pixel tensor and packs with this)."""
        v, it = self.cfg.vision, iter(crop_features)
        out: list[torch.Tensor | None] = []
        for m in media:
            if m is None or not (m.images or m.videos):
                out.append(None)
                continue
            multi = len(m.images) > 1
            rows = [pack_image(next(it), tuple(size), self.image_newline, pinpoints=self.cfg.image_grid_pinpoints,
                               image_size=v.image_size, side=v.side, max_num_patches=self.cfg.max_num_patches,
                               multi_image=multi) for size in m.image_sizes]
            rows += [pack_video(next(it), self.image_newline, image_size=v.image_size, patch_size=v.patch_size)
                     for _ in m.videos]
            out.append(torch.cat(rows))
        return out

    def embed(self, input_ids: torch.Tensor, features: list[torch.Tensor | None]) -> torch.Tensor:
        """Token embeddings [B, S, hidden] with media features at `<image>`/`<video>` positions."""
        x = self.language_model.model.embed_tokens(input_ids)
        if len(features) != input_ids.shape[0]:
            raise ValueError(f"{len(features)} feature entries for {input_ids.shape[0]} rows")
        for b, f in enumerate(features):
            row = input_ids[b]
            pos = torch.cat(((row == self.cfg.image_token_id).nonzero()[:, 0],
                             (row == self.cfg.video_token_id).nonzero()[:, 0]))
            n = 0 if f is None else f.shape[0]
            if pos.numel() != n:
                raise ValueError(f"row {b}: {pos.numel()} <image>/<video> tokens but {n} media features")
            if n:
                x[b, pos] = f.to(x.dtype)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    # --- hooks for models/generate.py -------------------------------------------------------------
    def kv_cache_spec(self) -> tuple[int, int, int]:
        t = self.cfg.text
        return t.num_hidden_layers, self.language_model.model.kv_heads, t.head_dim

    def prepare(self, batch: PaddedBatch, media: list[OneVisionMedia | None] | None) -> torch.Tensor:
        """inputs_embeds [B, S, hidden] of the left-padded prompts, media features in place."""
        media = media or [None] * len(batch.left_pad)
        ids = batch.input_ids
        for b, m in enumerate(media):
            want = m.token_counts(self.cfg) if m is not None else (0, 0)
            have = (int((ids[b] == self.cfg.image_token_id).sum()), int((ids[b] == self.cfg.video_token_id).sum()))
            if want != have:
                raise ValueError(f"row {b}: prompt has {have[0]} <image> / {have[1]} <video> tokens, "
                                 f"its media need {want[0]} / {want[1]}")
        return self.embed(ids, self.encode_media(media))

    def step(self, ids: torch.Tensor, positions: torch.Tensor, attn: SelfAttention,
             ctx: torch.Tensor | None, prefill: bool) -> torch.Tensor:
        if prefill and ctx is not None:
            return self.logits(self.language_model.model(None, positions, attn, inputs_embeds=ctx))
        return self.logits(self.language_model.model(ids, positions, attn))
