"""Shared fixtures: tiny random checkpoints written by transformers' own `save_pretrained`.

Each tiny checkpoint gets the real tokenizer / chat template / generation config files from
`../shared/checkpoints/` (copied; `../shared` is never written), so real token ids (`<|image|>` = 128256,
the 128,256-token vocabulary) and real templates are exercised. Gates that random init leaves at exactly
zero (Mllama's cross-attention and positional gates) are set to non-zero values: with zero gates images
would have no effect and image parity tests could not fail.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

# The device machine gets no ../shared: a carried copy is named by VLMCAP_SHARED_CHECKPOINTS there.
SHARED = Path(os.environ.get("VLMCAP_SHARED_CHECKPOINTS",
                             Path(__file__).resolve().parents[1].parent / "shared" / "checkpoints"))
MLLAMA_REAL = SHARED / "Llama-3.2-11B-Vision-Instruct"
OV_REAL = SHARED / "llava-onevision-qwen2-0.5b-ov-hf"
MLLAMA_META_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
                     "generation_config.json")

TINY_MLLAMA_TILE = 28  # 2x2 patches of 14 px + class token = 5 tokens per tile, padded to 8 in the ViT


def tiny_mllama_config(**text_overrides):
    from transformers import MllamaConfig

    text = dict(vocab_size=128256, hidden_size=64, num_hidden_layers=5, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=96, cross_attention_layers=[1, 3],
                rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, high_freq_factor=4.0,
                                     low_freq_factor=1.0, original_max_position_embeddings=8192),
                eos_token_id=[128001, 128008, 128009], pad_token_id=128004)
    text.update(text_overrides)
    return MllamaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=4, num_global_layers=2, attention_heads=4,
                           intermediate_size=64, vision_output_dim=32 * 3, image_size=TINY_MLLAMA_TILE,
                           patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0, 2]),
        text_config=text, image_token_index=128256)


def make_gates_nonzero(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name.split(".")[-1] and p.numel() == 1:
                p.copy_(torch.empty(1).uniform_(0.3, 1.2, generator=g))


def write_tiny_mllama(dest: Path, seed: int = 0) -> Path:
    from transformers import MllamaForConditionalGeneration

    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(tiny_mllama_config()).eval()
    make_gates_nonzero(model, seed)
    model.save_pretrained(dest)
    for name in MLLAMA_META_FILES:
        shutil.copy(MLLAMA_REAL / name, dest / name)
    pre = json.loads((MLLAMA_REAL / "preprocessor_config.json").read_text())
    pre["size"] = {"height": TINY_MLLAMA_TILE, "width": TINY_MLLAMA_TILE}
    (dest / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return dest


@pytest.fixture(scope="session")
def tiny_mllama_dir(tmp_path_factory) -> Path:
    return write_tiny_mllama(tmp_path_factory.mktemp("tiny_mllama"))


@pytest.fixture(scope="session")
def hf_tiny_mllama(tiny_mllama_dir):
    from transformers import MllamaForConditionalGeneration

    return MllamaForConditionalGeneration.from_pretrained(tiny_mllama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def our_tiny_mllama(tiny_mllama_dir):
    from models.mllama.model import MllamaForConditionalGeneration

    return MllamaForConditionalGeneration.from_pretrained(tiny_mllama_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def shared_checkpoints() -> Path:
    """The real metadata-only checkpoint directories (read only)."""
    return SHARED


def hf_to_hub_name(name: str) -> str:
    """transformers 5 keeps `model.language_model.*` etc. in memory and writes hub names on save."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    if name.startswith("model."):
        return name[len("model."):]
    if name == "lm_head.weight":
        return "language_model.lm_head.weight"
    return name


@pytest.fixture(scope="session")
def hub_name():
    return hf_to_hub_name


@pytest.fixture(scope="session")
def mllama_tiny_hf_config():
    return tiny_mllama_config


