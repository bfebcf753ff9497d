"""demo/examples.py: a training example's first turn is exactly the prompt the caption job sends, and the
loss sees only the answers; hard question templates can be favoured; collate's one pixel tensor feeds the
trainer exactly as the per-example media would."""

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
import torch

from demo import world
from demo.examples import CAPTION_PROMPT, HARD_QUESTIONS, ExampleMaker, collate, is_hard, qa_prompt
from demo.turn_attention import TURN_ATTENTION
from models.onevision.config import OneVisionConfig
from models.onevision.model import LlavaOnevisionForConditionalGeneration
from models.random_weights import random_init
from pipeline.job_config import JobConfig
from pipeline.onevision_codec import OneVisionCodec

PATCH = "vision_tower.vision_model.embeddings.patch_embedding.weight"


def test_first_turn_is_the_caption_jobs_prompt(model_dir):
    maker = ExampleMaker(model_dir)
    scene = world.sample_scene(np.random.default_rng(3))
    buf = io.BytesIO()
    world.render(scene).save(buf, format="PNG")
    for prompt in (CAPTION_PROMPT, qa_prompt("How many shapes are there?")):
        codec = OneVisionCodec(model_dir, JobConfig(model=str(model_dir), input="-", output="-", prompt=prompt))
        want, _ = codec.prepare({"image": buf.getvalue()})
        media, n = maker.image_media(world.render(scene))
        assert maker.first_prompt(prompt, n, []) == want


def test_labels_cover_only_the_answers(model_dir):
    maker = ExampleMaker(model_dir)
    ex = maker.scene(np.random.default_rng(0), turns=4)
    answered = [t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != -100]
    assert [lab for lab in ex.labels if lab != -100] == answered
    assert answered.count(maker.im_end[0]) == 4  # four answers, each closed by <|im_end|>
    assert "background." in maker.tok.decode(answered)  # one of them the caption
    assert sum(t == maker.cfg.image_token_id for t in ex.ids) == ex.media.token_counts(maker.cfg)[0]
    clip = maker.clip(np.random.default_rng(1))
    assert sum(t == maker.cfg.video_token_id for t in clip.ids) == clip.media.token_counts(maker.cfg)[1]
    batch = collate([ex, clip], pad_id=0)
    length = max(len(ex.ids), len(clip.ids))
    assert batch["ids"].shape == batch["labels"].shape == (2, length + (-length) % 16)
    assert int((batch["labels"] != -100).sum()) == len(answered) + sum(lab != -100 for lab in clip.labels)
    assert batch["media"][1].videos[0].dtype == torch.uint8


@pytest.mark.parametrize("kind", sorted(TURN_ATTENTION))
def test_every_turn_is_the_caption_jobs_sequence(train_demo_script, tiny_dir, kind):
    """One example of four turns: cut out with the media prefix, each turn is exactly the single-turn prompt
    + answer at the same positions, and under either turn attention its answer tokens get the logits they get
    alone (a mask letting turns see each other would not). Two packed examples in one batch: the split
    attention's [B, Tmax] slots are then partly empty in one row."""
    maker = ExampleMaker(tiny_dir)
    rng = np.random.default_rng(5)
    scene = world.sample_scene(rng)
    media, n = maker.image_media(world.render(scene))
    turns = [(qa_prompt(q), a) for q, a in world.questions(scene, rng)[:3]] + [(CAPTION_PROMPT, world.caption(scene))]
    packed = maker.build(turns, media, n, [], "scene")
    singles = [maker.build([t], media, n, [], "scene") for t in turns]
    for k, (single, (prompt, answer)) in enumerate(zip(singles, turns, strict=True), start=1):
        assert single.ids == maker.first_prompt(prompt, n, []) + maker.tok.encode(answer) + maker.im_end
        assert single.positions == list(range(len(single.ids)))
        cut = [i for i, s in enumerate(packed.segments) if s in (0, k)]
        assert [packed.ids[i] for i in cut] == single.ids and [packed.positions[i] for i in cut] == single.positions
        assert [packed.labels[i] for i in cut] == single.labels

    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(tiny_dir))
    model.language_model.reset_buffers()
    random_init(model, 0, fuse=False)
    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])

    short = maker.build(turns[1:3], media, n, [], "scene")  # a second, shorter row: padding and empty slots

    def logits(examples, leak=False):
        if leak:  # one segment for all turns: every turn sees the ones before it
            examples = [dataclasses.replace(e, segments=[min(x, 1) for x in e.segments]) for e in examples]
        batch = collate(examples, pad_id=0)
        return train_demo_script.answer_logits(model, batch, torch.device("cpu"), mean, std, TURN_ATTENTION[kind])[0]

    with torch.no_grad():
        want = torch.cat([logits([s]) for s in (*singles, singles[1], singles[2])])  # in packed order
        got, leaky = logits([packed, short]), logits([packed, short], leak=True)
    assert got.shape == want.shape
    err, leak = (got - want).abs().max(), (leaky - want).abs().max()
    assert err < 1e-5 and leak > 100 * err, (err, leak)


