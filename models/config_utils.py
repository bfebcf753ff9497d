"""Helpers shared by the frozen config dataclasses built from Hugging Face `config.json` files.

The configs are read, never mutated: `from_hf(dict)` picks the fields we use (unknown keys are ignored,
as transformers does), `from_dir(path)` reads `config.json`. Two generations of rope fields exist in the
wild: checkpoints written by transformers 4.x carry `rope_theta` + `rope_scaling`, those written by 5.x
carry one `rope_parameters` dict; `rope_params` normalises both.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    return json.loads(path.read_text())


def rope_params(cfg: dict, default_theta: float) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) from either rope convention."""
    params = cfg.get("rope_parameters")
    if params:
        theta = params.get("rope_theta", cfg.get("rope_theta", default_theta))
        kind = params.get("rope_type", params.get("type", "default"))
        return float(theta), (None if kind == "default" else dict(params))
    scaling = cfg.get("rope_scaling")
    return float(cfg.get("rope_theta", default_theta)), (dict(scaling) if scaling else None)


def as_id_list(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list | tuple) else (int(value),)
