"""The Ray Data pipeline end to end on a local Ray (CPU, tiny checkpoints): Parquet in -> Parquet out.

- both models: one output row per input row, ids exactly once, texts equal to what the engine gives on
  the same prepared inputs directly;
- a bad-input corpus of 16 kinds mixed with good rows (one of them kills the decoding process), run
  through `jobs/caption.py`'s `main`: every bad row is an error row with its typed reason, every good row
  is captioned, exit status 0, the summary counts them per kind;
- a GPU-stage actor that dies (`os._exit`) mid-job: the job completes, every id exactly once;
- WebDataset shards, and the `CaptionProcessor` API on a Dataset the caller built (kept columns).
Every job runs under a watchdog: a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from jobs.caption import main as caption_main
from pipeline import builder
from pipeline.builder import CaptionProcessor
from pipeline.job_config import JobConfig

DEMO_MEDIA = Path(__file__).resolve().parents[2] / "demo" / "media"


pytestmark = pytest.mark.usefixtures("local_ray")


def jpeg(h: int, w: int, seed: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_16bit(h: int, w: int) -> bytes:
    img = Image.fromarray((np.arange(h * w, dtype=np.uint16).reshape(h, w) * 97).astype(np.uint16))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header declares side x side pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def audio_only(path: Path) -> bytes:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = np.zeros((1, 1024), dtype=np.float32)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path.read_bytes()


def faststart_mp4(data: bytes, path: Path) -> bytes:
    """The same clip remuxed with its index (moov) first: a truncated copy then still opens and decodes
    its first frames without any error, the silent-partial case of RELIABILITY.md."""
    import av

    with av.open(io.BytesIO(data)) as src, av.open(str(path), "w", format="mp4",
                                                    options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path.read_bytes()


def write_parquet(path: Path, rows: list[dict]) -> str:
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("video", pa.binary()),
                        ("question", pa.string())])
    full = [{k: r.get(k) for k in schema.names} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return str(path)


def read_output(uri: str) -> dict[str, dict]:
    rows = pds.dataset(uri, format="parquet").to_table().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


def job(model: Path, input_uri: str, output: Path, **kw) -> JobConfig:
    base = dict(model=str(model), input=input_uri, output=str(output), max_new_tokens=6, max_model_len=2048,
                max_num_seqs=8, batch_size=4, preprocess_actors=(1, 1), progress_interval_s=1.0, num_frames=4)
    return JobConfig(**{**base, **kw})


def test_mllama_parquet_to_parquet_equals_engine(tiny_mllama_dir, tmp_path, watched, engine_texts):
    rows = [{"id": f"m{i}", "image": jpeg(20 + 13 * i, 90 - 5 * i, seed=i)} for i in range(10)]
    config = job(tiny_mllama_dir, write_parquet(tmp_path / "in.parquet", rows), tmp_path / "out")
    summary = watched(builder.run_job, config)
    out = read_output(config.output)
    assert set(out) == {r["id"] for r in rows} and summary["rows_written"] == len(rows)
    want = engine_texts(config, rows)
    for r in rows:
        got = out[r["id"]]
        assert got["error"] is None and got["finish_reason"] in ("stop", "length")
        assert got["text"] == want[r["id"]], r["id"]
        assert got["model"] == tiny_mllama_dir.name and got["num_prompt_tokens"] > 0


def test_onevision_images_and_videos_equal_engine(tiny_ov_dir, tmp_path, watched, engine_texts):
    rows = [{"id": f"i{i}", "image": jpeg(30 + 40 * i, 200 - 25 * i, seed=10 + i)} for i in range(6)]
    rows += [{"id": f"v{i}", "video": p.read_bytes()} for i, p in enumerate(sorted(DEMO_MEDIA.glob("*.mp4")))]
    config = job(tiny_ov_dir, write_parquet(tmp_path / "in.parquet", rows), tmp_path / "out")
    watched(builder.run_job, config)
    out = read_output(config.output)
    assert set(out) == {r["id"] for r in rows}
    want = engine_texts(config, rows)
    for r in rows:
        assert out[r["id"]]["error"] is None, out[r["id"]]["error"]
        assert out[r["id"]]["text"] == want[r["id"]], r["id"]
    video_tokens = [out[r["id"]]["num_prompt_tokens"] for r in rows if r["id"].startswith("v")]
    assert len(video_tokens) == 2 and all(n > 4 * 16 for n in video_tokens)  # 4 frames of 16 pooled tokens


def test_bad_input_corpus(tiny_ov_dir, tmp_path, capsys, watched):
    good_jpeg = jpeg(60, 80, seed=1)
    html = tmp_path / "page.jpg"
    html.write_text("<!doctype html><html><body>404 not found</body></html>")
    video = (DEMO_MEDIA / "clip_9frames.mp4").read_bytes()
    faststart = faststart_mp4((DEMO_MEDIA / "clip_16frames.mp4").read_bytes(), tmp_path / "faststart.mp4")
    q = "Describe this."
    rows = [
        # good rows, including the odd-but-valid images
        {"id": "good_jpeg", "image": good_jpeg}, {"id": "good_video", "video": video},
        {"id": "one_pixel", "image": jpeg(1, 1, seed=2, fmt="PNG")}, {"id": "png16", "image": png_16bit(40, 50)},
        {"id": "cmyk", "image": jpeg(50, 40, seed=3, mode="CMYK")}, {"id": "good_2", "image": jpeg(33, 70, seed=4)},
        # bad rows -> (expected error kind)
        {"id": "truncated_jpeg", "image": good_jpeg[: len(good_jpeg) // 2]},
        {"id": "random_bytes", "image": np.random.default_rng(0).bytes(3000)},
        {"id": "zero_bytes", "image": b""},
        {"id": "bomb", "image": png_bomb()},
        {"id": "truncated_mp4", "video": video[: len(video) // 3]},  # index at the end: cannot open
        {"id": "truncated_faststart_mp4", "video": faststart[: len(faststart) // 2]},  # opens, decodes partly
        {"id": "audio_only", "video": audio_only(tmp_path / "audio.mp4")},
        {"id": "null_cell"},
        {"id": "long_prompt", "image": good_jpeg, "question": "word " * 9000},
        {"id": "empty_prompt", "image": good_jpeg, "question": "   "},
        {"id": "poison", "image": good_jpeg},  # its decode kills the decoding process (fault injection)
    ]
    rows += [{"id": "html_as_jpg", "image": html}, {"id": "missing_path", "image": tmp_path / "nope.jpg"},
             {"id": "http_url_off", "image": "http://127.0.0.1:9/x.jpg"}]
    # Here the image column holds paths (videos stay bytes): every image is written to a file first.
    for r in rows:
        r.setdefault("question", q)
        if isinstance(r.get("image"), bytes):
            (tmp_path / f"{r['id']}.img").write_bytes(r["image"])
            r["image"] = tmp_path / f"{r['id']}.img"
        if r.get("image") is not None:
            r["image"] = str(r["image"])
    (tmp_path / "in").mkdir()
    schema = pa.schema([("id", pa.string()), ("image", pa.string()), ("video", pa.binary()), ("question", pa.string())])
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema),
                   tmp_path / "in" / "corpus.parquet")
    config = job(tiny_ov_dir, str(tmp_path / "in"), tmp_path / "out", prompt=None, prompt_column="question",
                 keep_columns=("question",), fault_injection={"decode_exit_on_id": "poison"})
    yaml_path = tmp_path / "job.yaml"
    yaml_path.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                     for k, v in config.__dict__.items()}))  # JSON is YAML
    assert watched(caption_main, ["--config", str(yaml_path)]) == 0  # the job as the CLI runs it: exit 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = read_output(config.output)
    expected = {"truncated_jpeg": "decode_error", "random_bytes": "decode_error", "zero_bytes": "decode_error",
                "bomb": "too_large", "truncated_mp4": "decode_error", "truncated_faststart_mp4": "video_error",
                "audio_only": "video_error",
                "null_cell": "missing_media", "long_prompt": "too_long", "empty_prompt": "prompt_error",
                "poison": "decode_crash", "html_as_jpg": "decode_error", "missing_path": "missing_media",
                "http_url_off": "fetch_error"}
    assert set(out) == {r["id"] for r in rows} and len(out) == summary["rows_written"]
    for rid, kind in expected.items():
        row = out[rid]
        assert row["finish_reason"] == "error" and row["text"] is None, rid
        assert row["error"].split(":")[0] == kind, (rid, row["error"])
        assert row["num_generated_tokens"] == 0
    assert "partial video" in out["truncated_faststart_mp4"]["error"]
    good = [r["id"] for r in rows if r["id"] not in expected]
    for rid in good:
        assert out[rid]["error"] is None and out[rid]["finish_reason"] in ("stop", "length"), (rid, out[rid]["error"])
        assert out[rid]["text"] is not None and out[rid]["num_generated_tokens"] > 0
    assert all(out[r["id"]]["question"] == r["question"] for r in rows)  # a kept column that is also the prompt
    assert summary["finish_reasons"]["error"] == len(expected)
    assert summary["finish_reasons"].get("stop", 0) + summary["finish_reasons"].get("length", 0) == len(good)
    assert summary["error_types"] == dict(Counter(expected.values()))


def test_gpu_actor_killed_mid_job_every_id_once(tiny_mllama_dir, tmp_path, watched):
    rows = [{"id": f"k{i}", "image": jpeg(30 + i, 40, seed=100 + i)} for i in range(16)]
    marker = tmp_path / "died"
    config = job(tiny_mllama_dir, write_parquet(tmp_path / "in.parquet", rows), tmp_path / "out",
                 fault_injection={"gpu_exit_on_batch": 2, "marker": str(marker)})
    watched(builder.run_job, config)
    assert marker.exists(), "the fault was not injected"
    out = read_output(config.output)
    assert set(out) == {r["id"] for r in rows}
    assert all(r["error"] is None for r in out.values())


def test_webdataset_tar_shards(tiny_mllama_dir, tmp_path, watched):
    import tarfile

    (tmp_path / "shards").mkdir()
    keys = [f"sample{i:03d}" for i in range(5)]
    with tarfile.open(tmp_path / "shards" / "shard-000.tar", "w") as tar:
        for i, key in enumerate(keys):
            for suffix, data in ((".jpg", jpeg(30 + 9 * i, 40, seed=200 + i)), (".txt", b"a caption prompt")):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    config = job(tiny_mllama_dir, str(tmp_path / "shards"), tmp_path / "out")
    watched(builder.run_job, config)
    out = read_output(config.output)
    assert set(out) == set(keys)
    assert all(r["error"] is None and r["finish_reason"] in ("stop", "length") for r in out.values())


def test_caption_processor_on_a_callers_dataset(tiny_mllama_dir, tmp_path, watched):
    """The Python API: a Dataset with the caller's own column names in, the output schema out."""
    rows = [{"uid": 100 + i, "img": jpeg(25 + 7 * i, 40, seed=300 + i), "source": f"cam{i % 2}"} for i in range(5)]
    config = job(tiny_mllama_dir, "unused", tmp_path / "unused", id_column="uid", image_column="img",
                 keep_columns=("source",))
    ds = CaptionProcessor(config)(ray.data.from_items(rows))
    out = watched(lambda: ds.take_all())
    assert sorted(r["id"] for r in out) == [str(100 + i) for i in range(5)]
    assert {r["id"]: r["source"] for r in out} == {str(100 + i): f"cam{i % 2}" for i in range(5)}
    assert all(r["error"] is None and r["num_generated_tokens"] > 0 for r in out)
    assert set(out[0]) == {"id", "text", "finish_reason", "error", "num_prompt_tokens", "num_generated_tokens",
                           "model", "source"}


def test_onevision_multi_image_rows_equal_engine(tiny_ov_dir, tmp_path, watched, engine_texts):
    """A list cell of images is one request with several images (OneVision's multi-image prompts)."""
    rows = [{"id": "pair", "image": [jpeg(60, 90, seed=400), jpeg(80, 40, seed=401)]},
            {"id": "trio", "image": [jpeg(50, 50, seed=402), jpeg(30, 70, seed=403), jpeg(64, 48, seed=404)]},
            {"id": "single", "image": [jpeg(120, 80, seed=405)]}]
    config = job(tiny_ov_dir, "unused", tmp_path / "unused", prompt="Compare the images.")
    out = {r["id"]: r for r in watched(lambda: CaptionProcessor(config)(ray.data.from_items(rows)).take_all())}
    want = engine_texts(config, rows)
    for r in rows:
        assert out[r["id"]]["error"] is None, out[r["id"]]["error"]
        assert out[r["id"]]["text"] == want[r["id"]], r["id"]
    assert out["trio"]["num_prompt_tokens"] > out["pair"]["num_prompt_tokens"]  # every image is in the prompt
