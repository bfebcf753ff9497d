"""Training examples for the demo model: a scene, clip or easy-VQA image plus several question/answer turns,
as token ids, loss labels and uint8 media, exactly as the caption job would prompt the model.

Contract:
- Every turn is the prompt the job sends (`JobConfig`'s default caption prompt, or the eval tasks' short-answer
  template `"{question}\\n" + SHORT_ANSWER`) rendered by the checkpoint's chat template with the generation
  prompt, followed by the answer's tokens and `<|im_end|>`, as if it were the only turn: an example is one
  shared prefix (the prompt up to its last media placeholder, expanded to the processor's feature count) and
  then each turn's rest of the prompt + answer. `segments` says which is which (0: the prefix, k: turn k) and
  `positions` restart after the prefix for every turn, so a trainer that lets a turn attend only to the prefix
  and to itself (demo/turn_attention.py) computes for every turn exactly what single-turn inference computes: one
  vision pass trains many independent answers (`turns=1` is the caption job's sequence itself).
- `labels` is -100 everywhere except the answer tokens and their `<|im_end|>` (loss on assistant tokens only).
- Media are what `OneVisionCodec` hands the engine: anyres uint8 crops + the original size for an image,
  resized uint8 frames for a clip.
- `collate` also returns all of a batch's crops as one uint8 tensor (the media hold views of it), so a
  DataLoader's `pin_memory` pins them and they reach the GPU in one copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from demo import world
from demo.feature_index import feature_index
from demo.turn_attention import turn_index
from models.chat_template import ChatTemplate, user_turn
from models.onevision.config import OneVisionConfig
from models.onevision.image_processor import OneVisionImageProcessor
from models.onevision.model import OneVisionMedia
from models.onevision.processor import expand_media_tokens
from models.onevision.video_processor import OneVisionVideoProcessor
from models.tokenizer import Tokenizer
from pipeline.eval.tasks import SHORT_ANSWER
from pipeline.job_config import JobConfig

CAPTION_PROMPT = JobConfig.__dataclass_fields__["prompt"].default  # "Describe this image in detail."
IM_END = "<|im_end|>"
# the question templates the shipped model answers worst (held-out 16% and 59%); `hard_weight` favours them
HARD_QUESTIONS = ("Where is", "How many")
# world.position_questions' column/row templates are position supervision too, but they begin "Is the" like
# the size question ("Is the star large or small?"), so they are told apart by their middle
HARD_PARTS = (" on the left, in the middle or on the right?", " at the top, in the middle or at the bottom?")


def is_hard(question: str) -> bool:
    """Whether `hard_weight` applies to `question`: a `HARD_QUESTIONS` template or a column/row question."""
    return question.startswith(HARD_QUESTIONS) or question.endswith(HARD_PARTS)


def qa_prompt(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    media: OneVisionMedia
    kind: str  # "scene" | "clip" | "easy_vqa"
    segments: list[int]  # 0: the shared prefix (through the media), k >= 1: turn k
    positions: list[int]  # every turn continues the prefix's positions, as if it were the only turn
    cells: list[tuple[int, int, int]] | None = None  # a scene's world.cell_labels (demo/cell_head.py)


class ExampleMaker:
    """Builds `Example`s from the checkpoint's tokenizer, template and processors (one per DataLoader worker)."""

    def __init__(self, model_dir: str | Path, easy_vqa_dir: str | Path | None = None, hard_weight: float = 1.0,
                 extended_questions: bool = False, scene_turns: tuple[int, int] = (6, 12),
                 easy_turns: tuple[int, int] = (3, 6)):
        if not hard_weight > 0:
            raise ValueError(f"hard_weight must be > 0, got {hard_weight}")
        for name, (lo, hi) in (("scene_turns", scene_turns), ("easy_turns", easy_turns)):
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
        # turns per example, drawn uniformly from [lo, hi] (a scene's caption is one; fewer when the image
        # has fewer questions)
        self.scene_turns, self.easy_turns = tuple(scene_turns), tuple(easy_turns)
        self.hard_weight = hard_weight
        self.extended_questions = extended_questions  # world.questions(extended=...) for training scenes
        self.tok = Tokenizer.from_dir(model_dir)
        self.template = ChatTemplate.from_dir(model_dir)
        self.cfg = OneVisionConfig.from_dir(model_dir)
        self.images = OneVisionImageProcessor.from_dir(model_dir)
        self.videos = OneVisionVideoProcessor.from_dir(model_dir)
        self.im_end = self.tok.encode(IM_END)
        self.easy: list[tuple[Path, list[tuple[str, str]]]] = []
        if easy_vqa_dir is not None:  # questions grouped by image
            split = Path(easy_vqa_dir) / "train"
            grouped: dict[int, list[tuple[str, str]]] = {}
            for q, a, image_id in json.loads((split / "questions.json").read_text()):
                grouped.setdefault(image_id, []).append((q, a))
            self.easy = [(split / "images" / f"{i}.png", qs) for i, qs in sorted(grouped.items())]

    def prompt_ids(self, text: str, n_images: int = 0, n_videos: int = 0) -> list[int]:
        return self.tok.encode(self.template.render(user_turn(text, n_images, n_videos), add_generation_prompt=True))

    def first_prompt(self, text: str, image_tokens: list[int], video_tokens: list[int]) -> list[int]:
        """The single-turn prompt the caption job sends, media placeholders expanded."""
        p = self.prompt_ids(text, len(image_tokens), len(video_tokens))
        return expand_media_tokens(p, image_tokens, video_tokens, self.cfg.image_token_id, self.cfg.video_token_id)

    def build(self, turns: list[tuple[str, str]], media: OneVisionMedia, image_tokens: list[int],
              video_tokens: list[int], kind: str) -> Example:
        prompts = [self.first_prompt(prompt, image_tokens, video_tokens) for prompt, _ in turns]
        media_ids = (self.cfg.image_token_id, self.cfg.video_token_id)
        cut = max(i for i, t in enumerate(prompts[0]) if t in media_ids) + 1  # the prefix: through the media
        prefix = prompts[0][:cut]
        ids, labels, segments, positions = list(prefix), [-100] * cut, [0] * cut, list(range(cut))
        for k, (p, (_, answer)) in enumerate(zip(prompts, turns, strict=True), start=1):
            if p[:cut] != prefix:  # the media come before any text that differs between turns
                raise ValueError(f"turn {k}'s prompt does not share the media prefix")
            a = self.tok.encode(answer) + self.im_end
            ids += p[cut:] + a
            labels += [-100] * (len(p) - cut) + a
            segments += [k] * (len(p) - cut + len(a))
            positions += range(cut, len(p) + len(a))
        return Example(ids, labels, media, kind, segments, positions)

    def image_media(self, img: Image.Image) -> tuple[OneVisionMedia, list[int]]:
        out = self.images.preprocess(img, uint8=True)
        media = OneVisionMedia(images=[torch.from_numpy(out.pixel_values)], image_sizes=[tuple(out.image_size)])
        return media, [out.num_tokens]

    def scene(self, rng: np.random.Generator, turns: int) -> Example:
        scene = world.sample_scene(rng)
        media, n = self.image_media(world.render(scene))
        qs = world.questions(scene, rng, extended=self.extended_questions)
        if self.hard_weight != 1.0:  # 1.0 draws nothing more, so existing seeds give the same examples
            qs = self.weighted_order(qs, rng)
        qas = [(qa_prompt(q), a) for q, a in qs]
        chosen = qas[:turns - 1] + [(CAPTION_PROMPT, world.caption(scene))]
        example = self.build([chosen[i] for i in rng.permutation(len(chosen))], media, n, [], "scene")
        example.cells = world.cell_labels(scene)
        return example

    def weighted_order(self, qs: list[tuple[str, str]], rng: np.random.Generator) -> list[tuple[str, str]]:
        """`qs` reordered so that any prefix is a weighted sample without replacement, `is_hard` questions
        having weight `hard_weight` and the rest 1 (Efraimidis-Spirakis: sort by u ** (1 / w), largest first)."""
        w = np.array([self.hard_weight if is_hard(q) else 1.0 for q, _ in qs])
        keys = rng.random(len(qs)) ** (1.0 / w)
        return [qs[i] for i in np.argsort(-keys, kind="stable")]

    def clip(self, rng: np.random.Generator) -> Example:
        clip = world.sample_clip(rng)
        frames = self.videos.preprocess(world.render_clip(clip), uint8=True)
        media = OneVisionMedia(videos=[torch.from_numpy(frames)])
        qas = [(qa_prompt(q), a) for q, a in world.clip_questions(clip, rng)]
        qas.append((CAPTION_PROMPT, world.clip_caption(clip)))
        turns = [qas[i] for i in rng.permutation(len(qas))]
        return self.build(turns, media, [], [self.videos.num_tokens(len(frames))], "clip")

    def easy_vqa(self, rng: np.random.Generator, turns: int) -> Example:
        path, qs = self.easy[rng.integers(len(self.easy))]
        media, n = self.image_media(Image.open(path).convert("RGB"))
        picked = [qs[i] for i in rng.permutation(len(qs))[:turns]]
        return self.build([(qa_prompt(q), a) for q, a in picked], media, n, [], "easy_vqa")

    def sample(self, rng: np.random.Generator) -> Example:
        """The training mix: 70% scenes, 12% clips, 18% easy-VQA (scenes only without its data)."""
        u = rng.random()
        if u < 0.12:
            return self.clip(rng)
        if u < 0.30 and self.easy:
            return self.easy_vqa(rng, int(rng.integers(self.easy_turns[0], self.easy_turns[1] + 1)))
        return self.scene(rng, int(rng.integers(self.scene_turns[0], self.scene_turns[1] + 1)))


