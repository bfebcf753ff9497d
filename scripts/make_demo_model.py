"""Write the tiny bundled demo model `demo/model/` (run once by a developer; the result is committed).

    python scripts/make_demo_model.py [--shared ../shared/checkpoints] [--out demo/model]

A LLaVA-OneVision checkpoint with the real 0.5B geometry everywhere the pipeline can see it (SigLIP crops of
384 px / 14 px patches, anyres_max_9 grid pinpoints, 196 tokens per video frame, the real Qwen2 tokenizer,
chat template, generation config and processor files copied from the 0.5B directory) but a tiny network:
2 SigLIP layers of width 32, 2 Qwen2 layers of width 32, tied embeddings, random bf16 weights from our own
`models.random_weights` (no transformers). The captions it writes are gibberish; it exists so that
`python jobs/caption.py` runs the whole pipeline (images and videos) in seconds on a laptop CPU.
The vocabulary keeps its real 152,000 rows, so the safetensors file is ~10 MB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.onevision.model import LlavaOnevisionForConditionalGeneration  # noqa: E402
from models.random_weights import random_model  # noqa: E402
from scripts.train_demo_model import SOURCE, write_metadata  # noqa: E402  (the same metadata files)


def tiny_config(real: dict) -> dict:
    text = dict(real["text_config"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_window_layers=2, tie_word_embeddings=True)
    vision = dict(real["vision_config"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    return dict(real, text_config=text, vision_config=vision, _name_or_path="vlmcap-demo-tiny-onevision",
                torch_dtype="bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "checkpoints")
    ap.add_argument("--out", type=Path, default=ROOT / "demo" / "model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = args.shared / SOURCE
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    write_metadata(src, out, tiny_config)
    model = random_model(LlavaOnevisionForConditionalGeneration, out, torch.bfloat16, "cpu", seed=args.seed)
    with torch.no_grad():  # a visible newline feature, so image/video rows differ from text-only ones
        model.image_newline.normal_(0, 1.0)
    tied = set(model.tied_weights)
    # A model built with hub names (`vision_tower.vision_model.*`), like the released checkpoints.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({len(state)} tensors, {size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
