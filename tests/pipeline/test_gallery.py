"""`jobs/caption.py --gallery N` -> `<output>/_gallery.html`, from tiny fake outputs (no Ray): the page parses,
shows N sampled rows (all rows when fewer) with their own captions or errors, JPEG thumbnails <= 128 px for
the rows without an error from each input kind (Parquet, media folder, WebDataset), escaped text; the flag
reaches JobConfig and does not change the resume fingerprint; a re-run with nothing left to do still writes the
page."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.caption import config_from_args, parser
from pipeline.gallery import write_gallery
from pipeline.job_config import JobConfig
from pipeline.schema import output_schema

SCRIPT = "<script>alert(1)</script> a cat"


class Cards(HTMLParser):
    """Each card: its id, its text (caption or error, with the finish reason) and its <img> srcs."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.cards: list[dict] = []
        self.field: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        cls = dict(attrs).get("class")
        if cls == "card":
            self.cards.append({"id": "", "text": "", "err": "", "imgs": []})
        elif self.cards and cls in ("id", "err"):
            self.field = cls
        elif self.cards and tag == "div" and cls is None:
            self.field = "text"
        elif tag == "img" and self.cards:
            self.cards[-1]["imgs"].append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self.field = None

    def handle_data(self, data):
        if self.field:
            self.cards[-1][self.field] += data


def image(seed: int, fmt: str = "PNG", size=(200, 300)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def fake_output(out: Path, ids: list[str], fmt: str) -> dict[str, dict]:
    """Two committed part files; row 1 is an error row, row 2's caption holds <script>."""
    rows = [{"id": i, "text": None if k == 1 else SCRIPT if k == 2 else f"caption of {i}",
             "finish_reason": "error" if k == 1 else "stop", "error": "decode_error: broken" if k == 1 else None,
             "num_prompt_tokens": 5, "num_generated_tokens": 3, "model": "m"} for k, i in enumerate(ids)]
    out.mkdir(parents=True)
    half = len(rows) // 2
    for n, chunk in enumerate((rows[:half], rows[half:])):
        path = out / f"part-{n:012d}-0000000{n}.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(chunk, schema=output_schema()), path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in chunk))
    return {r["id"]: r for r in rows}


def make_input(tmp_path: Path, kind: str) -> tuple[str, list[str]]:
    if kind == "parquet":
        ids = [f"r{i}" for i in range(6)]
        pq.write_table(pa.table({"key": ids, "img": [image(i) for i in range(6)]}), tmp_path / "in.parquet",
                       row_group_size=2)
        return str(tmp_path / "in.parquet"), ids
    if kind == "folder":
        ids = ["a.png", "b.jpg", "sub/c.png", "sub/d.jpg"]
        for k, i in enumerate(ids):
            (tmp_path / "media" / i).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "media" / i).write_bytes(image(k, "JPEG" if i.endswith(".jpg") else "PNG"))
        return str(tmp_path / "media"), ids
    ids = ["s0", "s1", "dir/s2", "s3"]
    (tmp_path / "shards").mkdir()
    for n, chunk in enumerate((ids[:2], ids[2:])):
        with tarfile.open(tmp_path / "shards" / f"{n:05d}.tar", "w") as tar:
            for k, key in enumerate(chunk):
                for name, data in ((f"{key}.txt", b"prompt"), (f"{key}.jpg", image(k, "JPEG"))):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(tmp_path / "shards"), ids


