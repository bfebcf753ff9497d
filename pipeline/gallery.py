"""A look at a caption run: `<output>/_gallery.html`, a self-contained page of sampled rows.

Contract: `write_gallery(config, n, seed=0)` samples `n` output rows uniformly (seeded, so the same output
gives the same page) and writes one HTML file with no external assets: per row a JPEG thumbnail (`data:`
URI, longest side <= 128 px), the id, and the caption or the error (and finish reason). Returns the URI.
- Sampling reads the row count of every part file (Parquet footers; JSONL lines), then the text of only
  the parts that hold a sampled row.
- Media come from the input by id: a media folder (id = relative path: one read per row), Parquet (the id
  column, then only the row groups holding a sampled row), WebDataset shards (streamed until every sampled
  key is found). Videos, http(s) URLs and error rows get no thumbnail (error rows: bytes that failed in the
  isolated decoder are never decoded again in the driver).
Every piece of text is escaped with `html.escape`. Runs on the driver (no Ray tasks).
"""

from __future__ import annotations

import html
import json
import posixpath
import random
import tarfile

import fsspec
import pyarrow.parquet as pq

from pipeline.job_config import JobConfig
from pipeline.schema import output_schema
from pipeline.sink import OutputSink
from pipeline.sources import IMAGE_EXT, MEDIA_EXT, input_kind, media_files, parquet_files
from pipeline.thumbnails import media_cell_bytes, parquet_cells, thumbnail_uri

# "_" like _vlmcap_job.json: pyarrow/pandas/Spark readers skip "_" and "." names, so reading the output
# directory as a dataset (the job's own demo printout does) never trips over the page.
GALLERY_FILE = "_gallery.html"
STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;display:flex;gap:8px}
.card>div{min-width:0;overflow-wrap:anywhere}
.card img{max-width:128px;max-height:128px;flex:none}.id{font-family:monospace;font-size:12px;color:#555}
.err{color:#b00020}.muted{color:#777}.reason{font-size:12px;color:#777}"""


def _read_part(fs, path: str, fmt: str, columns: list[str]) -> list[dict]:
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns).to_pylist()
    with fs.open(path, "r", encoding="utf-8") as f:
        return [{k: row.get(k) for k in columns} for row in (json.loads(line) for line in f if line.strip())]


def _count(fs, path: str, fmt: str) -> int:
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows  # the footer only
    with fs.open(path, "r", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def sample_rows(config: JobConfig, n: int, seed: int = 0) -> list[dict]:
    """`n` output rows (id, text, error, finish_reason), sorted by id; all of them when there are fewer."""
    sink = OutputSink(config.output, output_schema(), config.output_format)
    parts = sink.parts()
    counts = [_count(sink.fs, p, config.output_format) for p in parts]
    # Global row numbers over the parts in name order: `sample(range(...))` never materialises the range.
    picked = sorted(random.Random(seed).sample(range(sum(counts)), min(n, sum(counts))))
    rows, start = [], 0
    for part, count in zip(parts, counts, strict=True):
        mine = [i - start for i in picked if start <= i < start + count]
        if mine:
            table = _read_part(sink.fs, part, config.output_format, ["id", "text", "error", "finish_reason"])
            rows += [table[i] for i in mine]
        start += count
    return sorted(rows, key=lambda r: r["id"])


def _tar_images(uri: str, keys: set[str]) -> dict[str, bytes]:
    """The first image member of each wanted sample key (keys as `pipeline.sources._tar_samples` makes them)."""
    fs, path = fsspec.core.url_to_fs(uri)
    shards = sorted(fs.glob(path) if any(c in path for c in "*?[") else
                    [f for f in fs.find(path) if f.endswith(".tar")] if fs.isdir(path) else [path])
    found: dict[str, bytes] = {}
    for shard in shards:
        with fs.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                stem, _, ext = base.partition(".")
                key = posixpath.join(posixpath.dirname(member.name), stem)
                if member.isfile() and key in keys and key not in found and "." + ext.lower() in IMAGE_EXT:
                    found[key] = tar.extractfile(member).read()
        if len(found) == len(keys):
            break
    return found


def input_images(config: JobConfig, ids: set[str]) -> dict[str, bytes]:
    """id -> image bytes from the job's input, for the ids that have an image there."""
    if not ids:
        return {}
    kind = input_kind(config.input)
    if kind == "folder":
        base, files = media_files(config.input)
        fs, _ = fsspec.core.url_to_fs(config.input)
        present = {f.removeprefix(base) for f in files}
        return {i: fs.cat(base + i) for i in ids
                if i in present and posixpath.splitext(i)[1].lower() in MEDIA_EXT}
    if kind == "webdataset":
        return _tar_images(config.input, ids)
    fs, files = parquet_files(config.input)
    out: dict[str, bytes] = {}
    for column in filter(None, (config.image_column, config.video_column)):  # a video row: its first frame
        cells = parquet_cells(fs, files, config.id_column, column, set(ids) - set(out))
        out.update({i: data for i, cell in cells.items() if (data := media_cell_bytes(cell))})
    return out


def render(config: JobConfig, rows: list[dict]) -> str:
    images = input_images(config, {r["id"] for r in rows if r.get("error") is None})
    cards = []
    for r in rows:
        thumb = thumbnail_uri(images.get(r["id"]))
        img = (f'<img src="{html.escape(thumb)}" alt="{html.escape(r["id"])}">' if thumb
               else '<span class="muted">no image</span>')
        body = (f'<div class="err">{html.escape(r["error"])}</div>' if r.get("error")
                else f"<div>{html.escape(r.get('text') or '')}</div>")
        cards.append(f'<div class="card">{img}<div><div class="id">{html.escape(r["id"])}</div>{body}'
                     f'<div class="reason">{html.escape(str(r.get("finish_reason") or ""))}</div></div></div>')
    title = f"Caption gallery: {config.output}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="muted">{len(rows)} sampled rows · model {html.escape(config.model)} · input '
            f'{html.escape(config.input)}</p><div class="grid">{"".join(cards)}</div></body></html>\n')


def write_gallery(config: JobConfig, n: int, seed: int = 0) -> str:
    text = render(config, sample_rows(config, n, seed))
    uri = config.output.rstrip("/") + "/" + GALLERY_FILE
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return uri
