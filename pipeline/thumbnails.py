"""Small JPEG thumbnails as `data:` URIs for the self-contained HTML pages (eval report, caption gallery).

Contract:
- `thumbnail_uri(data, max_side=128) -> str | None`: image bytes -> `data:image/jpeg;base64,...` whose
  longest side is at most `max_side` px, or None when the bytes are not a decodable image (never raises
  for bad input). Decoding goes through `models.media.load_image`: the same format allow-list,
  decompression-bomb checks and RGB conversion (alpha onto white, EXIF orientation) as the caption pipeline.
- `media_cell_bytes(cell) -> bytes | None`: a prepared/input media cell (bytes, a list of them, a Hugging
  Face image struct, or a local/fsspec path) -> the first image's bytes, or None (http(s) is never fetched).
- `parquet_cells(fs, files, id_column, column, ids) -> {id: cell}`: the `column` cells of the rows whose
  id (as a string) is in `ids`, reading the id column of each file and then only the row groups that hold
  a wanted row (media columns are the bulk of a file: a whole-column read would load every image).

Callers decode only rows the pipeline itself decoded without error: bytes that crashed or hung the
isolated decoder (error rows) must not be decoded again in the driver.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable

import pyarrow.parquet as pq

from models.errors import InputError
from models.media import load_image

MAX_SIDE = 128
THUMB_MAX_PIXELS = 64_000_000  # load_image's default: what the caption pipeline itself accepts


def first_frame(data: bytes):
    """A video's first frame as a PIL image (bounded decode), or None for anything that is not a video."""
    from PIL import Image

    try:
        from models.video import decode_video

        return Image.fromarray(decode_video(data, 1, timeout_s=10.0).frames[0])
    except (InputError, ImportError):
        return None


def thumbnail_uri(data: bytes | None, max_side: int = MAX_SIDE) -> str | None:
    if not data:
        return None
    try:
        image = load_image(data, max_pixels=THUMB_MAX_PIXELS)
    except InputError:  # not an image: a video's first frame, else the page shows "no image"
        image = first_frame(data)
        if image is None:
            return None
    # reducing_gap: decode-time downscaling first, then a proper resample (fast on large photos, still sharp)
    image.thumbnail((max_side, max_side), reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def media_cell_bytes(cell) -> bytes | None:
    if isinstance(cell, list | tuple):
        cell = next((c for c in cell if c is not None), None)
    if isinstance(cell, dict):  # Hugging Face image struct {"bytes", "path"}
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, bytes | bytearray | memoryview):
        return bytes(cell)
    if isinstance(cell, str) and cell and not cell.lower().startswith(("http://", "https://")):
        from pipeline.fetch import media_bytes

        try:
            return media_bytes(cell)
        except InputError:
            return None
    return None


def parquet_cells(fs, files: Iterable[str], id_column: str, column: str, ids: Iterable[str]) -> dict[str, object]:
    wanted = set(ids)
    found: dict[str, object] = {}
    for name in files:
        if len(found) == len(wanted):
            break
        with fs.open(name, "rb") as f:
            pf = pq.ParquetFile(f)
            if column not in pf.schema_arrow.names:
                continue
            file_ids = [str(x) for x in pf.read(columns=[id_column]).column(0).to_pylist()]
            hits = [i for i, x in enumerate(file_ids) if x in wanted and x not in found]
            start = 0
            for group in range(pf.num_row_groups):
                size = pf.metadata.row_group(group).num_rows
                mine = [i - start for i in hits if start <= i < start + size]
                if mine:
                    cells = pf.read_row_group(group, columns=[column]).column(0)
                    for i in mine:
                        found[file_ids[start + i]] = cells[i].as_py()
                start += size
    return found