@pytest.mark.parametrize(("kind", "fmt"), [("parquet", "parquet"), ("folder", "jsonl"), ("webdataset", "parquet")])
def test_gallery_all_rows(tmp_path, kind, fmt):
    source, ids = make_input(tmp_path, kind)
    rows = fake_output(tmp_path / "out", ids, fmt)
    config = JobConfig(model="m", input=source, output=str(tmp_path / "out"), output_format=fmt, id_column="key",
                       image_column="img") if kind == "parquet" else \
        JobConfig(model="m", input=source, output=str(tmp_path / "out"), output_format=fmt)
    uri = write_gallery(config, 50)
    assert uri == str(tmp_path / "out" / "_gallery.html")
    # the output directory still reads as a dataset with the page in it
    assert pds.dataset(tmp_path / "out", format="json" if fmt == "jsonl" else fmt).count_rows() == len(ids)
    page = Cards(Path(uri).read_text(encoding="utf-8"))
    assert "script" not in page.tags
    assert sorted(c["id"] for c in page.cards) == sorted(ids)  # fewer rows than asked: all of them
    for card in page.cards:
        row = rows[card["id"]]
        if row["error"]:
            assert card["err"] == row["error"] and card["imgs"] == []
            continue
        assert card["text"] == row["text"]
        (src,) = card["imgs"]
        assert src.startswith("data:image/jpeg;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (85, 128)  # 200x300 source
    assert SCRIPT in [c["text"] for c in page.cards]


def test_gallery_samples_n_rows(tmp_path):
    source, ids = make_input(tmp_path, "parquet")
    rows = fake_output(tmp_path / "out", ids, "parquet")
    config = JobConfig(model="m", input=source, output=str(tmp_path / "out"), id_column="key", image_column="img")
    first = Cards(Path(write_gallery(config, 3)).read_text(encoding="utf-8")).cards
    assert len(first) == 3 and len({c["id"] for c in first}) == 3 and {c["id"] for c in first} <= set(rows)
    for card in first:
        assert card["text"] == (rows[card["id"]]["text"] or "") and card["err"] == (rows[card["id"]]["error"] or "")
    assert Cards(Path(write_gallery(config, 3)).read_text(encoding="utf-8")).cards == first  # seeded


def test_gallery_flag_and_fingerprint(tmp_path):
    p = parser()
    args = ["--model", "m", "--input", "in.parquet", "--output", str(tmp_path)]
    config = config_from_args(p.parse_args([*args, "--gallery", "7"]), p)
    assert config.gallery == 7
    assert config.fingerprint() == config_from_args(p.parse_args(args), p).fingerprint()
    assert JobConfig.from_dict({"model": "m", "input": "i", "output": "o", "gallery": 2}).gallery == 2
    with pytest.raises(ValueError, match="gallery"):
        JobConfig(model="m", input="i", output="o", gallery=-1)


def test_gallery_on_a_rerun_with_nothing_left_to_do(tmp_path, capsys):
    """Every input row already written: caption.py ends without Ray and still writes the page it was asked for."""
    from jobs.caption import main
    from pipeline.sink import JOB_FILE

    source, ids = make_input(tmp_path, "folder")
    fake_output(tmp_path / "out", ids, "parquet")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # preflight only looks for the file
    args = ["--model", str(tmp_path / "model"), "--input", source, "--output", str(tmp_path / "out")]
    config = config_from_args(parser().parse_args(args), parser())
    (tmp_path / "out" / JOB_FILE).write_text(json.dumps({"fingerprint": config.fingerprint()}))  # as the job left it
    assert main([*args, "--gallery", "3"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "_gallery.html" in out
    assert len(Cards((tmp_path / "out" / "_gallery.html").read_text(encoding="utf-8")).cards) == 3


def test_video_rows_get_their_first_frame_as_thumbnail(tmp_path):
    from pipeline.gallery import input_images
    from pipeline.thumbnails import thumbnail_uri

    clip = Path(__file__).resolve().parents[2] / "demo" / "media" / "clip_9frames.mp4"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clip.mp4").write_bytes(clip.read_bytes())
    config = JobConfig(model="m", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    found = input_images(config, {"clip.mp4"})
    uri = thumbnail_uri(found["clip.mp4"])
    frame = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    red = np.asarray(frame.convert("RGB")).reshape(-1, 3)
    assert ((red[:, 0] > 150) & (red[:, 1] < 90)).any()  # the demo clip's red circle
    assert thumbnail_uri(b"neither an image nor a video") is None