# --- tiny LLaVA-OneVision -------------------------------------------------------------------------
# Shapes are shrunk but every code path of the real model stays live:
# - the real Qwen2 vocabulary (the 0.5B config's 152,000 embedding rows), tokenizer, chat template and the
#   real `<image>` / `<video>` ids (151646 / 151647);
# - SigLIP crops of 42 px with 6 px patches: 7x7 features per crop (odd, like 27x27 at 384/14), so video
#   pooling goes 7 -> 4 as 27 -> 14 does; the grid pinpoints are the real ones scaled by 42/384 (1x1 .. 6x6
#   crops), so the anyres_max_9 downscale triggers exactly where it does at full size;
# - tied word embeddings, as the 0.5B checkpoint; a non-zero `image_newline` (random init).
# The processor files written next to the weights describe the same geometry, so transformers' processor
# produces pixel values and token counts for this checkpoint.

TINY_OV_IMAGE = 42
TINY_OV_PATCH = 6
OV_META_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.json", "merges.txt", "chat_template.json", "generation_config.json")


def tiny_ov_pinpoints() -> list[list[int]]:
    real = json.loads((OV_REAL / "config.json").read_text())["image_grid_pinpoints"]
    return [[h // 384 * TINY_OV_IMAGE, w // 384 * TINY_OV_IMAGE] for h, w in real]


def tiny_ov_config():
    from transformers import LlavaOnevisionConfig

    real = json.loads((OV_REAL / "config.json").read_text())
    text = dict(real["text_config"], hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_window_layers=2,
                head_dim=24)  # not hidden / heads (16): an explicit head_dim must be honoured
    vision = dict(real["vision_config"], hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, image_size=TINY_OV_IMAGE, patch_size=TINY_OV_PATCH)
    return LlavaOnevisionConfig(**dict(real, text_config=text, vision_config=vision,
                                       image_grid_pinpoints=tiny_ov_pinpoints()))


def write_tiny_ov(dest: Path, seed: int = 0) -> Path:
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(tiny_ov_config()).eval()
    with torch.no_grad():  # make biases non-trivial so a dropped bias cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    model.save_pretrained(dest)
    for name in OV_META_FILES:
        shutil.copy(OV_REAL / name, dest / name)
    side = TINY_OV_IMAGE // TINY_OV_PATCH
    proc = json.loads((OV_REAL / "processor_config.json").read_text())
    (dest / "processor_config.json").write_text(json.dumps(dict(proc, num_image_tokens=side * side), indent=2))
    pre = json.loads((OV_REAL / "preprocessor_config.json").read_text())
    size = {"height": TINY_OV_IMAGE, "width": TINY_OV_IMAGE}
    pre.update(size=size, image_grid_pinpoints=tiny_ov_pinpoints())
    (dest / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (dest / "video_processor").mkdir(exist_ok=True)
    for f in (OV_REAL / "video_processor").iterdir():
        cfg = json.loads(f.read_text())
        (dest / "video_processor" / f.name).write_text(json.dumps(dict(cfg, size=size), indent=2))
    return dest


@pytest.fixture(scope="session")
def tiny_ov_dir(tmp_path_factory) -> Path:
    return write_tiny_ov(tmp_path_factory.mktemp("tiny_ov"))


@pytest.fixture(scope="session")
def hf_tiny_ov(tiny_ov_dir):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_ov_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_ov_processor(tiny_ov_dir):
    from transformers import LlavaOnevisionProcessor

    return LlavaOnevisionProcessor.from_pretrained(tiny_ov_dir)


@pytest.fixture(scope="session")
def our_tiny_ov(tiny_ov_dir):
    from models.onevision.model import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_ov_dir, dtype=torch.float32)


# --- S3 ---------------------------------------------------------------------------------------------------

@pytest.fixture
def moto_s3():
    """A moto S3 server on a free local port; yields the environment (dummy credentials, endpoint) that
    points boto/s3fs at it, for subprocesses or `monkeypatch.setenv`."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    yield env
    server.stop()


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_demo_script():
    return load_script("train_demo_model")


def free_port() -> int:
    """A TCP port the OS just handed out on 127.0.0.1 (a test server or `ray start` binds it next)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stuck_after_one(release):
    """A row stream that yields 1 and then waits for `release` (a threading.Event) before its 2: a job whose
    second row never comes, for the stall watchdog tests."""
    yield 1
    release.wait()
    yield 2
