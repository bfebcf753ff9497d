"""LLaVA-OneVision's per-row CPU preparation and the compact form its media travel in (see media_codec.py).

A row carries one image, a list of images (one multi-image request), or one video (the `image` / `video`
cells; both present is a prompt with the images and the video). A single image becomes anyres uint8 crops
(base first) plus its original size; each image of several becomes one square crop; videos are
decoded with PyAV (`--num-frames` uniformly sampled frames, default from the checkpoint's video processor)
and resized to uint8 frames. The rendered prompt's single `<image>` / `<video>` placeholders are expanded
to the exact feature counts on the CPU, so the engine can size the request before the GPU sees it.
"""

from __future__ import annotations

import numpy as np
import torch

from models.media import load_image
from models.onevision import anyres
from models.onevision.config import OneVisionConfig
from models.onevision.image_processor import OneVisionImageProcessor
from models.onevision.processor import expand_media_tokens
from models.onevision.video_processor import OneVisionVideoProcessor
from pipeline.media_codec import BaseCodec, pack, unpack_arrays


class OneVisionCodec(BaseCodec):
    family = "LLaVA-OneVision"
    # One request may carry several images (multi-image prompts); the vision batch bounds how many.
    max_images_per_request = 64
    def __init__(self, model_dir, config):
        super().__init__(model_dir, config)
        self.model_config = OneVisionConfig.from_dir(self.model_dir)
        self.images = OneVisionImageProcessor.from_dir(self.model_dir)
        self.videos = OneVisionVideoProcessor.from_dir(self.model_dir)
        self.num_frames = config.num_frames or self.videos.num_frames

    def max_media_tokens(self) -> dict[str, int]:
        v = self.model_config.vision
        image = anyres.max_image_tokens(self.images.pinpoints, v.image_size, v.patch_size,
                                        self.model_config.max_num_patches)
        return {"image": image, "video": self.videos.num_tokens(self.num_frames)}

    def prepare(self, row: dict) -> tuple[list[int], bytes]:
        images, video_bytes = self.media_cells(row)
        arrays: dict[str, np.ndarray] = {}
        image_tokens, video_tokens = [], []
        if len(images) == 1:  # anyres: the base image and a grid of crops
            img = self.images.preprocess(load_image(images[0]), uint8=True)
            arrays.update(image=img.pixel_values, image_size=np.array(img.image_size, dtype=np.int64))
            image_tokens.append(img.num_tokens)
        elif images:  # several images in one prompt: one square crop each, as the reference processor does
            done = [self.images.preprocess(load_image(b), uint8=True, multi_image=True) for b in images]
            arrays.update(images=np.concatenate([d.pixel_values for d in done]),
                          image_sizes=np.array([d.image_size for d in done], dtype=np.int64))
            image_tokens.extend(d.num_tokens for d in done)
        if video_bytes is not None:
            from models.video import decode_video  # PyAV only where a video is decoded (image jobs, benches)

            frames = decode_video(video_bytes, self.num_frames).frames
            arrays["video"] = self.videos.preprocess(frames, uint8=True)
            video_tokens.append(self.videos.num_tokens(len(frames)))
        ids = self.prompt_ids(row, len(image_tokens), len(video_tokens))
        ids = expand_media_tokens(ids, image_tokens, video_tokens, self.model_config.image_token_id,
                                  self.model_config.video_token_id)
        return ids, pack(**arrays)

    def unpack(self, batch: dict, i: int):
        from models.onevision.model import OneVisionMedia

        a = unpack_arrays(batch["media"][i])
        media = OneVisionMedia()
        if "image" in a:
            media.images.append(torch.from_numpy(a["image"].copy()))  # the views are read-only
            media.image_sizes.append(tuple(int(x) for x in a["image_size"]))
        if "images" in a:
            for k in range(a["images"].shape[0]):
                media.images.append(torch.from_numpy(a["images"][k:k + 1].copy()))
                media.image_sizes.append(tuple(int(x) for x in a["image_sizes"][k]))
        if "video" in a:
            media.videos.append(torch.from_numpy(a["video"].copy()))
        return media
