"""Frozen configuration of Llama-3.2-Vision (Mllama), read from the checkpoint's `config.json`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.config_utils import as_id_list, read_config, rope_params


@dataclass(frozen=True)
class MllamaVisionConfig:
    hidden_size: int = 1280
    hidden_act: str = "gelu"
    num_hidden_layers: int = 32
    num_global_layers: int = 8
    attention_heads: int = 16
    num_channels: int = 3
    intermediate_size: int = 5120
    vision_output_dim: int = 7680
    image_size: int = 560
    patch_size: int = 14
    norm_eps: float = 1e-5
    max_num_tiles: int = 4
    intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)
    supported_aspect_ratios: tuple[tuple[int, int], ...] = (
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))

    @classmethod
    def from_hf(cls, cfg: dict) -> MllamaVisionConfig:
        kw = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg and cfg[k] is not None}
        if "intermediate_layers_indices" in kw:
            kw["intermediate_layers_indices"] = tuple(kw["intermediate_layers_indices"])
        if "supported_aspect_ratios" in kw:
            kw["supported_aspect_ratios"] = tuple(tuple(r) for r in kw["supported_aspect_ratios"])
        return cls(**kw)

    @property
    def num_patches(self) -> int:
        """Tokens per tile: the patch grid plus the class token (1601 at 560 px)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def max_aspect_ratio_id(self) -> int:
        return len(self.supported_aspect_ratios)


@dataclass(frozen=True)
class MllamaTextConfig:
    vocab_size: int = 128256
    hidden_size: int = 4096
    hidden_act: str = "silu"
    num_hidden_layers: int = 40
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    intermediate_size: int = 14336
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    cross_attention_layers: tuple[int, ...] = (3, 8, 13, 18, 23, 28, 33, 38)
    bos_token_id: int = 128000
    eos_token_ids: tuple[int, ...] = (128001,)
    pad_token_id: int = 128004

    @classmethod
    def from_hf(cls, cfg: dict) -> MllamaTextConfig:
        kw = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg and cfg[k] is not None}
        kw["rope_theta"], kw["rope_scaling"] = rope_params(cfg, cls.rope_theta)
        kw["cross_attention_layers"] = tuple(cfg.get("cross_attention_layers") or cls.cross_attention_layers)
        kw["eos_token_ids"] = as_id_list(cfg.get("eos_token_id")) or cls.eos_token_ids
        return cls(**kw)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class MllamaConfig:
    vision: MllamaVisionConfig
    text: MllamaTextConfig
    image_token_id: int = 128256

    @classmethod
    def from_hf(cls, cfg: dict) -> MllamaConfig:
        return cls(
            vision=MllamaVisionConfig.from_hf(cfg.get("vision_config") or {}),
            text=MllamaTextConfig.from_hf(cfg.get("text_config") or {}),
            image_token_id=cfg.get("image_token_index", cfg.get("image_token_id", 128256)),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> MllamaConfig:
        return cls.from_hf(read_config(path))
