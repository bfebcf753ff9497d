"""Write the sample media in demo/media/ (committed; re-run to regenerate).

    .venv/bin/python scripts/make_demo_media.py

Two scenes and two clips come from the demo model's own world (demo/world.py, seeds it was not trained on),
so `python jobs/caption.py` shows what a trained model answers; two abstract images of random rectangles at
odd aspect ratios (a panorama and a tall grayscale JPEG) stay out of that world on purpose: they show what a
small model says about things it has never seen, and exercise anyres on extreme shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import world  # noqa: E402

OUT = ROOT / "demo" / "media"
SEED = 7_000_000  # far from the training streams and from the held-out test's seeds


def rectangles(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    return img


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.iterdir():
        stale.unlink()
    rng = np.random.default_rng(SEED)
    scenes = [world.sample_scene(rng) for _ in range(2)]
    world.render(scenes[0]).save(OUT / "scene_1.png")
    world.render(scenes[1]).save(OUT / "scene_2.jpg", quality=90)
    clips = [world.Clip((320, 240), "white", "circle", "red", "right", 9),
             world.Clip((256, 256), "black", "star", "yellow", "down", 16)]
    write_mp4(OUT / "clip_9frames.mp4", world.render_clip(clips[0]))
    write_mp4(OUT / "clip_16frames.mp4", world.render_clip(clips[1]))
    rectangles(1024, 300, 3).save(OUT / "panorama_1024x300.jpg", quality=85)
    rectangles(300, 900, 4).convert("L").save(OUT / "tall_gray_300x900.jpg", quality=85)
    truth = [f"scene_1.png: {world.caption(scenes[0])}", f"scene_2.jpg: {world.caption(scenes[1])}",
             f"clip_9frames.mp4: {world.clip_caption(clips[0])}", f"clip_16frames.mp4: {world.clip_caption(clips[1])}"]
    print("\n".join(f"{p.name}: {p.stat().st_size} bytes" for p in sorted(OUT.iterdir())))
    print("ground truth:\n  " + "\n  ".join(truth))


if __name__ == "__main__":
    main()