def test_split_turn_attention_trains_like_the_masked_one(train_demo_script, tiny_dir):
    """The same loss and gradients from both turn attentions on a mixed batch (scenes, a clip, easy turns)."""
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(tiny_dir))
    model.language_model.reset_buffers()
    random_init(model, 0, fuse=False)
    maker = ExampleMaker(tiny_dir, scene_turns=(6, 10))
    rng = np.random.default_rng(1)
    batch = collate([maker.sample(rng) for _ in range(3)] + [maker.clip(rng)], pad_id=0)
    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])
    results = {}
    for kind, cls in TURN_ATTENTION.items():
        model.zero_grad()
        loss = train_demo_script.loss_of(model, batch, torch.device("cpu"), mean, std, cls)
        loss.backward()
        results[kind] = loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(results["masked"][0], results["split"][0], rtol=1e-6)
    assert torch.allclose(results["masked"][1], results["split"][1], rtol=1e-4, atol=1e-4)


def test_hard_weight_one_keeps_the_examples_and_three_favours_the_weak_questions(model_dir):
    maker = ExampleMaker(model_dir, hard_weight=1.0)
    for seed in range(3):  # the pre-weighting recipe, spelled out: the first turns-1 shuffled questions
        rng = np.random.default_rng(seed)
        scene = world.sample_scene(rng)
        media, n = maker.image_media(world.render(scene))
        qas = [(qa_prompt(q), a) for q, a in world.questions(scene, rng)][:5] + [(CAPTION_PROMPT, world.caption(scene))]
        want = maker.build([qas[i] for i in rng.permutation(len(qas))], media, n, [], "scene")
        assert maker.scene(np.random.default_rng(seed), turns=6).ids == want.ids

    heavy = ExampleMaker(model_dir, hard_weight=3.0)
    rng = np.random.default_rng(0)
    picked = {1.0: 0, 3.0: 0}
    for _ in range(300):
        qs = world.questions(world.sample_scene(rng), rng)
        order = heavy.weighted_order(qs, rng)
        assert sorted(order) == sorted(qs)  # a reordering: nothing lost or repeated
        picked[1.0] += sum(q.startswith(HARD_QUESTIONS) for q, _ in qs[:5])
        picked[3.0] += sum(q.startswith(HARD_QUESTIONS) for q, _ in order[:5])
    assert picked[3.0] > 1.3 * picked[1.0], picked
    with pytest.raises(ValueError):
        ExampleMaker(model_dir, hard_weight=0.0)


def test_collate_concatenates_the_crops_in_feature_order(model_dir):
    maker = ExampleMaker(model_dir)
    exs = [maker.scene(np.random.default_rng(0), turns=3), maker.clip(np.random.default_rng(1)),
           maker.scene(np.random.default_rng(1), turns=3)]  # 448x336 (base + 2 tiles), a clip, 384x384
    batch = collate(exs, pad_id=0)
    crops = [x for e in exs for x in (*e.media.images, *e.media.videos)]
    assert batch["pixels"].dtype == torch.uint8
    assert torch.equal(batch["pixels"], torch.cat(crops))
    assert batch["pixel_splits"] == [x.shape[0] for x in crops]
    storage = batch["pixels"].untyped_storage().data_ptr()
    for m, e in zip(batch["media"], exs, strict=True):  # views of `pixels`, same values and sizes
        assert m.image_sizes == e.media.image_sizes
        for got, want in zip((*m.images, *m.videos), (*e.media.images, *e.media.videos), strict=True):
            assert torch.equal(got, want) and got.untyped_storage().data_ptr() == storage
    # a square scene's one tile is its base crop again: encoded once; a clip's frames all differ
    unique, source = batch["unique_crops"], batch["crop_source"]
    assert torch.equal(batch["pixels"][unique][source], batch["pixels"])
    square = [x for x in crops if x.shape[0] == 2]
    assert square and all(torch.equal(x[0], x[1]) for x in square)
    assert len(unique) == batch["pixels"].shape[0] - len(square)


@pytest.fixture(scope="module")
def tiny_dir(model_dir, tmp_path_factory):
    """demo/model's metadata with a one-layer, 32-wide model (CPU-fast; same crops, tokens and processors)."""
    d = tmp_path_factory.mktemp("tiny_meta")
    shutil.copytree(model_dir, d, dirs_exist_ok=True)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["text_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, max_window_layers=1,
                              num_attention_heads=2, num_key_value_heads=1)
    cfg["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def tiny_model_and_batch(tiny_dir, turns: int):
    """A random tiny model, a scene + clip batch as the trainer's Stream collates it, and the pixel mean/std."""
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(tiny_dir))
    model.language_model.reset_buffers()
    random_init(model, 0, fuse=False)
    maker = ExampleMaker(tiny_dir)
    batch = collate([maker.scene(np.random.default_rng(1), turns=turns), maker.clip(np.random.default_rng(1))],
                    pad_id=0, cfg=maker.cfg)  # with feature_index: the features in one gather
    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    return model, batch, tuple(pre["image_mean"]), tuple(pre["image_std"])


