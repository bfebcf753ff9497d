"""Resume state proportional to the work units (input Parquet files), not to the rows. Driver side.

A unit is one input Parquet file, named by `unit_key` (a hash of its path relative to the input root, so a
dataset copied elsewhere keeps its keys). The driver writes each unit's rows into its own part files
(`part-u<key>-<uuid>.<fmt>`) and, once every row of the unit is in committed parts, a completion record
`_vlmcap_done/<key>-<rows>.json` (pipeline/sink.py). `plan_resume` then decides what a run reads:
- a unit with a completion record is not read at all (its key and row count come from the listing);
- a unit with parts but no record is read, minus the ids in its own parts (the only ids loaded);
- parts without a unit (written by older versions, or for folder / WebDataset inputs, which have no units)
  and parts of units that are not in this input (a moved or re-globbed input) have their ids loaded and
  skipped as before: exactly-once never depends on the keys matching, only the cost does.
A unit whose parts already hold all its rows (a crash between the last part and its record) gets its
record here. The ids to skip travel to the read tasks once (Ray puts the map function, with its
arguments, into the object store once per operator), and hold only partly written units' ids.

Ids must be unique (--id-column). Within a unit a repeated id is written once, as before; across units no
global id set is kept (that set is what grew with the rows), so the same id in two files is written twice.
"""

from __future__ import annotations

import hashlib
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.job_config import JobConfig
from pipeline.sink import OutputSink

# Travels through the stages like a kept column (`keep__` prefix), never written: the driver strips it.
UNIT_COLUMN = "keep__vlmcap:unit"
FOOTER_THREADS = 32


def unit_key(rel_path: str) -> str:
    return hashlib.sha1(rel_path.encode()).hexdigest()[:16]


def strip_scheme(path: str) -> str:
    return path.split("://", 1)[-1]


@dataclass
class InputUnits:
    """The input's Parquet files as units: key -> full path (as fsspec lists it) and relative path."""

    fs: fsspec.AbstractFileSystem
    base: str  # input root without scheme, ending in "/"
    files: dict[str, str]  # key -> path without scheme
    rel: dict[str, str]  # key -> path relative to base
    scheme: str = ""  # "s3://" etc., "" for local paths

    def uri(self, key: str) -> str:
        return self.scheme + self.files[key]


@dataclass
class ResumePlan:
    units: InputUnits | None  # None: the input has no units (folder, WebDataset, or a `path` column clash)
    read_keys: list[str] = field(default_factory=list)  # units to read (not finished)
    unit_rows: dict[str, int] = field(default_factory=dict)  # rows per unit to read (from footers)
    expected: dict[str, int] = field(default_factory=dict)  # rows of each unit still to write
    skip_ids: set[str] = field(default_factory=set)  # ids to drop from the rows read
    skipped: int = 0  # rows already written, reported in the summary
    foreign_units: int = 0
    # Ids of parts without a unit may belong to the units read: then how many rows remain is unknown.
    remaining_unknown: bool = False

    @property
    def nothing_to_read(self) -> bool:
        return self.units is not None and not self.read_keys

    @property
    def remaining(self) -> int | None:
        """Rows this run should write, when known (unit mode: footers minus ids already written)."""
        if self.units is None or self.remaining_unknown:
            return None
        return sum(self.expected.values())


def input_units(config: JobConfig) -> InputUnits | None:
    """The input's units when it is Parquet and Ray's `path` column does not clash with a wanted column."""
    from pipeline.sources import _has_glob, input_kind, parquet_files

    if input_kind(config.input) != "parquet":
        return None
    wanted = {config.id_column, config.image_column, config.video_column, config.prompt_column,
              config.messages_column, *config.keep_columns}
    if "path" in wanted:
        return None
    fs, files = parquet_files(config.input)
    scheme = config.input.split("://", 1)[0] + "://" if "://" in config.input else ""
    root = strip_scheme(fsspec.core.url_to_fs(config.input)[1])
    if _has_glob(root):
        root = root[:min(root.index(c) for c in "*?[" if c in root)].rsplit("/", 1)[0]
    elif root.endswith(".parquet") and not fs.isdir(root):
        root = posixpath.dirname(root)
    base = root.rstrip("/") + "/"
    keys, rel = {}, {}
    for f in files:
        f = strip_scheme(f)
        r = f.removeprefix(base)
        keys[unit_key(r)] = f
        rel[unit_key(r)] = r
    return InputUnits(fs, base, keys, rel, scheme if scheme != "file://" else "")


def footer_rows(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[int]:
    """Row counts from the Parquet footers (a few KB read per file, in parallel threads)."""
    def rows(path: str) -> int:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    with ThreadPoolExecutor(min(FOOTER_THREADS, max(1, len(paths)))) as pool:
        return list(pool.map(rows, paths))


def plan_resume(config: JobConfig, sink: OutputSink, log=print) -> ResumePlan:
    """What this run reads and skips (see the module docstring). Writes completion records for units whose
    rows are all in parts already."""
    units = input_units(config)
    parts = sink.parts()
    if units is None:
        ids = sink.ids_of(parts)
        return ResumePlan(None, skip_ids=ids, skipped=len(ids))
    done = sink.done_units()
    by_unit: dict[str | None, list[str]] = {}
    for p in parts:
        by_unit.setdefault(sink.part_unit(p), []).append(p)
    foreign = sorted(k for k in set(by_unit) | set(done) if k is not None and k not in units.files)
    legacy = by_unit.get(None, []) + [p for k in foreign for p in by_unit.get(k, [])]
    if foreign:
        log(f"[caption] resume: {len(foreign)} finished or partial input files in {config.output} are not in "
            f"this --input (moved or re-globbed input?): reading their ids to skip them", file=sys.stderr)
    todo = [k for k in sorted(units.files) if k not in done]
    if not todo:  # every input file is finished: nothing is read, no id either
        return ResumePlan(units, skipped=sum(done[k] for k in units.files))
    skip_ids = sink.ids_of(legacy)
    counts = dict(zip(todo, footer_rows(units.fs, [units.files[k] for k in todo]), strict=True))
    plan = ResumePlan(units, skip_ids=set(skip_ids), foreign_units=len(foreign), remaining_unknown=bool(skip_ids),
                      skipped=sum(done[k] for k in units.files if k in done) + len(skip_ids))
    for k in todo:
        written = sink.ids_of(by_unit.get(k, []))
        if len(written) >= counts[k]:  # every row is in parts: the record was all that was missing
            sink.mark_done(k, units.rel[k], counts[k])
        else:
            plan.read_keys.append(k)
            plan.unit_rows[k] = counts[k]
            plan.expected[k] = counts[k] - len(written)
            plan.skip_ids |= written
        plan.skipped += len(written)
    return plan


def tag_units(table: pa.Table, base: str) -> pa.Table:
    """Ray's `path` column (the file a row came from) -> the row's unit key in `UNIT_COLUMN`."""
    paths = table.column("path").to_pylist()
    cache: dict[str, str] = {}
    keys = [cache.setdefault(p, unit_key(strip_scheme(p).removeprefix(base))) if p not in cache else cache[p]
            for p in paths]
    return table.drop_columns(["path"]).append_column(UNIT_COLUMN, pa.array(keys, pa.string()))


def drop_ids(table: pa.Table, done: pa.Array) -> pa.Table:
    return table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))
