"""Output files, resume and the config fingerprint. Runs on the driver.

Layout of an output location (local directory or `s3://bucket/prefix`):
    _vlmcap_job.json              fingerprint + config of the job that writes here
    part-u<unit key>-<n>.parquet (or .jsonl)   rows of one input unit (file); complete files only
    part-<first id hash>-<n>.parquet           rows without a unit (folder/WebDataset inputs, older versions)
    _vlmcap_done/<unit key>-<rows>.json        written once every row of that unit is in committed parts

Exactly-once: a part file or completion record becomes visible only when complete (local: write to
`.tmp-*` then rename; S3: a PUT is atomic), and the driver never writes an id twice. A crash leaves at
most `.tmp-*` debris, removed on the next run. What a resume skips is decided in pipeline/resume.py from
the listing: finished units by their records, partly written ones by the ids of their own parts. A run
whose fingerprint differs from the stored one, or whose model path now holds other weights
(pipeline/weights_id.py, recorded beside the fingerprint), is refused unless `overwrite` (which deletes old parts
and records).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.job_config import JobConfig
from pipeline.weights_id import weights_identity

JOB_FILE = "_vlmcap_job.json"
DONE_DIR = "_vlmcap_done"
FORMATS = ("parquet", "jsonl")


class ConfigMismatchError(RuntimeError):
    pass


class OutputSink:
    def __init__(self, uri: str, schema: pa.Schema, fmt: str = "parquet"):
        self.fs, self.root = fsspec.core.url_to_fs(uri)
        self.uri, self.schema, self.fmt = uri, schema, fmt
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol
        self.fs.makedirs(self.root, exist_ok=True)
        self.written = 0
        self._identities: dict[tuple[str, bool], str | None] = {}  # weights_identity per model, read once

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def _listing(self) -> list[str]:
        """Entries under the output root; an object store has no empty "directory" before the first write."""
        try:
            self.fs.invalidate_cache(self.root)
            return self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []

    def parts(self) -> list[str]:
        return sorted(p for p in self._listing()
                      if posixpath.basename(p).startswith("part-") and p.endswith("." + self.fmt))

    def parts_of_other_formats(self) -> list[str]:
        return sorted(p for p in self._listing() if posixpath.basename(p).startswith("part-")
                      and p.rsplit(".", 1)[-1] in FORMATS and not p.endswith("." + self.fmt))

    def refusal(self, config: JobConfig) -> str | None:
        """Why resuming into this output with `config` would be wrong (None: it is fine). `--overwrite`
        turns every refusal into a replacement."""
        if config.overwrite:
            return None
        stored = self.stored_job()
        if stored is not None and stored.get("fingerprint") != config.fingerprint():
            return (f"{self.uri} holds output of a different configuration ({changed_settings(stored, config)}); "
                    "use a new --output, the same settings, or --overwrite to replace it")
        if self.weights_changed(config, stored):
            return (f"{self.uri} holds output of the weights that were at --model {config.model} when it was "
                    "written; the safetensors there have changed since. Use a new --output, or --overwrite to "
                    "replace it")
        other = self.parts_of_other_formats()
        if stored is None and (self.parts() or other):
            return f"{self.uri} holds part files but no {JOB_FILE}; pass --overwrite to replace them"
        # Resume reads only this format's parts: parts in another format would be written again (duplicates).
        if other:
            found = other[0].rsplit(".", 1)[-1]
            return (f"{self.uri} holds {found} output but --output-format is {self.fmt}; use --output-format "
                    f"{found} to resume it, a new --output, or --overwrite to replace it")
        return None

    def prepare(self, config: JobConfig) -> None:
        """Remove crash debris, check and record the fingerprint (what to skip: pipeline/resume.py)."""
        for p in self._listing() + self._done_listing():
            if posixpath.basename(p).startswith(".tmp-"):
                self.fs.rm(p)
        refused = self.refusal(config)
        if refused:
            raise ConfigMismatchError(refused)
        stored = self.stored_job()
        if config.overwrite and (self.parts_of_other_formats() or stored is None
                                 or stored.get("fingerprint") != config.fingerprint()
                                 or self.weights_changed(config, stored)):
            self._remove_parts()
        with self.fs.open(self._path(JOB_FILE), "w") as f:
            json.dump({"fingerprint": config.fingerprint(), "config": _jsonable(config),
                       "weights": self.weights_of(config)}, f, indent=2)

    def weights_of(self, config: JobConfig) -> str | None:
        """`config.model`'s weights identity (pipeline/weights_id.py), read once per sink."""
        key = (config.model, config.random_weights)
        if key not in self._identities:
            self._identities[key] = weights_identity(*key)
        return self._identities[key]

    def weights_changed(self, config: JobConfig, stored: dict | None) -> bool:
        """The stored job recorded its weights and `config.model` now holds others (records of older versions,
        remote models and random weights have no identity: nothing to compare)."""
        before = (stored or {}).get("weights")
        return before is not None and self.weights_of(config) not in (None, before)

    def stored_job(self) -> dict | None:
        """The `_vlmcap_job.json` of the job that wrote here, or None."""
        job_path = self._path(JOB_FILE)
        if not self.fs.exists(job_path):
            return None
        return json.loads(self.fs.cat(job_path))

    def _remove_parts(self) -> None:
        for p in self.parts() + self.parts_of_other_formats() + self._done_listing():
            self.fs.rm(p)

    def existing_ids(self) -> set[str]:
        """Every id written (reads every part: the cost grows with the rows; resume uses pipeline/resume.py)."""
        return self.ids_of(self.parts())

    def ids_of(self, parts: list[str]) -> set[str]:
        ids: set[str] = set()
        for p in parts:
            if self.fmt == "parquet":
                with self.fs.open(p, "rb") as f:
                    ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
            else:
                with self.fs.open(p, "r") as f:
                    ids.update(json.loads(line)["id"] for line in f if line.strip())
        return ids

    def count_rows(self) -> int:
        """Rows in the part files, from Parquet footers (JSONL: lines); no id is kept in memory."""
        total = 0
        for p in self.parts():
            with self.fs.open(p, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows if self.fmt == "parquet" else \
                    sum(1 for line in f if line.strip())
        return total

    @staticmethod
    def part_unit(path: str) -> str | None:
        """The unit key in a part's name (`part-u<key>-...`), None for a part without a unit."""
        name = posixpath.basename(path)
        return name[len("part-u"):].split("-", 1)[0] if name.startswith("part-u") else None

    def _done_listing(self) -> list[str]:
        try:
            self.fs.invalidate_cache(self._path(DONE_DIR))
            return self.fs.ls(self._path(DONE_DIR), detail=False)
        except FileNotFoundError:
            return []

    def done_units(self) -> dict[str, int]:
        """{unit key: rows} of the finished units, from the names of their records (one listing, no reads)."""
        out = {}
        for p in self._done_listing():
            name = posixpath.basename(p)
            if name.endswith(".json") and not name.startswith(".tmp-"):
                key, _, rows = name[:-len(".json")].partition("-")
                out[key] = int(rows)
        return out

    def mark_done(self, key: str, rel: str, rows: int) -> None:
        """Record that every row of unit `key` (input file `rel`, `rows` rows) is in committed parts."""
        body = json.dumps({"unit": rel, "rows": rows}).encode()
        self._put(posixpath.join(DONE_DIR, f"{key}-{rows}.json"), body)

    def _put(self, name: str, data: bytes) -> str:
        final = self._path(name)
        if self.local:
            tmp = self._path(posixpath.join(posixpath.dirname(name), ".tmp-" + posixpath.basename(name)))
            self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, final)
        else:
            with self.fs.open(final, "wb") as f:
                f.write(data)
        return final

    def write(self, table: pa.Table, unit: str | None = None) -> str:
        """Commit one part file holding `table` (already in the output schema); `unit`: every row comes from
        that input unit (the key goes into the name)."""
        if unit is not None:
            name = f"part-u{unit}-{uuid.uuid4().hex[:8]}.{self.fmt}"
        else:
            first = table.column("id")[0].as_py() if table.num_rows else ""
            name = f"part-{hashlib.sha1(first.encode()).hexdigest()[:12]}-{uuid.uuid4().hex[:8]}.{self.fmt}"
        data = io.BytesIO()
        if self.fmt == "parquet":
            pq.write_table(table.cast(self.schema), data)
        else:
            for row in table.to_pylist():
                # Captions are text in any language: keep it readable (UTF-8), not \uXXXX escapes.
                data.write((json.dumps(row, default=str, ensure_ascii=False) + "\n").encode())
        final = self._put(name, data.getvalue())
        self.written += table.num_rows
        return final


def changed_settings(stored: dict, config: JobConfig) -> str:
    """Which fingerprinted settings differ from the stored job's, as flags: '--prompt: 'a' -> 'b''."""
    before, now = stored.get("config") or {}, _jsonable(config)
    diffs = [f"--{k.replace('_', '-')}: {before.get(k)!r} -> {now.get(k)!r}"
             for k in JobConfig.FINGERPRINT_KEYS if before.get(k) != now.get(k)]
    return "; ".join(diffs) or f"fingerprint {stored.get('fingerprint')} vs {config.fingerprint()}"


def _jsonable(config: JobConfig) -> dict:
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
