"""Qwen2 decoder (the OneVision language model): Llama-style layers with q/k/v biases and GQA.

Tensor names mirror the checkpoint (`language_model.model.layers.N.self_attn.q_proj.bias`, ...,
`language_model.lm_head.weight`). Like the Mllama decoder, it never owns a KV cache: each layer hands its
rotated q/k/v to a `SelfAttention` backend (ops/attention.py for eager generate, ops/slot_attention.py for
the engine), keyed by the layer index.

`Qwen2Model.forward` takes either token ids [B, S] or ready `inputs_embeds` [B, S, hidden] (prefill with
image/video features scattered in), plus positions [B, S]; it returns the final-norm hidden states.
When `tie_word_embeddings` is set, `lm_head.weight` is not a checkpoint tensor: the owning model declares
it tied to `embed_tokens.weight` (see models/loader.py).

Tensor parallelism (`tp`: ops/parallel.ParallelContext, default tp=1, where every module computes what the
plain `nn.Linear` / `nn.Embedding` does): q/k/v are split by heads (biases with them; KV heads replicated
when tp exceeds their count), o_proj and down_proj are row-parallel (one all-reduce each), gate/up split
by intermediate features, embed_tokens and lm_head by vocabulary rows. The two share one row partition,
so a tied lm_head simply uses this rank's embedding shard. `heads`/`kv_heads` are this rank's counts.
"""

from __future__ import annotations

import torch
from torch import nn

from models.onevision.config import Qwen2Config
from ops.activations import activation, silu_mul
from ops.attention import SelfAttention
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


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: Qwen2Config, tp: ParallelContext = SINGLE):
        super().__init__()
        self.gate_proj = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, ctx=tp)
        self.up_proj = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, ctx=tp)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, ctx=tp)
        self.act_name = cfg.hidden_act
        self.act = activation(cfg.hidden_act)
        self.gate_up = None  # fused [2I, d] weight once loaded

    def fuse_weights(self) -> None:
        if self.act_name == "silu":
            self.gate_up = fuse_linears(self.gate_proj, self.up_proj)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            return self.down_proj(silu_mul(linear(x, self.gate_up)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: Qwen2Config, layer_idx: int, tp: ParallelContext = SINGLE):
        super().__init__()
        self.layer_idx = layer_idx
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = ColumnParallelLinear.heads(d, cfg.num_attention_heads, hd, bias=True, ctx=tp)
        self.k_proj = ColumnParallelLinear.heads(d, cfg.num_key_value_heads, hd, bias=True, ctx=tp, replicate=True)
        self.v_proj = ColumnParallelLinear.heads(d, cfg.num_key_value_heads, hd, bias=True, ctx=tp, replicate=True)
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * hd, d, ctx=tp, cols=self.q_proj.rows)
        self.heads, self.kv_heads, self.head_dim = self.q_proj.local_heads, self.k_proj.local_heads, hd
        self.qkv, self.qkv_bias, self.qkv_sizes = None, None, None  # fused projection once loaded

    def fuse_weights(self) -> None:
        self.qkv, self.qkv_bias, self.qkv_sizes = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: SelfAttention) -> torch.Tensor:
        b, s, _ = x.shape
        if self.qkv is not None:
            q, k, v = linear(x, self.qkv, self.qkv_bias).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attn(self.layer_idx, q, k, v)  # [b, heads, s, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen2Config, layer_idx: int, tp: ParallelContext = SINGLE):
        super().__init__()
        self.self_attn = Qwen2Attention(cfg, layer_idx, tp)
        self.mlp = Qwen2MLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, pending: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor],
                attn: SelfAttention) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (residual stream, this layer's MLP output still to be added: the next norm adds it)."""
        x, h = self.input_layernorm.add(x, pending)
        x, h = self.post_attention_layernorm.add(x, self.self_attn(h, rope, attn))
        return x, self.mlp(h)


class Qwen2Model(nn.Module):
    def __init__(self, cfg: Qwen2Config, tp: ParallelContext = SINGLE):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ctx=tp)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg, i, tp) for i in range(cfg.num_hidden_layers))
        self.kv_heads = head_shard(cfg.num_key_value_heads, tp, replicate=True)[1]  # this rank's KV heads
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, attn: SelfAttention,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        rope = self.rotary_emb(positions, x.dtype)
        pending = None
        for layer in self.layers:
            x, pending = layer(x, pending, rope, attn)
        return self.norm.add(x, pending)[1]


class Qwen2ForCausalLM(nn.Module):
    """The `language_model` subtree of the checkpoint: decoder + lm_head."""

    def __init__(self, cfg: Qwen2Config, tp: ParallelContext = SINGLE):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2Model(cfg, tp)
        self.lm_head = ParallelLMHead(cfg.hidden_size, cfg.vocab_size, ctx=tp)

    def reset_buffers(self) -> None:
        """Re-tie after materialisation: `to_empty` unshares parameters, and random-weight models
        (models/random_weights.py) never pass through the loader's tying."""
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
