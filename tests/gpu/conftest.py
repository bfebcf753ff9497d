"""GPU-only tests: skipped cleanly where CUDA is absent (CI). Run them on the device machine."""

import faulthandler
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def hang_guard():
    """Device time is scarce: a hung test (e.g. a collective waiting for a lost peer) ends the session with
    every thread's traceback after VLMCAP_GPU_TEST_TIMEOUT seconds instead of eating the whole lease."""
    faulthandler.dump_traceback_later(float(os.environ.get("VLMCAP_GPU_TEST_TIMEOUT", "300")), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "/tests/gpu/" in str(item.fspath):
            item.add_marker(skip)


# Mixed request sets for the tiny test checkpoints (tests/conftest.py): image rows of several tile counts
# or anyres sizes, OneVision videos, and text-only rows, with uint8 media as the CPU stage ships them.
MLLAMA_IMAGE, MLLAMA_BOS, MLLAMA_TILE = 128256, 128000, 28
OV_IMAGE, OV_VIDEO = 151646, 151647


def mllama_tiny_requests(n: int, seed: int, max_new: int):
    from models.mllama.model import MllamaImages
    from ops.sampling import SamplingParams
    from pipeline.engine.request import Request

    g, out = torch.Generator().manual_seed(seed), []
    for i in range(n):
        text = torch.randint(1000, 120000, (3 + i % 11,), generator=g).tolist()
        params = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
        if i % 4 == 1:
            out.append(Request(f"t{i}", [MLLAMA_BOS, *text], None, params))
            continue
        ar, tiles = [(1, 1), (5, 2), (3, 3), (6, 4)][i % 4]
        pixels = torch.zeros(1, 4, 3, MLLAMA_TILE, MLLAMA_TILE, dtype=torch.uint8)
        pixels[0, :tiles] = torch.randint(0, 256, (tiles, 3, MLLAMA_TILE, MLLAMA_TILE), generator=g,
                                          dtype=torch.uint8)
        out.append(Request(f"i{i}", [MLLAMA_BOS, *text[:2], MLLAMA_IMAGE, *text[2:]],
                           MllamaImages(pixels, torch.tensor([ar]), [tiles]), params))
    return out


def ov_tiny_requests(cfg, n: int, seed: int, max_new: int):
    from models.onevision import anyres
    from models.onevision.model import OneVisionMedia
    from ops.sampling import SamplingParams
    from pipeline.engine.request import Request

    g, out, side = torch.Generator().manual_seed(seed), [], cfg.vision.image_size
    for i in range(n):
        text = torch.randint(1000, 150000, (3 + i % 9,), generator=g).tolist()
        params = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
        if i % 3 == 1:
            out.append(Request(f"t{i}", text, None, params))
            continue
        if i % 3 == 0:
            size = [(30, 40), (42, 200), (130, 90), (84, 84)][i // 3 % 4]
            crops = anyres.num_patches(*size, cfg.image_grid_pinpoints, side)
            media = OneVisionMedia(images=[torch.randint(0, 256, (crops, 3, side, side), generator=g,
                                                         dtype=torch.uint8)], image_sizes=[size])
        else:
            media = OneVisionMedia(videos=[torch.randint(0, 256, (1 + i % 4, 3, side, side), generator=g,
                                                         dtype=torch.uint8)])
        n_img, n_vid = media.token_counts(cfg)
        out.append(Request(f"m{i}", [*text[:2], *[OV_IMAGE] * n_img, *[OV_VIDEO] * n_vid, *text[2:]], media, params))
    return out


@pytest.fixture(scope="session")
def tiny_dirs(tiny_mllama_dir, tiny_ov_dir):
    return {"mllama": tiny_mllama_dir, "onevision": tiny_ov_dir}


@pytest.fixture(scope="session")
def tiny_requests(tiny_ov_dir):
    """family -> (n, seed, max_new) -> requests."""
    from models.onevision.config import OneVisionConfig

    ov_cfg = OneVisionConfig.from_dir(tiny_ov_dir)
    return {"mllama": mllama_tiny_requests,
            "onevision": lambda n, seed, max_new: ov_tiny_requests(ov_cfg, n, seed, max_new)}

