"""Mllama vision encoder: tiles of pixels -> per-tile features for the text model's cross-attention.

Input: pixel_values [N, T, 3, H, W] float (N images, T = max_num_tiles, padding tiles are zeros),
aspect_ratio_ids [N] (1-based, 0 = padding image), aspect_ratio_mask [N, T] (1 = real tile; on any device).
Output: [N, T, P, vision_output_dim] with P = (H/patch)^2 + 1 tokens per tile (class token first);
vision_output_dim = hidden * (1 + len(intermediate_layers_indices)) is the final global-encoder state
concatenated with the kept local-encoder states interleaved as (hidden, layer).

Exactness notes (matching the reference): every tile's token list is zero-padded to a multiple of 8; the
reference's attention mask only forbids pad->pad pairs (real tokens do attend to padded tokens and padded
tiles), and it is the same mask for the local and the gated global encoder.

Speed: the reference builds that mask densely, which halves SDPA speed (PERF_NOTES.md). The ViT has no
RoPE, so we split attention instead: real queries over every key, unmasked (the fast kernels), then the pad
queries over the real keys only. Which tokens are pads depends only on an image's
tile count, so images are grouped by tile count. A one-tile image is three quarters padding: computing only
its real queries in the first pass and gathering the real keys for the second cuts its attention ~4x
(measured on an H200: BENCHMARKS.md); with few pads (all tiles real) every query takes the first pass and
the 28 pad rows are overwritten by a small masked call over every key, which saves gathering K and V.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.mllama.config import MllamaVisionConfig
from ops.activations import activation
from ops.attention import attention
from ops.fusion import fuse_linears


class VisionAttention(nn.Module):
    def __init__(self, cfg: MllamaVisionConfig):
        super().__init__()
        self.heads = cfg.attention_heads
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.qkv = None  # fused [3d, d] weight once loaded (q/k/v weights become views of it)

    def fuse_weights(self) -> None:
        self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)[0]

    def forward(self, x: torch.Tensor, pads: PadLayout) -> torch.Tensor:
        b, s, d = x.shape
        if self.qkv is not None:
            qkv = F.linear(x, self.qkv).view(b, s, 3, self.heads, -1)  # one GEMM: [b, s, (q|k|v), heads, hd]
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [b, heads, s, hd]
        else:
            q, k, v = (p(x).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        if len(pads.groups) == 1:  # usual case: one tile count for the whole batch, no per-image copies
            out = attend(q, k, v, pads.groups[0])
        else:
            out = torch.empty_like(q)
            for g in pads.groups:
                out[g.images] = attend(q[g.images], k[g.images], v[g.images], g)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, d))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: PadGroup) -> torch.Tensor:
    """The reference's masked attention for images of one tile count: q/k/v [n, heads, tokens, head_dim]."""
    if g.pad_idx is None:
        return attention(q, k, v)
    if g.mostly_pads:
        out = torch.empty_like(q)
        out[:, :, g.real_idx] = attention(q[:, :, g.real_idx], k, v)  # real queries see every key
        out[:, :, g.pad_idx] = attention(q[:, :, g.pad_idx], k[:, :, g.real_idx], v[:, :, g.real_idx])
    else:
        out = attention(q, k, v)  # exact for the real queries; the few pad rows are overwritten below
        # masked over every key rather than over gathered real keys: gathering copied nearly all of K and V
        # (7% of the tower's GPU time for 4-tile images on an H200); a masked kernel on 28 queries costs little
        out[:, :, g.pad_idx] = attention(q[:, :, g.pad_idx], k, v, g.real_keys)
    return out


class VisionMLP(nn.Module):
    def __init__(self, cfg: MllamaVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    def __init__(self, cfg: MllamaVisionConfig, gated: bool):
        super().__init__()
        self.self_attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.gated = gated
        if gated:
            self.gate_attn = nn.Parameter(torch.full((1,), math.pi / 4))
            self.gate_ffn = nn.Parameter(torch.full((1,), math.pi / 4))

    def forward(self, x: torch.Tensor, pads: PadLayout) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), pads)
        x = x + (self.gate_attn.tanh() * h if self.gated else h)
        h = self.mlp(self.post_attention_layernorm(x))
        return x + (self.gate_ffn.tanh() * h if self.gated else h)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: MllamaVisionConfig, num_layers: int, gated: bool):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg, gated) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, pads: PadLayout, keep: tuple[int, ...] = ()):
        kept = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, pads)
            if i in keep:
                kept[i] = x
        return x, [kept[i] for i in keep]


class AspectRatioEmbedding(nn.Module):
    """A learned, tanh-gated offset per (aspect ratio, tile), added to every token of the tile."""

    def __init__(self, cfg: MllamaVisionConfig):
        super().__init__()
        self.tiles, self.hidden = cfg.max_num_tiles, cfg.hidden_size
        self.embedding = nn.Embedding(cfg.max_aspect_ratio_id + 1, cfg.max_num_tiles * cfg.hidden_size)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(aspect_ratio_ids).view(-1, self.tiles, 1, self.hidden)
        return x + emb * self.gate.tanh()


