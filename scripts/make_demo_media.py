"""Write the small sample images and videos in demo/media/ (committed; re-run to regenerate).

    .venv/bin/python scripts/make_demo_media.py
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "demo" / "media"


def scene(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    return img


def video(path: Path, frames: int, size: tuple[int, int], seed: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        base = np.asarray(scene(*size, seed))
        for t in range(frames):
            frame = np.roll(base, shift=4 * t, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    scene(640, 480, 1).save(OUT / "shapes_640x480.jpg", quality=85)
    scene(384, 384, 2).save(OUT / "shapes_384.png")
    scene(1024, 300, 3).save(OUT / "panorama_1024x300.jpg", quality=85)
    scene(300, 900, 4).convert("L").save(OUT / "tall_gray_300x900.jpg", quality=85)
    video(OUT / "clip_16frames.mp4", 16, (320, 240), 5)
    video(OUT / "clip_9frames.mp4", 9, (256, 256), 6)
    print("\n".join(f"{p.name}: {p.stat().st_size} bytes" for p in sorted(OUT.iterdir())))


if __name__ == "__main__":
    main()
