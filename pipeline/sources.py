"""Inputs -> a Ray Dataset of rows with the columns the rest of the pipeline expects.

Accepted `--input`: a Parquet file, directory or glob (local or `s3://`), a directory of images/videos
(read as binary files, id = path relative to the folder; files of other types are ignored), a single
image or video file (id = its name), or WebDataset `.tar` shards. Output rows:
`id` (string), `image` / `video` (bytes, or a path/URI string), and the prompt/messages/kept columns
under their own names. Column names are configurable; a missing configured column is a clear error
raised before the job starts (never a silently empty column).

A caller's own Dataset (`CaptionProcessor`) goes through `normalise_columns` only. Without the configured
id column its ids come from a `path` column (`ray.data.read_images(..., include_paths=True)`): ids must be
the same on every run for resume to skip finished rows, so row numbers are never invented; with neither
column it is refused with `InputError` on the driver (`check_id_column`).
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from models.errors import InputError
from pipeline.job_config import JobConfig

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXT = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}


MEDIA_EXT = IMAGE_EXT | VIDEO_EXT
FOOTER_COUNT_MAX_FILES = 256  # above this, counting rows from footers on the driver costs too many reads


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def input_kind(uri: str) -> str:
    """'parquet', 'webdataset' or 'folder' (a media folder or a single image/video file)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if _has_glob(path):
        return "parquet"
    if not fs.exists(path):
        raise InputError(f"--input {uri} does not exist", kind="config_error")
    if fs.isdir(path):
        names = fs.ls(path, detail=False)
        if any(n.endswith(".parquet") for n in names):
            return "parquet"
        if any(n.endswith(".tar") for n in names):
            return "webdataset"
        return "folder"
    ext = posixpath.splitext(path)[1].lower()
    if ext in (".parquet", ".tar"):
        return "parquet" if ext == ".parquet" else "webdataset"
    if ext in MEDIA_EXT:
        return "folder"
    raise InputError(f"cannot read --input {uri}: not a parquet file/dir/glob, a folder of images/videos, an "
                     "image or video file, or WebDataset .tar shards", kind="config_error")


def media_files(uri: str) -> tuple[str, list[str]]:
    """(base, files) of a media folder or single media file: the files Ray's `read_binary_files` reads with
    our extension filter (it also skips relative paths starting with "." or "_"), and the prefix that
    makes their ids relative. Anything that is not an image or video (notes.txt, meta.json) is ignored."""
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        base = path.rstrip("/") + "/"
        found = [f for f in fs.find(path) if not f.removeprefix(base).startswith((".", "_"))]
    else:
        base, found = posixpath.dirname(path) + "/", [path]
    files = sorted(f for f in found if posixpath.splitext(f)[1].lower() in MEDIA_EXT)
    if not files:
        raise InputError(f"--input {uri} holds no image or video files (looked for "
                         f"{', '.join(sorted(MEDIA_EXT))}; other files are ignored)", kind="config_error")
    return base, files


