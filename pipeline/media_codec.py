"""Per-model CPU preparation of one row, and the compact form its media travels in between Ray stages.

`codec_for(model_dir, config)` picks the codec from `config.json`'s architecture. A codec:
- `prepare(row) -> (prompt_ids, blob)`: fetch + decode media, run the model's processor (uint8 pixels),
  build the chat messages (`--prompt` convention, a per-row prompt, or per-row messages), render the
  checkpoint's chat template (sandboxed), tokenize. Raises typed `InputError`s. Runs in the isolated
  decode child (pipeline/isolation.py).
- `unpack(batch, i) -> media` for the engine runner (GPU actor side).
An image cell holds encoded bytes, a path/URI, a decoded uint8 array (HxW, HxWx1/3/4, as
`ray.data.read_images` makes; several as NxHxWxC) or a list of these. Arrays are encoded as PNG (lossless)
so they take the same checked decode path (size limits, RGB conversion) as files.
The blob is `pack`'s flat format: a JSON header and raw array bytes (never pickled objects); the GPU
actor unpacks it into zero-copy views (`.npz` cost a CRC pass and copies per 3.8 MB image there).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from models.chat_template import ChatTemplate, count_media, normalize_messages, user_turn
from models.errors import InputError, PromptError
from models.media import load_image
from models.registry import architecture
from models.tokenizer import Tokenizer
from pipeline.fetch import media_bytes
from pipeline.job_config import JobConfig

MAGIC = b"VLMCAP1\n"


def pack(**arrays: np.ndarray) -> bytes:
    """Plain arrays -> one blob: magic, a length-prefixed JSON header (name, dtype, shape per array), then
    the raw bytes back to back. Never pickled; unpacking is a header parse plus zero-copy views."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}  # tobytes() writes C order whatever the strides
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise TypeError(f"array {k!r} has dtype object: only plain numeric arrays travel")
    header = json.dumps([[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()]).encode()
    return b"".join([MAGIC, len(header).to_bytes(4, "little"), header, *(v.tobytes() for v in arrays.values())])


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """`pack`'s inverse: read-only views into `blob` (copy before writing into them)."""
    if blob[: len(MAGIC)] != MAGIC:
        raise ValueError("not a media blob written by pipeline.media_codec.pack")
    start = len(MAGIC) + 4
    offset = start + int.from_bytes(blob[len(MAGIC):start], "little")
    out = {}
    for name, dtype, shape in json.loads(blob[start:offset]):
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(blob, dtype=dt, count=count, offset=offset).reshape(shape)
        offset += count * dt.itemsize
    if offset != len(blob):
        raise ValueError(f"media blob has {len(blob) - offset} trailing bytes")
    return out


def _present(cell) -> bool:
    return cell is not None and not (isinstance(cell, float) and np.isnan(cell))


def array_image_bytes(image: np.ndarray) -> bytes:
    """A decoded uint8 image (HxW, HxWx1, HxWx3 RGB or HxWx4 RGBA) -> PNG bytes with the same pixels."""
    import PIL.Image

    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise InputError(f"a decoded image must be a uint8 HxW or HxWx(1|3|4) array, got {image.dtype} "
                         f"{tuple(image.shape)}", kind="bad_input")
    buf = io.BytesIO()
    # compress_level 1: the bytes only travel to the decoder next door, so speed beats size.
    PIL.Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(
        buf, "PNG", compress_level=1)
    return buf.getvalue()


def _image_bytes(cell, allow_http: bool) -> bytes:
    return array_image_bytes(cell) if isinstance(cell, np.ndarray) else media_bytes(cell, allow_http=allow_http)


class BaseCodec:
    max_images_per_request = 1
    family = "this model"

    def __init__(self, model_dir: str | Path, config: JobConfig):
        self.model_dir, self.config = Path(model_dir), config
        self.tokenizer = Tokenizer.from_dir(self.model_dir)
        self.template = ChatTemplate.from_dir(self.model_dir)

    def max_media_tokens(self) -> dict[str, int]:
        """Largest number of prompt tokens one media item of each kind can become (its placeholder included)."""
        raise NotImplementedError

    def messages(self, row: dict, n_images: int, n_videos: int) -> list[dict]:
        c = self.config
        if c.messages_column:
            cell = row.get(c.messages_column)
            if not _present(cell):
                raise PromptError("messages cell is empty")
            msgs = normalize_messages(json.loads(cell) if isinstance(cell, str) else cell)
            if count_media(msgs) != (n_images, n_videos):
                raise PromptError(f"messages reference {count_media(msgs)} (images, videos) but the row has "
                                  f"{(n_images, n_videos)}")
            return msgs
        text = row.get(c.prompt_column) if c.prompt_column else c.prompt
        if not _present(text) or not str(text).strip():
            raise PromptError("empty prompt")
        return user_turn(str(text), n_images, n_videos)

    def prompt_ids(self, row: dict, n_images: int, n_videos: int) -> list[int]:
        text = self.template.render(self.messages(row, n_images, n_videos), add_generation_prompt=True)
        return self.tokenizer.encode(text)

    def media_cells(self, row: dict) -> tuple[list[bytes], bytes | None]:
        """(the row's images, its video). An image cell holds one image, or a list of them (bytes or
        paths/URIs): several images become one request with several images."""
        img = row.get("image")
        vid = row.get("video")
        if isinstance(img, np.ndarray) and img.ndim == 4:  # several decoded images in one cell
            img = list(img)
        images = [x for x in img if _present(x)] if isinstance(img, list | tuple) else [img] if _present(img) else []
        if not images and not _present(vid):
            raise InputError("the row has neither an image nor a video", kind="missing_media")
        if len(images) > self.max_images_per_request:
            raise InputError(f"{self.family} takes at most {self.max_images_per_request} image(s) per row; this row "
                             f"has {len(images)}", kind="unsupported_media")
        allow = self.config.allow_http
        return ([_image_bytes(x, allow) for x in images],
                media_bytes(vid, allow_http=allow) if _present(vid) else None)


class MllamaCodec(BaseCodec):
    family = "Llama-3.2-Vision"
    def __init__(self, model_dir, config):
        super().__init__(model_dir, config)
        from models.mllama.image_processor import MllamaImageProcessor

        self.processor = MllamaImageProcessor.from_dir(self.model_dir)

    def max_media_tokens(self) -> dict[str, int]:
        return {"image": 1}  # the image is cross-attended: one `<|image|>` token in the prompt, whatever its size

    def prepare(self, row: dict) -> tuple[list[int], bytes]:
        images, video = self.media_cells(row)
        if video is not None:
            raise InputError("Llama-3.2-Vision takes images, not videos", kind="unsupported_media")
        out = self.processor.preprocess(load_image(images[0]), uint8=True)
        ids = self.prompt_ids(row, 1, 0)
        return ids, pack(pixels=out.pixel_values, aspect_ratio_id=np.array([out.aspect_ratio_id]),
                         num_tiles=np.array([out.num_tiles]))

    def unpack(self, batch: dict, i: int):
        from models.mllama.model import MllamaImages

        a = unpack_arrays(batch["media"][i])
        tiles = int(a["num_tiles"][0])
        max_tiles = self.processor.config.max_image_tiles
        px = np.zeros((1, max_tiles, *a["pixels"].shape[1:]), dtype=np.uint8)
        px[0, :tiles] = a["pixels"]
        return MllamaImages(torch.from_numpy(px), torch.tensor(a["aspect_ratio_id"], dtype=torch.long), [tiles])


def codec_for(model_dir: str | Path, config: JobConfig) -> BaseCodec:
    arch = architecture(model_dir)
    if arch == "MllamaForConditionalGeneration":
        return MllamaCodec(model_dir, config)
    from pipeline.onevision_codec import OneVisionCodec

    return OneVisionCodec(model_dir, config)


def prepare_row(model_dir: str, config: JobConfig):
    """Factory run inside the isolated decode child: returns its `row -> (ids, blob)` handler."""
    prepare = codec_for(model_dir, config).prepare
    crash_id = config.fault_injection.get("decode_exit_on_id")
    if crash_id is None:
        return prepare

    def prepare_or_crash(row: dict):
        """Reliability tests: this row kills the decoding process, as a decoder segfault would."""
        if str(row.get("id")) == crash_id:
            os._exit(139)
        return prepare(row)

    return prepare_or_crash
