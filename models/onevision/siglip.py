"""SigLIP vision tower (no pooling head), as used by LLaVA-OneVision.

Input: pixel_values [N, 3, S, S] normalized float (S = image_size); output: the hidden states selected by
`feature_layers`, concatenated on the channel axis -> [N, (S / patch)^2, hidden * len(feature_layers)].

Layer indexing follows the reference's `hidden_states` tuple: index 0 is the embedding output, index i the
output of encoder layer i, negative indices count from the end (-1 = last layer). The selected states are
taken *before* `post_layernorm`; that norm exists in the checkpoint (so it is a module here and its
tensors are loaded) but the OneVision feature path never applies it. Layers after the deepest selected
one are not run, which is exact and saves work when a config selects e.g. -2.

Tensor names mirror the checkpoint, which comes in two layouts: the hub's (converted with transformers 4.x:
`vision_tower.vision_model.embeddings...`) and what transformers 5 writes with `save_pretrained` (the
`vision_model.` level dropped: `vision_tower.embeddings...`). `SiglipVisionModel(flat=...)` builds the
matching tree, so the strict name check of models/loader.py holds for both.
"""

from __future__ import annotations

import torch
from torch import nn

from models.onevision.config import SiglipVisionConfig
from ops.activations import activation
from ops.attention import attention


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return x.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipAttention(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.scale = (d // self.heads) ** -0.5
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, scale=self.scale)  # every crop is full: no padding, no mask
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class SiglipVisionModel(nn.Module):
    """The `vision_tower` subtree: `[vision_model.]{embeddings,encoder,post_layernorm}` (see module doc)."""

    def __init__(self, cfg: SiglipVisionConfig, feature_layers: tuple[int, ...], flat: bool = False):
        super().__init__()
        self.cfg, self.flat = cfg, flat
        if flat:
            self.embeddings = SiglipEmbeddings(cfg)
            self.encoder = SiglipEncoder(cfg)
            self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        else:
            self.vision_model = SiglipVisionTransformer(cfg)
        n = cfg.num_hidden_layers
        self.feature_layers = tuple(i if i >= 0 else n + 1 + i for i in feature_layers)
        if any(not 0 <= i <= n for i in self.feature_layers):
            raise ValueError(f"vision_feature_layer {feature_layers} out of range for {n} layers")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self if self.flat else self.vision_model
        x = vm.embeddings(pixel_values)
        wanted = set(self.feature_layers)
        states = {0: x} if 0 in wanted else {}
        for i, layer in enumerate(vm.encoder.layers[: max(self.feature_layers)], start=1):
            x = layer(x)
            if i in wanted:  # keep only the selected layers' activations alive
                states[i] = x
        picked = [states[i] for i in self.feature_layers]
        return picked[0] if len(picked) == 1 else torch.cat(picked, dim=-1)
