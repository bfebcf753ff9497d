"""Output files, resume and the config fingerprint. Runs on the driver.

Layout of an output location (local directory or `s3://bucket/prefix`):
    _vlmcap_job.json              fingerprint + config of the job that writes here
    part-<first id hash>-<n>.parquet (or .jsonl)   complete files only

Exactly-once: a part file becomes visible only when complete (local: write to `.tmp-*` then rename;
S3: a PUT is atomic), and the driver never writes an id twice. A crash leaves at most `.tmp-*` debris,
removed on the next run. Resume reads the `id` column of every part file and skips those ids; a run
whose fingerprint differs from the stored one is refused unless `overwrite` (which deletes old parts).
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

JOB_FILE = "_vlmcap_job.json"


class ConfigMismatchError(RuntimeError):
    pass


class OutputSink:
    def __init__(self, uri: str, schema: pa.Schema, fmt: str = "parquet"):
        self.fs, self.root = fsspec.core.url_to_fs(uri)
        self.uri, self.schema, self.fmt = uri, schema, fmt
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol
        self.fs.makedirs(self.root, exist_ok=True)
        self.written = 0

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

    def prepare(self, config: JobConfig) -> set[str]:
        """Check/record the fingerprint; return ids already written (empty when starting fresh)."""
        for p in self._listing():
            if posixpath.basename(p).startswith(".tmp-"):
                self.fs.rm(p)
        job_path = self._path(JOB_FILE)
        if self.fs.exists(job_path):
            stored = json.loads(self.fs.cat(job_path))
            if stored.get("fingerprint") != config.fingerprint():
                if not config.overwrite:
                    raise ConfigMismatchError(
                        f"{self.uri} holds output of a different configuration (fingerprint {stored.get('fingerprint')}"
                        f" vs {config.fingerprint()}); use a new --output or pass --overwrite to replace it")
                for p in self.parts():
                    self.fs.rm(p)
        elif self.parts() and not config.overwrite:
            raise ConfigMismatchError(f"{self.uri} holds part files but no {JOB_FILE}; pass --overwrite to replace")
        with self.fs.open(job_path, "w") as f:
            json.dump({"fingerprint": config.fingerprint(), "config": _jsonable(config)}, f, indent=2)
        return self.existing_ids()

    def existing_ids(self) -> set[str]:
        ids: set[str] = set()
        for p in self.parts():
            if self.fmt == "parquet":
                with self.fs.open(p, "rb") as f:
                    ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
            else:
                with self.fs.open(p, "r") as f:
                    ids.update(json.loads(line)["id"] for line in f if line.strip())
        return ids

    def write(self, table: pa.Table) -> str:
        """Commit one part file holding `table` (already in the output schema)."""
        first = table.column("id")[0].as_py() if table.num_rows else ""
        digest = hashlib.sha1(first.encode()).hexdigest()[:12]
        name = f"part-{digest}-{uuid.uuid4().hex[:8]}.{self.fmt}"
        data = io.BytesIO()
        if self.fmt == "parquet":
            pq.write_table(table.cast(self.schema), data)
        else:
            for row in table.to_pylist():
                data.write((json.dumps(row, default=str) + "\n").encode())
        final = self._path(name)
        if self.local:
            tmp = self._path(".tmp-" + name)
            with self.fs.open(tmp, "wb") as f:
                f.write(data.getvalue())
            self.fs.mv(tmp, final)
        else:
            with self.fs.open(final, "wb") as f:
                f.write(data.getvalue())
        self.written += table.num_rows
        return final


def _jsonable(config: JobConfig) -> dict:
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