def parquet_files(uri: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, path = fsspec.core.url_to_fs(uri)
    files = fs.glob(path) if _has_glob(path) else [path]
    files = [f for p in files for f in ([p] if p.endswith(".parquet") else fs.find(p)) if f.endswith(".parquet")]
    if not files:
        raise InputError(f"no parquet files under --input {uri}", kind="config_error")
    return fs, sorted(files)


def parquet_schema(uri: str) -> pa.Schema:
    fs, files = parquet_files(uri)
    with fs.open(files[0], "rb") as f:
        return pq.read_schema(f)


def input_ids(config: JobConfig) -> set[str] | None:
    """Every input row's id, read without Ray when that is cheap (a folder listing, or the id column of a
    few Parquet files); None otherwise. Lets a re-run with nothing left to do end before Ray starts."""
    kind = input_kind(config.input)
    if kind == "folder":
        base, files = media_files(config.input)
        return {f.removeprefix(base) for f in files}
    if kind != "parquet":
        return None
    fs, files = parquet_files(config.input)
    if len(files) > FOOTER_COUNT_MAX_FILES:
        return None
    ids: set[str] = set()
    for name in files:
        with fs.open(name, "rb") as f:
            column = pq.read_table(f, columns=[config.id_column]).column(0)
        ids.update(str(x) for x in column.to_pylist())
    return ids


def read_input(config: JobConfig) -> tuple[ray.data.Dataset, dict[str, pa.DataType]]:
    """-> (dataset with normalised columns, {kept column: arrow type})."""
    ds, keep, _ = read_input_counted(config)
    return ds, keep


def read_input_counted(config: JobConfig, units=None) -> tuple[ray.data.Dataset, dict[str, pa.DataType], int | None]:
    """`read_input` plus the number of input rows when it is known without reading the media: Parquet
    footers, or the file count of a media folder (None for WebDataset shards). `Dataset.count()` after our
    renaming map would read every image just to count rows. `units` (a `pipeline.resume.ResumePlan` with
    units): read only its unfinished files, each row tagged with its unit (`UNIT_COLUMN`)."""
    kind = input_kind(config.input)
    if kind == "parquet":
        schema, wanted, media = check_parquet_columns(config)
        keep = {c: schema.field(c).type for c in config.keep_columns}
        if units is not None and units.units is not None:
            from pipeline.resume import tag_units

            files = [units.units.uri(k) for k in units.read_keys]
            ds = ray.data.read_parquet(files, include_paths=True).select_columns(sorted(wanted | set(media) | {"path"}))
            ds = ds.map_batches(tag_units, fn_kwargs={"base": units.units.base}, batch_format="pyarrow")
            return normalise_columns(ds, config), keep, sum(units.unit_rows.values())
        ds = ray.data.read_parquet(config.input).select_columns(sorted(wanted | set(media)))
        return normalise_columns(ds, config), keep, ds.count()  # from the footers: nothing is read yet
    if kind == "folder":
        base, files = media_files(config.input)
        # Ray reports paths the way it was given them: an absolute local path makes them match `base`.
        uri = config.input if "://" in config.input else os.path.abspath(config.input)
        ds = ray.data.read_binary_files(uri, include_paths=True,
                                        file_extensions=sorted(e[1:] for e in MEDIA_EXT))
        return ds.map_batches(_folder_rows, fn_kwargs={"base": base}, batch_format="pyarrow"), {}, len(files)
    # Ray's own WebDataset reader decodes images in the read task (unisolated, and the JPEG bytes are gone):
    # read each shard as bytes and split it here, keeping media as bytes for the isolated decoder.
    ds = ray.data.read_binary_files(config.input, file_extensions=["tar"])
    return ds.flat_map(_tar_samples), {}, None


def check_parquet_columns(config: JobConfig) -> tuple[pa.Schema, set[str], list[str]] | None:
    """A Parquet input's (schema, columns wanted, media columns present), or InputError naming what is
    missing; None for other inputs. Reads one footer."""
    if input_kind(config.input) != "parquet":
        return None
    schema = parquet_schema(config.input)
    cols = set(schema.names)
    wanted = {config.id_column, *config.keep_columns}
    for c in (config.prompt_column, config.messages_column):
        if c:
            wanted.add(c)
    missing = sorted(c for c in wanted if c not in cols)
    media = [c for c in (config.image_column, config.video_column) if c and c in cols]
    if missing or not media:
        raise InputError(f"{config.input}: missing columns {missing or ''}"
                         f"{'' if media else ' and no image/video column'} (have {sorted(cols)})")
    return schema, wanted, media


def check_id_column(names: list[str], config: JobConfig) -> None:
    """Refuse, on the driver, a Dataset whose rows `normalise_columns` could not give a stable id."""
    if config.id_column in names or "id" in names or "path" in names:
        return
    raise InputError(
        f"the Dataset has no id column {config.id_column!r} (columns: {sorted(names)}): add one with a stable "
        "value per row (resume skips ids already written), name yours with id_column=..., or read images with "
        "ray.data.read_images(..., include_paths=True) to use the file paths as ids", kind="config_error")


def normalise_columns(ds: ray.data.Dataset, config: JobConfig) -> ray.data.Dataset:
    """Configured names -> `id` (string), `image`, `video`; kept columns are copied to `keep__<name>` (a
    kept column may also be the prompt or id column). Without the id column, `path` is copied to `id`.
    Touches only columns that exist under their configured names and copies not made yet, so applying it
    twice changes nothing."""
    mapping = {config.id_column: "id"}
    if config.image_column:
        mapping[config.image_column] = "image"
    if config.video_column:
        mapping[config.video_column] = "video"
    keep = config.keep_columns

    def fn(table: pa.Table) -> pa.Table:
        for k in keep:
            if k in table.column_names and "keep__" + k not in table.column_names:
                table = table.append_column("keep__" + k, table.column(k))
        table = table.rename_columns([mapping.get(n, n) for n in table.column_names])
        if "id" not in table.column_names:
            # Callers check this on the driver (check_id_column); a Dataset whose batches differ still fails
            # with the same typed message.
            check_id_column(table.column_names, config)
            table = table.append_column("id", table.column("path"))
        if table.column("id").type != pa.string():
            table = table.set_column(table.column_names.index("id"), "id", table.column("id").cast(pa.string()))
        return table

    return ds.map_batches(fn, batch_format="pyarrow")


def _folder_rows(table: pa.Table, base: str = "") -> pa.Table:
    """Ids are paths relative to the input folder (a single file's id is its name)."""
    paths = table.column("path").to_pylist()
    data = table.column("bytes").to_pylist()
    images, videos = [], []
    for p, b in zip(paths, data, strict=True):
        ext = posixpath.splitext(p)[1].lower()
        images.append(b if ext not in VIDEO_EXT else None)
        videos.append(b if ext in VIDEO_EXT else None)
    ids = [p.removeprefix(base) if base else p for p in paths]
    return pa.table({"id": ids, "image": pa.array(images, pa.binary()), "video": pa.array(videos, pa.binary())})


def _tar_samples(row: dict) -> list[dict]:
    """One WebDataset shard -> one row per sample key: `id` = key, the first image/video member, `txt` as
    the per-row `prompt`."""
    samples: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(row["bytes"])) as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            key, _, ext = base.partition(".")
            key = posixpath.join(posixpath.dirname(member.name), key)
            sample = samples.setdefault(key, {"id": key, "image": None, "video": None, "prompt": None})
            ext = "." + ext.lower()
            kinds = {**dict.fromkeys(IMAGE_EXT, "image"), **dict.fromkeys(VIDEO_EXT, "video"), ".txt": "prompt"}
            field = kinds.get(ext)
            if field and sample.get(field) is None:
                data = tar.extractfile(member).read()
                sample[field] = data.decode("utf-8", "replace") if field == "prompt" else data
    return list(samples.values())
