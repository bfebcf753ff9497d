"""bf16 on the GPU: our LLaVA-OneVision vs transformers' on the same random weights (tiny and 7B shapes),
one anyres image of 768x768 (3,699 image tokens at 7B geometry) followed by text."""

from __future__ import annotations

import pytest
import torch

from models.generate import prompt_logits
from models.onevision import anyres
from models.onevision.config import OneVisionConfig
from models.onevision.model import LlavaOnevisionForConditionalGeneration, OneVisionMedia

IMAGE = 151646


def hf_to_flat_name(name: str) -> str:
    """transformers' in-memory name -> the flat checkpoint name that transformers 5 writes."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    if name == "lm_head.weight":
        return "language_model.lm_head.weight"
    return name.removeprefix("model.")


def ours_from(hf) -> LlavaOnevisionForConditionalGeneration:
    with torch.device("meta"):
        ours = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_hf(hf.config.to_dict()),
                                                      flat_vision_names=True)
    state = {hf_to_flat_name(k): v for k, v in hf.state_dict().items()}
    ours.to_empty(device="cuda")
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(state[name])
    for m in ours.modules():
        if hasattr(m, "reset_buffers"):
            m.reset_buffers()
    return ours.to(torch.bfloat16).eval()


@pytest.mark.parametrize("which", ["tiny", "7B"])
def test_bf16_logits_agree(which, shared_checkpoints):
    import transformers

    torch.manual_seed(0)
    if which == "tiny":
        import importlib.util
        from pathlib import Path

        spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).parents[1] / "conftest.py")
        conftest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(conftest)
        hf_cfg = conftest.tiny_ov_config()
        size = (160, 100)
    else:
        hf_cfg = transformers.AutoConfig.from_pretrained(shared_checkpoints / "llava-onevision-qwen2-7b-ov-hf")
        size = (768, 768)
    with torch.device("cuda"):
        hf = transformers.LlavaOnevisionForConditionalGeneration(hf_cfg).to(torch.bfloat16).eval()
    with torch.no_grad():  # random init leaves the newline at zero: make it matter
        hf.model.image_newline.normal_(0, 1)
    ours = ours_from(hf)
    s = hf_cfg.vision_config.image_size
    n_crops = anyres.num_patches(*size, ours.cfg.image_grid_pinpoints, s)
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(n_crops, 3, s, s, generator=g) * 2 - 1
    media = OneVisionMedia(images=[pixels], image_sizes=[size])
    n_img, _ = media.token_counts(ours.cfg)
    text = torch.randint(1000, 150000, (40,), generator=g).tolist()
    ids = [151644, 872, 198, *[IMAGE] * n_img, *text]
    print(f"[{which}] {n_img} image tokens, {len(ids)} prompt tokens")

    ours_logits = prompt_logits(ours, [ids], [media], pad_id=151643)[0][-48:].float()
    del ours
    torch.cuda.empty_cache()
    inputs = dict(input_ids=torch.tensor([ids], device="cuda"), image_sizes=torch.tensor([size], device="cuda"))
    with torch.no_grad():
        ref_bf16 = hf(pixel_values=pixels[None].cuda().bfloat16(), **inputs, logits_to_keep=48).logits[0].float()
        ref_fp32 = hf.float()(pixel_values=pixels[None].cuda(), **inputs, logits_to_keep=48).logits[0].float()
    ours_err = (ours_logits - ref_fp32).abs().max().item()
    hf_err = (ref_bf16 - ref_fp32).abs().max().item()
    ours_mean = (ours_logits - ref_fp32).abs().mean().item()
    hf_mean = (ref_bf16 - ref_fp32).abs().mean().item()
    print(f"[{which}] last 48 positions vs fp32: ours bf16 max|err|={ours_err:.4g} mean|err|={ours_mean:.4g}; "
          f"transformers bf16 max|err|={hf_err:.4g} mean|err|={hf_mean:.4g}; "
          f"max|logit|={ref_fp32.abs().max().item():.3g}")
    assert ours_err <= 1.5 * hf_err + 1e-2
    assert ours_mean <= 1.5 * hf_mean + 1e-3