class GatedPositionalEmbedding(nn.Module):
    """Per-token position embedding blended by tanh(gate) with a per-(aspect ratio, tile, token) one."""

    def __init__(self, cfg: MllamaVisionConfig):
        super().__init__()
        self.tiles, self.tokens, self.hidden = cfg.max_num_tiles, cfg.num_patches, cfg.hidden_size
        self.gate = nn.Parameter(torch.zeros(1))
        self.embedding = nn.Parameter(torch.zeros(cfg.num_patches, cfg.hidden_size))
        self.tile_embedding = nn.Embedding(
            cfg.max_aspect_ratio_id + 1, cfg.max_num_tiles * cfg.num_patches * cfg.hidden_size)

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        gate = self.gate.tanh()
        x = x + (1 - gate) * self.embedding
        tile = self.tile_embedding(aspect_ratio_ids).view(-1, self.tiles, self.tokens, self.hidden)
        return x + gate * tile


class PadGroup(NamedTuple):
    images: torch.Tensor  # indices into the batch of the images with this tile count
    real_idx: torch.Tensor  # token indices of real tokens (real tiles, not the multiple-of-8 padding)
    pad_idx: torch.Tensor | None  # the others (None: no pads)
    mostly_pads: bool  # compute only the real queries in the first pass (else all, pad rows overwritten)
    real_keys: torch.Tensor  # [1, 1, 1, tokens] bool, True at real tokens: the pad rows' key mask


class PadLayout:
    """Images of a batch grouped by tile count, with where their real and pad tokens are. Built on the CPU and
    moved to `device`: from a CPU `aspect_ratio_mask` (the engine's runner passes one) it never waits for the
    GPU, where reading counts and `nonzero` of device tensors would sync the host with every vision call."""

    def __init__(self, aspect_ratio_mask: torch.Tensor, real_tokens: int, padded_tokens: int,
                 device: torch.device | None = None):
        tiles = aspect_ratio_mask.shape[1]
        device = device or aspect_ratio_mask.device
        counts = aspect_ratio_mask.cpu().sum(-1).tolist()
        token = torch.arange(tiles * padded_tokens)
        self.groups: list[PadGroup] = []
        for n_tiles in sorted(set(counts)):
            is_pad = (token // padded_tokens >= n_tiles) | (token % padded_tokens >= real_tokens)
            pads = int(is_pad.sum())
            images = torch.tensor([i for i, c in enumerate(counts) if c == n_tiles])
            self.groups.append(PadGroup(images.to(device), (~is_pad).nonzero()[:, 0].to(device),
                                        is_pad.nonzero()[:, 0].to(device) if pads else None,
                                        4 * pads >= token.numel(), (~is_pad).view(1, 1, 1, -1).to(device)))


class MllamaVisionModel(nn.Module):
    def __init__(self, cfg: MllamaVisionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, d, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.gated_positional_embedding = GatedPositionalEmbedding(cfg)
        self.pre_tile_positional_embedding = AspectRatioEmbedding(cfg)
        self.post_tile_positional_embedding = AspectRatioEmbedding(cfg)
        self.layernorm_pre = nn.LayerNorm(d)
        self.layernorm_post = nn.LayerNorm(d)
        self.transformer = VisionEncoder(cfg, cfg.num_hidden_layers, gated=False)
        self.global_transformer = VisionEncoder(cfg, cfg.num_global_layers, gated=True)

    def forward(self, pixel_values: torch.Tensor, aspect_ratio_ids: torch.Tensor,
                aspect_ratio_mask: torch.Tensor) -> torch.Tensor:
        n, tiles, c, hgt, wid = pixel_values.shape
        d = self.cfg.hidden_size
        dtype = self.patch_embedding.weight.dtype
        p = self.cfg.patch_size
        # the stride-p convolution as one GEMM over unfolded patches (cuDNN ran it as a slow implicit GEMM:
        # 1% of the tower's time on an H200); patches in row-major order, features in the weight's (c, y, x)
        patches = pixel_values.reshape(n * tiles, c, hgt // p, p, wid // p, p).permute(0, 2, 4, 1, 3, 5)
        x = F.linear(patches.reshape(n * tiles, (hgt // p) * (wid // p), c * p * p).to(dtype),
                     self.patch_embedding.weight.view(d, -1))  # [n*tiles, patches, d]
        x = self.pre_tile_positional_embedding(x.view(n, tiles, -1, d), aspect_ratio_ids)
        cls = self.class_embedding.to(x.dtype).expand(n, tiles, 1, d)
        x = torch.cat([cls, x], dim=2)  # [n, tiles, P, d]
        x = self.layernorm_pre(self.gated_positional_embedding(x, aspect_ratio_ids))

        real = x.shape[2]
        padded = math.ceil(real / 8) * 8
        x = F.pad(x, (0, 0, 0, padded - real))  # [n, tiles, padded, d]
        pads = PadLayout(aspect_ratio_mask, real, padded, x.device)

        x, kept = self.transformer(x.reshape(n, tiles * padded, d), pads, self.cfg.intermediate_layers_indices)
        x = self.layernorm_post(x).view(n, tiles, padded, d)
        x = self.post_tile_positional_embedding(x, aspect_ratio_ids)
        x, _ = self.global_transformer(x.reshape(n, tiles * padded, d), pads)

        # [final state | kept states interleaved as (hidden, layer)], written in place: stacking on a new last
        # axis, concatenating and slicing off the padding cost three copies of this 1.3 GB (16 4-tile images)
        out = x.new_empty(n, tiles, real, d * (1 + len(kept)))
        out[..., :d] = x.view(n, tiles, padded, d)[:, :, :real]
        inter = out[..., d:].view(n, tiles, real, d, len(kept))
        for j, state in enumerate(kept):
            inter[..., j] = state.view(n, tiles, padded, d)[:, :, :real]
        return out