def distinct_crops(crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `torch.cat(crops)` worth encoding, and for every row the index of its copy among them.

    A square image's anyres grid is one tile, and that tile is the base crop resized the same way: the same
    pixels (a quarter of a training batch's crops), so SigLIP need not see them twice. Only crops of one
    media tensor are compared (different images never share a crop in practice)."""
    unique: list[int] = []
    source: list[int] = []
    start = 0
    for x in crops:
        seen: dict[bytes, int] = {}
        for j in range(x.shape[0]):
            key = x[j].numpy().tobytes()
            if key not in seen:
                seen[key] = len(unique)
                unique.append(start + j)
            source.append(seen[key])
        start += x.shape[0]
    return torch.tensor(unique, dtype=torch.long), torch.tensor(source, dtype=torch.long)


def collate(examples: list[Example], pad_id: int, cfg: OneVisionConfig | None = None) -> dict:
    """Right-padded ids/labels/segments/positions [B, S] and the media list (padding is never attended by real
    tokens: causal).

    `pixels`: every crop of the batch in one uint8 tensor [N, 3, S, S], in the order `media_features`
    consumes them (per example its images, then its videos); `pixel_splits`: the crops of each of those media
    tensors (one per example in training). The returned media hold views of `pixels`: a DataLoader worker
    ships one shared storage, and `pin_memory` (which cannot see inside `OneVisionMedia`) pins `pixels`,
    so the trainer makes one host-to-device copy per batch instead of a pageable one per image.
    `unique_crops` / `crop_source`: `distinct_crops(...)`, so the trainer encodes each distinct crop once.
    With the checkpoint's `cfg`, also `feature_index` / `video_frames` (demo/feature_index.py): where each
    media token's feature comes from, so the trainer gathers them in one op instead of packing per example.
    `cell_labels` [B, 9, 3] (`Example.cells`, -1 for examples without) and `base_crop` [B] (each example's
    first crop among the distinct ones) feed the training-only demo/cell_head.py.
    """
    crops = [x for e in examples for x in (*e.media.images, *e.media.videos)]
    splits = [x.shape[0] for x in crops]
    pixels = torch.cat(crops) if crops else torch.empty(0, dtype=torch.uint8)
    unique_crops, crop_source = distinct_crops(crops)
    views = iter(pixels.split(splits))
    media = [OneVisionMedia(images=[next(views) for _ in e.media.images], image_sizes=list(e.media.image_sizes),
                            videos=[next(views) for _ in e.media.videos]) for e in examples]
    # a multiple of 16: the trainer's additive [B, 1, S, S] mask then meets the memory-efficient SDPA kernel's
    # alignment as it is, instead of being padded again in every layer (coarser buckets, for fewer distinct
    # GEMM shapes, made no step faster on an H200: BENCHMARKS.md, session 9)
    length = -(-max(len(e.ids) for e in examples) // 16) * 16
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    segments = torch.full((len(examples), length), -1, dtype=torch.long)  # padding: a segment of its own
    positions = torch.zeros((len(examples), length), dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        labels[b, : len(e.labels)] = torch.tensor(e.labels)
        segments[b, : len(e.ids)] = torch.tensor(e.segments)
        positions[b, : len(e.ids)] = torch.tensor(e.positions)
    cell_labels = torch.tensor([e.cells or [(-1, -1, -1)] * 9 for e in examples], dtype=torch.long)
    counts = [sum(x.shape[0] for x in (*e.media.images, *e.media.videos)) for e in examples]
    starts = (torch.tensor([0, *counts]).cumsum(0)[:-1]).clamp(max=max(len(crop_source) - 1, 0))  # first crops
    base_crop = crop_source[starts] if len(crop_source) else torch.zeros(len(examples), dtype=torch.long)
    # where the loss is, worked out here so the trainer needs no host sync to find it: rows of the flattened
    # [B * (S - 1)] positions whose next token is an answer token, and those tokens
    target = labels[:, 1:]
    answer_at = (target != -100).flatten().nonzero().squeeze(1)
    return {"ids": ids, "labels": labels, "segments": segments, "positions": positions, "media": media,
            "pixels": pixels, "pixel_splits": splits, "unique_crops": unique_crops, "crop_source": crop_source,
            "kinds": [e.kind for e in examples], "cell_labels": cell_labels, "base_crop": base_crop,
            "answer_at": answer_at, "answer_tokens": target.flatten()[answer_at], **turn_index(segments),
            **(feature_index(media, crop_source, cfg) if cfg is not None else {})}