def test_the_trainers_one_copy_path_gives_the_same_loss(train_demo_script, tiny_dir):
    """scripts/train_demo_model.py: a batch's features from collate's one `pixels` tensor (one normalisation,
    one SigLIP call over the distinct crops, one gather) give exactly the loss and gradients of
    `model.media_features` on the per-example media."""
    model, batch, mean, std = tiny_model_and_batch(tiny_dir, turns=3)
    per_media = {k: v for k, v in batch.items() if k not in
                 ("pixels", "pixel_splits", "unique_crops", "crop_source", "feature_index", "video_frames")}
    assert len(batch["unique_crops"]) < len(batch["crop_source"])  # the scene's tile was not encoded again
    results = []
    for b in (batch, per_media):
        model.zero_grad()
        loss = train_demo_script.loss_of(model, b, torch.device("cpu"), mean, std)
        loss.backward()
        results.append((loss.detach(), model.get_parameter(PATCH).grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    # the shared crop's two gradients are summed before the tower's backward instead of after: same up to
    # float summation order
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-8)


def test_resume_from_a_finished_checkpoint_continues_its_schedule(train_demo_script, tiny_dir, tmp_path):
    """demo/model has no progress.json: `--resume` takes the steps and seconds of its training.json."""
    model = LlavaOnevisionForConditionalGeneration(OneVisionConfig.from_dir(tiny_dir))
    model.language_model.reset_buffers()
    train_demo_script.save(model, tmp_path, None, {})
    (tmp_path / "training.json").write_text(json.dumps({"steps": 7189, "train_seconds": 901, "batch": 48}))
    assert train_demo_script.load_weights(model, tmp_path) == {"steps": 7189, "elapsed_s": 901.0}
    (tmp_path / "progress.json").write_text(json.dumps({"steps": 9000, "elapsed_s": 1351.5}))
    assert train_demo_script.load_weights(model, tmp_path) == {"steps": 9000, "elapsed_s": 1351.5}  # parts win


def test_extended_questions_are_hard_and_reach_training_scenes(model_dir, train_demo_script):
    assert is_hard("Where is the red circle?") and is_hard("How many stars are there?")
    assert is_hard("Is the red circle on the left, in the middle or on the right?")
    assert is_hard("Is the red circle at the top, in the middle or at the bottom?")
    assert not is_hard("Is the star large or small?") and not is_hard("Is there a red circle?")
    maker = ExampleMaker(model_dir, extended_questions=True)
    asked = ""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        scene = world.sample_scene(rng)
        # the maker's recipe with extended questions, spelled out (hard_weight 1 draws nothing more)
        qas = [(qa_prompt(q), a) for q, a in world.questions(scene, rng, extended=True)][:5]
        qas.append((CAPTION_PROMPT, world.caption(scene)))
        media, n = maker.image_media(world.render(scene))
        want = maker.build([qas[i] for i in rng.permutation(len(qas))], media, n, [], "scene")
        ex = maker.scene(np.random.default_rng(seed), turns=6)
        assert ex.ids == want.ids
        asked += maker.tok.decode(ex.ids)
    assert "on the left, in the middle or on the right?" in asked
    stream = train_demo_script.Stream(model_dir, None, batch=2, seed=0, hard_weight=3.0, extended_questions=True)
    assert ExampleMaker(*stream.args).extended_questions and ExampleMaker(*stream.args).hard_weight == 3.0
    assert train_demo_script.Stream(model_dir, None, batch=2, seed=0).args[2:4] == (1.0, False)  # default: as before


def test_the_cell_loss_adds_to_the_answer_loss(train_demo_script, tiny_dir):
    """`loss_of(..., cells, w)` = the answer loss + w x the training-only head's loss on the same batch's
    distinct crops, and its gradient reaches the vision tower."""
    from demo.cell_head import CellHead

    model, batch, mean, std = tiny_model_and_batch(tiny_dir, turns=2)
    cpu = torch.device("cpu")
    cells = CellHead(model.cfg.text.hidden_size, model.cfg.vision.side)
    parts: dict = {}
    total = train_demo_script.loss_of(model, batch, cpu, mean, std, cells=cells, cell_weight=0.5, parts=parts)
    answers = train_demo_script.loss_of(model, batch, cpu, mean, std)
    torch.testing.assert_close(parts["answers"], answers.detach())
    assert parts["cells"] > 0
    torch.testing.assert_close(total.detach(), answers.detach() + 0.5 * parts["cells"])
    (total - answers).backward()  # the cell term alone
    assert model.get_parameter(PATCH).grad.abs().sum() > 0
