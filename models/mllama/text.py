"""Mllama text decoder: Llama-3.1 self-attention layers interleaved with gated cross-attention layers.

Tensor names mirror the checkpoint (`language_model.model.layers.N.self_attn.q_proj.weight`, ...). The
decoder never owns a KV cache: self-attention layers hand their rotated q/k/v to a `SelfAttention`
backend (ops/attention.py or the engine's), keyed by `cache_index` (self-attention layers only, counted
from 0), and cross-attention layers read precomputed image K/V from `CrossAttentionInputs`.

Cross-attention semantics, as the reference computes them:
- `mask` [B, 1, S, L] is additive over the row's vision tokens; a text row that may see no tile (tokens
  before the first `<|image|>`) gets an all-zero row, i.e. a uniform average over all of the row's vision
  tokens, padding tiles included; `row_gate` [B, S, 1] then zeroes that row's MLP output only.
- a batch row without any image (`has_image` = 0) is left untouched by cross-attention layers, exactly as
  the reference skips those layers for a text-only batch; this keeps one row's result independent of
  what else is in the batch and needs no host-side branch.

Tensor parallelism (`tp`: ops/parallel.ParallelContext, default tp=1): attention projections are split by
heads (KV heads replicated when tp exceeds their count), MLPs by intermediate features, the embedding and
lm_head by vocabulary rows; o_proj/down_proj all-reduce. `heads`/`kv_heads` are then this rank's counts,
and so are the cross-attention K/V heads. Norms and gates are replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.mllama.config import MllamaTextConfig
from ops.activations import activation, silu_mul
from ops.attention import SelfAttention, attention
from ops.fusion import fuse_linears
from ops.gemv import linear
from ops.norms import RMSNorm
from ops.parallel import (
    SINGLE,
    ColumnParallelLinear,
    ParallelContext,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    head_shard,
)
from ops.rope import RotaryEmbedding, apply_rope


@dataclass
class CrossAttentionInputs:
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer index -> k, v [B, Hkv, L, D]
    mask: torch.Tensor  # [B, 1, S, L] additive
    row_gate: torch.Tensor  # [B, S, 1] 1 where the text row sees at least one tile
    has_image: torch.Tensor  # [B, 1, 1] 1 where the batch row has an image


def _attention_projections(module: nn.Module, cfg: MllamaTextConfig, tp: ParallelContext) -> None:
    """q/k/v (column-parallel by heads, KV replicated past their count) and o_proj (row-parallel)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    module.q_proj = ColumnParallelLinear.heads(d, cfg.num_attention_heads, hd, ctx=tp)
    module.k_proj = ColumnParallelLinear.heads(d, cfg.num_key_value_heads, hd, ctx=tp, replicate=True)
    module.v_proj = ColumnParallelLinear.heads(d, cfg.num_key_value_heads, hd, ctx=tp, replicate=True)
    module.o_proj = RowParallelLinear(cfg.num_attention_heads * hd, d, ctx=tp, cols=module.q_proj.rows)
    module.heads, module.kv_heads, module.head_dim = module.q_proj.local_heads, module.k_proj.local_heads, hd


