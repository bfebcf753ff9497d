"""The demo model's checkpoint on disk: its shape (`demo_config`: the real 0.5B OneVision config, narrowed),
the metadata copied from the real checkpoint, and the weights: saved in bf16 without the tied lm_head,
optionally also as <= 15 MiB parts (the lent GPU machine returns files of at most 16 MiB and the tied
embedding alone is 19.4 MB), joined again by `from_parts`, and loaded back with the training progress they
carry (progress.json, or a finished checkpoint's training.json). Used by scripts/train_demo_model.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

SOURCE = "llava-onevision-qwen2-0.5b-ov-hf"
# tokenizer.json is all our Tokenizer reads; vocab.json/merges.txt stay out
COPIED = ("added_tokens.json", "chat_template.json", "generation_config.json", "preprocessor_config.json",
          "processor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json")
PART_BYTES = 15 * 2**20
VIDEO_FRAMES = 8  # frames sampled per video: demo/world.py's clips have 4-8 (the pipeline's default is 32)


def demo_config(real: dict, head_dim: int | None = 32, text_layers: int = 10) -> dict:
    # hidden 64 is what the 25 MB budget allows next to the 152k-row embedding (19.5 MB); depth, MLP width
    # and attention head width are nearly free in bytes, so they carry the capacity (head_dim 0/None: 64 / 4)
    # (a text layer is ~0.25 MB in bf16: up to 10 fit the 25 MB file)
    text = dict(real["text_config"], hidden_size=64, intermediate_size=512, num_hidden_layers=text_layers,
                num_attention_heads=4, num_key_value_heads=2, max_window_layers=text_layers, tie_word_embeddings=True)
    if head_dim:
        text["head_dim"] = head_dim
    vision = dict(real["vision_config"], hidden_size=128, intermediate_size=512, num_hidden_layers=6,
                  num_attention_heads=4)
    return dict(real, text_config=text, vision_config=vision, _name_or_path="vlmcap-demo-onevision",
                torch_dtype="bfloat16")


def write_metadata(src: Path, out: Path, shrink=demo_config) -> None:
    """`out/config.json` = `shrink(src's config)`; tokenizer, template and processor files copied from `src`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(shrink(json.loads((src / "config.json").read_text())), indent=2))
    for name in COPIED:  # copyfile: contents only, not the read-only permissions of ../shared
        shutil.copyfile(src / name, out / name)
    # the same tokenizer without its indentation: 4.8 MB instead of 7.0 (every device run carries the tree)
    tokenizer = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")),
                                        encoding="utf-8")
    (out / "video_processor").mkdir(exist_ok=True)
    for f in (src / "video_processor").iterdir():
        shutil.copyfile(f, out / "video_processor" / f.name)
    # sample as many frames as the model saw in training (HF's do_sample_frames + num_frames, which our video
    # processor reads too): with up to 32 the 16-frame demo clip was captioned wrong
    video = out / "video_processor" / "preprocessor_config.json"
    cfg = dict(json.loads(video.read_text()), do_sample_frames=True, num_frames=VIDEO_FRAMES)
    video.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def save(model, out: Path, export_dir: Path | None, progress: dict) -> None:
    """bf16 weights (tied lm_head left out, as the hub's 0.5B) to `out/model.safetensors`, atomically; with
    `export_dir`, also as <= 15 MiB parts (the device returns files of at most 16 MiB; the embedding alone
    is 19.5 MB, so safetensors shards cannot do it): join them with `--from-parts`."""
    tied = set(model.tied_weights)
    state = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in model.state_dict().items()
             if k not in tied}
    tmp = out / "model.safetensors.tmp"
    save_file(state, tmp, metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    if export_dir is not None:
        export_dir.mkdir(parents=True, exist_ok=True)
        blob = (out / "model.safetensors").read_bytes()
        for i in range(0, len(blob), PART_BYTES):
            (export_dir / f"model.part{i // PART_BYTES}").write_bytes(blob[i: i + PART_BYTES])
        (export_dir / "progress.json").write_text(json.dumps(progress))


def joined_parts(parts: Path) -> bytes | None:
    """The safetensors bytes that `save` exported as model.part0, model.part1, ... (None: no parts)."""
    files = sorted(parts.glob("model.part*"), key=lambda p: int(p.name.removeprefix("model.part")))
    return b"".join(p.read_bytes() for p in files) if files else None


def load_weights(model, src: Path) -> dict:
    """Weights from `src` (a checkpoint dir or exported parts) into `model`; returns its progress record."""
    from safetensors.torch import load

    blob = joined_parts(src) or (src / "model.safetensors").read_bytes()
    missing, unexpected = model.load_state_dict(load(blob), strict=False)
    if unexpected or set(missing) - set(model.tied_weights):
        raise SystemExit(f"{src}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    progress = src / "progress.json"
    if progress.exists():
        return json.loads(progress.read_text())
    # a finished checkpoint (demo/model as shipped) has only its training.json: continue its schedule
    record = src / "training.json"
    if record.exists():
        done = json.loads(record.read_text())
        lineage = {"init_from": done["init_from"]} if done.get("init_from") else {}
        return {"steps": int(done["steps"]), "elapsed_s": float(done["train_seconds"]), **lineage}
    return {}


TEXT_LAYER = re.compile(r"^(language_model\.model\.layers\.)(\d+)\.(.+)$")
SILENT = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # a layer's two writes into the residual stream


def init_from(model, src: Path) -> list[int]:
    """Warm start: `src`'s weights (a checkpoint dir or exported parts) into `model`, which may have more text
    layers than `src`. The old layers spread evenly over the new depth (first stays first, last stays last);
    each new layer keeps its random init but with its output projections zeroed, so it adds nothing to the
    residual stream and the grown model computes exactly what `src` computes until training moves it.
    Returns the new index of each old layer. No progress is read: the caller's schedule starts afresh."""
    from safetensors.torch import load

    state = load(joined_parts(src) or (src / "model.safetensors").read_bytes())
    old = 1 + max((int(m[2]) for k in state if (m := TEXT_LAYER.match(k))), default=-1)
    new = len(model.language_model.model.layers)
    if not 0 < old <= new:
        raise SystemExit(f"{src}: {old} text layers cannot grow into {new}")
    place = [round(i * (new - 1) / max(old - 1, 1)) for i in range(old)]
    grown = {}
    for k, v in state.items():
        m = TEXT_LAYER.match(k)
        grown[f"{m[1]}{place[int(m[2])]}.{m[3]}" if m else k] = v
    for k, v in model.state_dict().items():
        m = TEXT_LAYER.match(k)
        if m and int(m[2]) not in place:
            grown[k] = torch.zeros_like(v) if m[3] in SILENT else v
    missing, unexpected = model.load_state_dict(grown, strict=False)
    if unexpected or set(missing) - set(model.tied_weights):
        raise SystemExit(f"{src}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    return place


def from_parts(parts: Path, out: Path, shared: Path) -> None:
    blob = joined_parts(parts)
    if blob is None:
        raise SystemExit(f"no model.part* files in {parts}")
    write_metadata(shared / SOURCE, out)
    if (parts / "config.json").exists():  # the trained shape (e.g. --text-head-dim), exported with the parts
        shutil.copyfile(parts / "config.json", out / "config.json")
    (out / "model.safetensors").write_bytes(blob)
    if (parts / "training.json").exists():
        shutil.copyfile(parts / "training.json", out / "training.json")
    print(f"[train] joined {len(blob) / 2**20:.1f} MiB of parts into {out / 'model.safetensors'}")
