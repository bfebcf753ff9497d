"""The demo model's world: procedurally generated scenes and clips with their captions and questions.

Everything the bundled demo model (demo/model/, trained by scripts/train_demo_model.py) knows comes from
here, and the held-out test (tests/demo/test_demo_model.py) regenerates scenes from seeds never trained on.

- `sample_scene(rng)`: 1-5 shapes (circle, square, triangle, star) in 8 colours and 2 sizes, each in its own
  cell of a 3x3 grid, on a white, gray or black background; a quarter of the scenes also carry one short
  word in large capitals along the bottom row (then shapes stay in the top two rows). `render(scene)` draws
  it with a built-in 5x7 bitmap font, so the pixels are the same with every Pillow build and font set.
- `caption(scene)`: one sentence, e.g. "Two red circles and a blue square on a white background."
- `questions(scene, rng)`: (question, one-word-or-number answer) pairs about colour, shape, count, position,
  size, the word and yes/no; every answer is determined by the scene (ambiguous questions are never asked).
  `extended=True` (training only) adds position questions about unique colour-shape pairs: cell, column, row.
- `sample_clip(rng)` / `render_clip(clip)`: 4-8 frames of one shape moving left/right/up/down.

Answers are lower-case words or digits; captions are sentences. Deterministic for a given numpy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (240, 210, 20),
          "orange": (250, 130, 10), "purple": (140, 40, 180), "pink": (250, 120, 190), "brown": (130, 80, 30)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
CELLS = ("top left", "top middle", "top right", "middle left", "center", "middle right", "bottom left",
         "bottom middle", "bottom right")
WORDS = ("CAT", "DOG", "SUN", "BOX", "HAT", "CAR", "BUS", "PEN", "CUP", "KEY", "MAP", "FOX")
CANVASES = ((384, 384),) * 6 + ((448, 336), (336, 448))  # (width, height): mostly the base crop size
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
FONT = {  # 5x7 capitals, one string per row
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".#####....#....#....#....#.....####", "D": "####.#...##...##...##...##...#####.",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".#####....#....#..###...##...#.###.", "H": "#...##...##...#######...##...##...#",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "M": "#...###.###.#.##...##...##...##...#",
    "N": "#...###..##.#.##..###...##...##...#", "O": ".###.#...##...##...##...##...#.###.",
    "P": "####.#...##...#####.#....#....#....", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..",
}


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    cell: int  # index into CELLS


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    shapes: tuple[Shape, ...]
    word: str | None = None
    jitter: tuple[tuple[int, int], ...] = field(default=())  # per shape, pixels


def sample_scene(rng: np.random.Generator) -> Scene:
    width, height = CANVASES[rng.integers(len(CANVASES))]
    word = str(rng.choice(WORDS)) if rng.random() < 0.25 else None
    cells = rng.permutation(6 if word else 9)[: rng.integers(1, 6)]
    shapes = tuple(Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(SIZES)), int(c))
                   for c in sorted(cells))
    jitter = tuple((int(rng.integers(-8, 9)), int(rng.integers(-8, 9))) for _ in shapes)
    return Scene(int(width), int(height), str(rng.choice(list(BACKGROUNDS))), shapes, word, jitter)


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    pts = []  # star: 5 points, inner radius 0.45 r
    for i in range(10):
        a = -np.pi / 2 + i * np.pi / 5
        rr = r if i % 2 == 0 else 0.45 * r
        pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, color: str, cx: float, cy: float, r: float) -> None:
    fill = COLORS[color]
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r), fill=fill)


def _draw_word(img: Image.Image, word: str, color: tuple[int, int, int]) -> None:
    w, h = img.size
    scale = max(2, min(w // (6 * len(word) + 2), h // 3 // 8))
    glyphs = np.zeros((7, 6 * len(word) - 1), dtype=bool)
    for i, ch in enumerate(word):
        glyphs[:, 6 * i: 6 * i + 5] = np.array([c == "#" for c in FONT[ch]]).reshape(7, 5)
    mask = glyphs.repeat(scale, 0).repeat(scale, 1)
    top, left = int(h * 5 / 6 - mask.shape[0] / 2), (w - mask.shape[1]) // 2
    arr = np.array(img)
    arr[top: top + mask.shape[0], left: left + mask.shape[1]][mask] = color
    img.paste(Image.fromarray(arr))


def render(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cw, ch = scene.width / 3, scene.height / 3
    for s, (jx, jy) in zip(scene.shapes, scene.jitter or [(0, 0)] * len(scene.shapes), strict=True):
        r = min(cw, ch) * (0.36 if s.size == "large" else 0.2)
        draw_shape(draw, s.kind, s.color, cw * (s.cell % 3 + 0.5) + jx, ch * (s.cell // 3 + 0.5) + jy, r)
    if scene.word:
        _draw_word(img, scene.word, (250, 250, 250) if scene.background != "white" else (10, 10, 10))
    return img


def cell_labels(scene: Scene) -> list[tuple[int, int, int]]:
    """Per grid cell (CELLS order): (shape, colour, size) as 1 + the index into SHAPES / COLORS / SIZES, 0 for
    an empty cell, -1 where the word is drawn (the bottom row of a scene with a word: not a shape, not empty).
    Dense training targets for the vision features (demo/cell_head.py)."""
    out = [(-1, -1, -1) if scene.word and cell >= 6 else (0, 0, 0) for cell in range(9)]
    for s in scene.shapes:
        out[s.cell] = (1 + SHAPES.index(s.kind), 1 + list(COLORS).index(s.color), 1 + SIZES.index(s.size))
    return out


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + "s"


def caption(scene: Scene) -> str:
    groups: dict[tuple[str, str], int] = {}
    for s in scene.shapes:  # row-major order of first appearance
        groups[(s.color, s.kind)] = groups.get((s.color, s.kind), 0) + 1
    parts = [f"{article(color) if n == 1 else NUMBER_WORDS[n]} {color} {plural(kind, n)}"
             for (color, kind), n in groups.items()]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"{listed[0].upper()}{listed[1:]} on a {scene.background} background."
    if scene.word:
        text += f' The word "{scene.word}" is written at the bottom.'
    return text


COLUMNS = ("left", "middle", "right")  # a cell's column is cell % 3
ROWS = ("top", "middle", "bottom")  # a cell's row is cell // 3


def position_questions(scene: Scene) -> list[tuple[str, str]]:
    """Training-only position questions about every (colour, kind) pair that occurs exactly once: its cell,
    and its column and row on their own (a 3x3 position split into two 3-way choices a tiny model can
    learn separately). Pairs that occur more than once are skipped: their position would be ambiguous."""
    pairs = [(s.color, s.kind) for s in scene.shapes]
    qs: list[tuple[str, str]] = []
    for s in scene.shapes:
        if pairs.count((s.color, s.kind)) != 1:
            continue
        name = f"{s.color} {s.kind}"
        qs += [(f"Where is the {name}?", CELLS[s.cell]),
               (f"Is the {name} on the left, in the middle or on the right?", COLUMNS[s.cell % 3]),
               (f"Is the {name} at the top, in the middle or at the bottom?", ROWS[s.cell // 3])]
    return qs


def questions(scene: Scene, rng: np.random.Generator, extended: bool = False) -> list[tuple[str, str]]:
    """Every well-defined question about the scene of a few templates, shuffled.

    `extended` adds `position_questions` (for training; the held-out sets use the default). It draws
    nothing more from `rng`, only a longer final permutation, so `extended=False` gives exactly the
    questions and rng state it always has (the held-out sets and their CI accuracy floors depend on it).
    """
    qs: list[tuple[str, str]] = [("How many shapes are there?", str(len(scene.shapes))),
                                 ("What color is the background?", scene.background)]
    kinds = [s.kind for s in scene.shapes]
    colors = [s.color for s in scene.shapes]
    for kind in SHAPES:
        n = kinds.count(kind)
        qs.append((f"How many {kind}s are there?", str(n)))
        if n == 1:
            s = scene.shapes[kinds.index(kind)]
            qs += [(f"What color is the {kind}?", s.color), (f"Where is the {kind}?", CELLS[s.cell]),
                   (f"Is the {kind} large or small?", s.size)]
    for color in COLORS:
        if colors.count(color) == 1:
            qs.append((f"What shape is {color}?", kinds[colors.index(color)]))
    by_cell = {s.cell: s for s in scene.shapes}
    for cell in rng.permutation(9)[:3]:
        s = by_cell.get(int(cell))
        qs.append((f"What shape is at the {CELLS[cell]}?", s.kind if s else "none"))
    color, kind = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
    present = any(s.color == color and s.kind == kind for s in scene.shapes)
    if not present and rng.random() < 0.5 and scene.shapes:  # balance yes/no
        s = scene.shapes[rng.integers(len(scene.shapes))]
        color, kind, present = s.color, s.kind, True
    qs.append((f"Is there a {color} {kind}?", "yes" if present else "no"))
    qs.append(("What word is written in the image?", scene.word.lower() if scene.word else "none"))
    if extended:
        qs += position_questions(scene)
    return [qs[i] for i in rng.permutation(len(qs))]


@dataclass(frozen=True)
class Clip:
    size: tuple[int, int]  # (width, height)
    background: str
    kind: str
    color: str
    direction: str
    frames: int


def sample_clip(rng: np.random.Generator) -> Clip:
    return Clip((320, 240) if rng.random() < 0.5 else (256, 256), str(rng.choice(list(BACKGROUNDS))),
                str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(DIRECTIONS))),
                int(rng.integers(4, 9)))


def render_clip(clip: Clip) -> np.ndarray:
    """[frames, height, width, 3] uint8: the shape crosses from one side towards the other."""
    w, h = clip.size
    dx, dy = DIRECTIONS[clip.direction]
    r = min(w, h) * 0.15
    out = []
    for t in range(clip.frames):
        f = 0.15 + 0.7 * t / max(clip.frames - 1, 1)  # fraction of the way across
        cx = w * (f if dx > 0 else 1 - f) if dx else w / 2
        cy = h * (f if dy > 0 else 1 - f) if dy else h / 2
        img = Image.new("RGB", (w, h), BACKGROUNDS[clip.background])
        draw_shape(ImageDraw.Draw(img), clip.kind, clip.color, cx, cy, r)
        out.append(np.asarray(img))
    return np.stack(out)


def clip_caption(clip: Clip) -> str:
    who = f"{article(clip.color).capitalize()} {clip.color} {clip.kind}"
    return f"{who} moves {clip.direction} on a {clip.background} background."


def clip_questions(clip: Clip, rng: np.random.Generator) -> list[tuple[str, str]]:
    qs = [("Which direction does the shape move?", clip.direction), ("What shape is moving?", clip.kind),
          ("What color is the moving shape?", clip.color), ("What color is the background?", clip.background)]
    return [qs[i] for i in rng.permutation(len(qs))]