class TextMLP(nn.Module):
    def __init__(self, cfg: MllamaTextConfig, tp: ParallelContext = SINGLE):
        super().__init__()
        self.gate_proj = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, ctx=tp)
        self.up_proj = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, ctx=tp)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, ctx=tp)
        self.act_name = cfg.hidden_act
        self.act = activation(cfg.hidden_act)
        self.gate_up = None  # fused [2I, d] weight once loaded (gate/up weights become views of it)

    def fuse_weights(self) -> None:
        if self.act_name == "silu":
            self.gate_up = fuse_linears(self.gate_proj, self.up_proj)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            return self.down_proj(silu_mul(linear(x, self.gate_up)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class TextSelfAttention(nn.Module):
    def __init__(self, cfg: MllamaTextConfig, cache_index: int, tp: ParallelContext = SINGLE):
        super().__init__()
        self.cache_index = cache_index
        _attention_projections(self, cfg, tp)
        self.qkv, self.qkv_sizes = None, None  # fused projection once loaded

    def fuse_weights(self) -> None:
        self.qkv, _, self.qkv_sizes = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: SelfAttention) -> torch.Tensor:
        b, s, _ = x.shape
        if self.qkv is not None:
            q, k, v = linear(x, self.qkv).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attn(self.cache_index, q, k, v)  # [b, heads, s, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class TextCrossAttention(nn.Module):
    def __init__(self, cfg: MllamaTextConfig, tp: ParallelContext = SINGLE):
        super().__init__()
        _attention_projections(self, cfg, tp)
        self.q_norm = RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)

    def project_kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, L, hidden] (projected vision features) -> k, v [B, Hkv, L, D]."""
        b, n, _ = states.shape
        # norms before the transposes: over contiguous rows (ops.norms runs them as [rows, head_dim])
        k = self.k_norm(self.k_proj(states).view(b, n, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(states).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.heads, self.head_dim)).transpose(1, 2)
        out = attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class SelfAttentionDecoderLayer(nn.Module):
    def __init__(self, cfg: MllamaTextConfig, cache_index: int, tp: ParallelContext = SINGLE):
        super().__init__()
        self.self_attn = TextSelfAttention(cfg, cache_index, tp)
        self.mlp = TextMLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, x, pending, rope, attn: SelfAttention, cross: CrossAttentionInputs | None):
        """-> (residual stream, this layer's MLP output still to be added: the next norm adds it)."""
        x, h = self.input_layernorm.add(x, pending)
        x, h = self.post_attention_layernorm.add(x, self.self_attn(h, rope, attn))
        return x, self.mlp(h)


class CrossAttentionDecoderLayer(nn.Module):
    def __init__(self, cfg: MllamaTextConfig, layer_idx: int, tp: ParallelContext = SINGLE):
        super().__init__()
        self.layer_idx = layer_idx
        self.cross_attn = TextCrossAttention(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp = TextMLP(cfg, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, pending, rope, attn: SelfAttention, cross: CrossAttentionInputs | None):
        if cross is None:  # no row of this batch has an image
            return x, pending
        k, v = cross.kv[self.layer_idx]
        x, h = self.input_layernorm.add(x, pending)
        h = self.cross_attn(h, k, v, cross.mask)
        x, h = self.post_attention_layernorm.add(x, cross.has_image * self.cross_attn_attn_gate.tanh() * h)
        return x, self.cross_attn_mlp_gate.tanh() * (self.mlp(h) * cross.row_gate)


class MllamaTextModel(nn.Module):
    def __init__(self, cfg: MllamaTextConfig, tp: ParallelContext = SINGLE):
        super().__init__()
        self.cfg = cfg
        # 8 extra rows: the image token and reserved ids live past the tokenizer's vocabulary.
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size + 8, cfg.hidden_size, ctx=tp)
        layers, n_self = [], 0
        for i in range(cfg.num_hidden_layers):
            if i in cfg.cross_attention_layers:
                layers.append(CrossAttentionDecoderLayer(cfg, i, tp))
            else:
                layers.append(SelfAttentionDecoderLayer(cfg, n_self, tp))
                n_self += 1
        self.layers = nn.ModuleList(layers)
        self.num_self_attention_layers = n_self
        self.kv_heads = head_shard(cfg.num_key_value_heads, tp, replicate=True)[1]  # this rank's KV heads
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def cross_attention_kv(self, states: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {layer.layer_idx: layer.cross_attn.project_kv(states)
                for layer in self.layers if isinstance(layer, CrossAttentionDecoderLayer)}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: SelfAttention,
                cross: CrossAttentionInputs | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, x.dtype)
        pending = None  # a layer's last branch output, added to the residual stream by the next norm
        for layer in self.layers:
            x, pending = layer(x, pending, rope, attn, cross)
        return self.norm.add(x, pending)[1]


class MllamaForCausalLM(nn.Module):
    """The `language_model` subtree of the checkpoint: decoder + lm_head (vocab rows only)."""

    def __init__(self, cfg: MllamaTextConfig, tp: ParallelContext = SINGLE):
        super().__init__()
        self.model = MllamaTextModel(cfg, tp)
        self.lm_head = ParallelLMHead(cfg.hidden_size, cfg.vocab_size, ctx=tp)
