"""The model-aware default for `--max-model-len` (prompt + generated tokens per sequence).

A fixed default cannot fit both families: LLaVA-OneVision's anyres_max_9 turns an ordinary photo into up
to ~8,800 prompt tokens (a 4096 default made most real photos `too_long`), while Llama-3.2-Vision's image
is one cross-attended token and any long default only wastes KV slots. So when the user gives no value we
take the largest prompt the checkpoint's processor can produce for one media item (each kind the model
takes; OneVision videos at `--num-frames`), plus the prompt text, plus `max_new_tokens`, capped by the
model's `max_position_embeddings`. A fixed `--prompt` is measured exactly through the chat template; a
per-row prompt or messages column gets `TEXT_BUDGET` tokens. KV slots are sized from the result.
"""

from __future__ import annotations

import dataclasses
import logging

from models.config_utils import read_config
from pipeline.job_config import JobConfig

log = logging.getLogger(__name__)

TEXT_BUDGET = 1024  # rendered template + text of a per-row prompt, unknown before the rows are read
# Used when config.json's text_config omits it (transformers' defaults for Qwen2 and Mllama's text model).
DEFAULT_POSITIONS = {"LlavaOnevisionForConditionalGeneration": 32768, "MllamaForConditionalGeneration": 131072}


def max_positions(model_dir: str) -> int:
    cfg = read_config(model_dir)
    text = cfg.get("text_config") or {}
    value = text.get("max_position_embeddings") or cfg.get("max_position_embeddings")
    arch = (cfg.get("architectures") or [""])[0]
    return int(value or DEFAULT_POSITIONS.get(arch, 4096))


def largest_prompt(config: JobConfig, codec) -> int:
    """Tokens of the longest prompt one row with one image or one video can have under `config`."""
    longest = 0
    for kind, tokens in codec.max_media_tokens().items():
        counts = (1, 0) if kind == "image" else (0, 1)
        per_row = config.prompt_column or config.messages_column
        # A fixed prompt is measured; its placeholder is one of its tokens, the media adds the rest.
        text = TEXT_BUDGET if per_row else len(codec.prompt_ids({}, *counts)) - 1
        longest = max(longest, text + tokens)
    return longest


def default_max_model_len(config: JobConfig, local_model_dir: str | None = None) -> int:
    from pipeline.media_codec import codec_for

    model_dir = local_model_dir or config.model
    codec = codec_for(model_dir, config)
    need = largest_prompt(config, codec) + config.max_new_tokens
    cap = max_positions(model_dir)
    if need > cap:
        log.warning("the largest prompt plus max_new_tokens (%d tokens) exceeds the model's %d positions: "
                    "using --max-model-len %d", need, cap, cap)
    return min(need, cap)


def resolve_max_model_len(config: JobConfig, local_model_dir: str | None = None) -> JobConfig:
    """`config` with `max_model_len` filled in when the user left it unset (a copy; configs are frozen)."""
    if config.max_model_len is not None:
        return config
    return dataclasses.replace(config, max_model_len=default_max_model_len(config, local_model_dir))
