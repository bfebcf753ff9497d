"""Convert the easy-VQA dataset (the `easy-vqa` PyPI package's data: 64x64 shape images, one-word answers;
not written by us) to the Parquet layout of the built-in `easy_vqa` task: id, image (PNG bytes), question,
answer. A script, not a runtime dependency:

    pip install easy-vqa && python -m pipeline.eval.easy_vqa easy_vqa_test.parquet [--split test] [--limit N]
    python -m pipeline.eval.easy_vqa out.parquet --data-dir /path/to/easy_vqa/data    # without the package

Ids are "<split>-<question number>"; each question row carries its image's bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def package_data_dir() -> Path:
    import easy_vqa  # the package only ships data files; it is found, not executed for anything else

    return Path(easy_vqa.__file__).resolve().parent / "data"


def convert(data_dir: Path, split: str, out: Path, limit: int | None = None) -> int:
    """Write `out`; returns the number of rows."""
    questions = json.loads((data_dir / split / "questions.json").read_text())
    if limit is not None:
        questions = questions[:limit]
    images: dict[int, bytes] = {}
    rows = {"id": [], "image": [], "question": [], "answer": []}
    for i, (text, answer, image_id) in enumerate(questions):
        if image_id not in images:
            images[image_id] = (data_dir / split / "images" / f"{image_id}.png").read_bytes()
        rows["id"].append(f"{split}-{i}")
        rows["image"].append(images[image_id])
        rows["question"].append(text)
        rows["answer"].append(answer)
    table = pa.table({"id": pa.array(rows["id"], pa.string()), "image": pa.array(rows["image"], pa.binary()),
                      "question": pa.array(rows["question"], pa.string()),
                      "answer": pa.array(rows["answer"], pa.string())})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return table.num_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.eval.easy_vqa", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="Parquet file to write")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--data-dir", type=Path, help="the package's data/ directory (default: the installed package's)")
    args = p.parse_args(argv)
    try:
        data_dir = args.data_dir or package_data_dir()
    except ImportError:
        print("easy_vqa: the easy-vqa package is not installed; pip install easy-vqa or pass --data-dir",
              file=sys.stderr)
        return 2
    n = convert(data_dir, args.split, args.out, args.limit)
    print(f"wrote {n} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
