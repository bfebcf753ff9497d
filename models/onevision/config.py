"""Frozen configuration of LLaVA-OneVision (SigLIP vision tower + Qwen2 decoder), read from `config.json`.

Only the fields we use are read; unknown keys are ignored. Rules mirrored from the reference config:
- `tie_word_embeddings` is true if either the top level or `text_config` says so (the 0.5B checkpoint
  keeps it in `text_config` only);
- `vision_feature_layer` is an int or a list of ints (features of several layers are concatenated);
- only `vision_feature_select_strategy == "full"` is accepted: SigLIP has no class token, and the
  reference's "default" strategy cannot pack anyres features either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.config_utils import as_id_list, read_config, rope_params
from models.errors import CheckpointError
from models.onevision.anyres import parse_max_num_patches


def _pick(cls, cfg: dict) -> dict:
    return {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg and cfg[k] is not None}


@dataclass(frozen=True)
class SiglipVisionConfig:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_hf(cls, cfg: dict) -> SiglipVisionConfig:
        if cfg.get("vision_use_head"):
            raise CheckpointError("SigLIP attention-pooling head (vision_use_head=true) is not supported")
        return cls(**_pick(cls, cfg))

    @property
    def side(self) -> int:
        """Features per side of one crop (27 at 384 / 14)."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.side * self.side


@dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    rope_scaling: dict | None = None
    bos_token_id: int = 151643
    eos_token_ids: tuple[int, ...] = (151645,)
    tie_word_embeddings: bool = False
    # Qwen2 checkpoints leave it out (hidden / heads); a config may set it, as transformers' Qwen2 honours
    head_dim: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @classmethod
    def from_hf(cls, cfg: dict, tie_word_embeddings: bool = False) -> Qwen2Config:
        if cfg.get("use_sliding_window"):
            raise CheckpointError("Qwen2 sliding-window attention is not supported")
        kw = _pick(cls, cfg)
        kw["rope_theta"], kw["rope_scaling"] = rope_params(cfg, cls.rope_theta)
        kw["eos_token_ids"] = as_id_list(cfg.get("eos_token_id")) or cls.eos_token_ids
        kw["tie_word_embeddings"] = bool(tie_word_embeddings or cfg.get("tie_word_embeddings", False))
        kw["head_dim"] = int(cfg.get("head_dim") or 0)
        return cls(**kw)


@dataclass(frozen=True)
class OneVisionConfig:
    vision: SiglipVisionConfig
    text: Qwen2Config
    image_grid_pinpoints: tuple[tuple[int, int], ...]
    vision_aspect_ratio: str = "anyres_max_9"
    image_token_id: int = 151646
    video_token_id: int = 151647
    vision_feature_layer: int | tuple[int, ...] = -1
    vision_feature_select_strategy: str = "full"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True

    @classmethod
    def from_hf(cls, cfg: dict) -> OneVisionConfig:
        strategy = cfg.get("vision_feature_select_strategy", "full")
        if strategy != "full":
            raise CheckpointError(f"vision_feature_select_strategy {strategy!r} is not supported (only 'full')")
        layer = cfg.get("vision_feature_layer", -1)
        pins = cfg.get("image_grid_pinpoints")
        if not pins:
            raise CheckpointError("config.json has no image_grid_pinpoints")
        out = cls(
            vision=SiglipVisionConfig.from_hf(cfg.get("vision_config") or {}),
            text=Qwen2Config.from_hf(cfg.get("text_config") or {}, bool(cfg.get("tie_word_embeddings", False))),
            image_grid_pinpoints=tuple((int(h), int(w)) for h, w in pins),
            vision_aspect_ratio=cfg.get("vision_aspect_ratio") or "anyres_max_9",
            image_token_id=int(cfg.get("image_token_index", cfg.get("image_token_id", 151646))),
            video_token_id=int(cfg.get("video_token_index", cfg.get("video_token_id", 151647))),
            vision_feature_layer=layer if isinstance(layer, int) else tuple(int(x) for x in layer),
            vision_feature_select_strategy=strategy,
            projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
            multimodal_projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
        )
        parse_max_num_patches(out.vision_aspect_ratio)  # fail at load time, not on the first image
        return out

    @classmethod
    def from_dir(cls, path: str | Path) -> OneVisionConfig:
        return cls.from_hf(read_config(path))

    @property
    def max_num_patches(self) -> int | None:
        return parse_max_num_patches(self.vision_aspect_ratio)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else layer
