"""The demo model's held-out question set: scenes from a seed stream the trainer never samples, as the Parquet
rows `jobs/caption.py` reads, and the exact-match score of the job's output.

    python -m demo.heldout write /tmp/heldout.parquet --scenes 100       # 5 questions per scene
    python jobs/caption.py --input /tmp/heldout.parquet --prompt-column prompt --keep-columns answer kind \
        shapes --max-new-tokens 16 --output /tmp/heldout_out
    python -m demo.heldout score /tmp/heldout_out

Training streams are seeded `[seed + resumed steps, worker]` (scripts/train_demo_model.py); these scenes come
from `default_rng([HELD_OUT_SEED, 1])`, a different stream from the trainer's own end-of-run check
(`default_rng(HELD_OUT_SEED)`), so neither overlaps the training data. A question's `kind` is its template
(its first two words, "Where is", "How many", ...); the prompt is the eval tasks' short-answer template;
`shapes` is how many shapes its scene has (binding errors grow with them: `score` reports both breakdowns).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from demo import world
from demo.examples import qa_prompt

HELD_OUT_SEED = 10**9  # training streams are seeded [seed, worker] with small seeds; held-out scenes come from here


def heldout_table(scenes: int, per_scene: int = 5) -> pa.Table:
    """`scenes * per_scene` rows: id, image (PNG bytes), prompt, answer, kind, shapes (in the scene)."""
    rng = np.random.default_rng([HELD_OUT_SEED, 1])
    rows: dict[str, list] = {"id": [], "image": [], "prompt": [], "answer": [], "kind": [], "shapes": []}
    for s in range(scenes):
        scene = world.sample_scene(rng)
        buf = io.BytesIO()
        world.render(scene).save(buf, format="PNG")
        for k, (question, answer) in enumerate(world.questions(scene, rng)[:per_scene]):
            rows["id"].append(f"s{s:04d}q{k}")
            rows["image"].append(buf.getvalue())
            rows["prompt"].append(qa_prompt(question))
            rows["answer"].append(answer)
            rows["kind"].append(" ".join(question.split()[:2]))
            rows["shapes"].append(len(scene.shapes))
    return pa.table(rows)


def score(output_dir: str | Path) -> dict:
    """Exact match of the job's `text` against `answer`, overall, per kind and (for rows whose `shapes` column
    the job kept) per number of shapes in the scene; error rows count as wrong."""
    dataset = pds.dataset(str(output_dir), format="parquet")
    columns = ["text", "answer", "kind"] + (["shapes"] if "shapes" in dataset.schema.names else [])
    table = dataset.to_table(columns=columns)
    shapes = table.column("shapes").to_pylist() if "shapes" in columns else [None] * table.num_rows
    by_kind: dict[str, list[int]] = {}
    by_shapes: dict[int, list[int]] = {}
    for text, answer, kind, n in zip(*(table.column(c).to_pylist() for c in ("text", "answer", "kind")), shapes,
                                     strict=True):
        hit = int((text or "").strip() == answer)
        by_kind.setdefault(kind, []).append(hit)
        if n is not None:
            by_shapes.setdefault(n, []).append(hit)
    hits = [h for v in by_kind.values() for h in v]
    out = {"n": len(hits), "exact_match": sum(hits) / max(len(hits), 1),
           "by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())}}
    if by_shapes:
        out["by_shapes"] = {n: round(sum(v) / len(v), 4) for n, v in sorted(by_shapes.items())}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the held-out rows as Parquet")
    w.add_argument("path", type=Path)
    w.add_argument("--scenes", type=int, default=100)
    w.add_argument("--per-scene", type=int, default=5)
    s = sub.add_parser("score", help="exact match of a caption job's output")
    s.add_argument("output_dir")
    args = ap.parse_args(argv)
    if args.cmd == "write":
        pq.write_table(heldout_table(args.scenes, args.per_scene), args.path)
    else:
        print(json.dumps(score(args.output_dir), indent=2))


if __name__ == "__main__":
    main()
