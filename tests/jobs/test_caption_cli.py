"""`jobs/caption.py` as users run it, in subprocesses (each starts its own local Ray):

- no arguments: the demo on the bundled media with the bundled model prints where the output went;
- a job interrupted mid-way (Ctrl-C: exit 130, says how many rows are saved) and re-run with the same
  command finishes the rest, every id exactly once; a finished job re-run says there is nothing to do; a
  re-run with a different prompt is refused (exit 2, naming the setting) unless --overwrite;
- S3 in and out on a moto server started here (random local port, dummy credentials for this test only),
  the model read from S3 too (copied once into the node's model cache; default --max-model-len);
- `ray start --head` + `ray job submit --working-dir .` end to end (marked `cluster`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CAPTION = ROOT / "jobs" / "caption.py"


def scrape_until(url: str, needle: str, timeout_s: float) -> str:
    import urllib.request

    deadline, text = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            if needle in text:
                return text
        time.sleep(2)
    raise AssertionError(f"{needle!r} never appeared at {url}; last scrape:\n{text[-3000:]}")



def images_parquet(path: Path, n: int, files: int = 1) -> Path:
    """n JPEG rows in one file at `path`, or split over `files` files in a directory `path`."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)).save(buf, "JPEG")
        rows.append({"id": f"r{i:03d}", "image": buf.getvalue()})
    table = pa.Table.from_pylist(rows)
    if files == 1:
        pq.write_table(table, path)
        return path
    path.mkdir()
    step = -(-n // files)
    for k in range(files):
        pq.write_table(table.slice(k * step, step), path / f"shard-{k:03d}.parquet")
    return path


def output_ids(uri: str, **fs) -> list[str]:
    return pds.dataset(uri, format="parquet", **fs).to_table(columns=["id"]).column("id").to_pylist()


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CAPTION), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_demo_runs_with_no_arguments(tmp_path):
    # --output only moves where the demo writes; everything else is the no-argument demo.
    proc = run_cli("--output", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running the demo" in proc.stdout and str(tmp_path / "demo") in proc.stdout
    ids = output_ids(str(tmp_path / "demo"))
    media = sorted(p for p in (ROOT / "demo" / "media").iterdir() if p.is_file())
    assert sorted(ids) == sorted(p.name for p in media)  # ids are relative to the input folder
    assert "too_long" not in proc.stdout  # the default context fits every bundled image and video
    # Progress moves on a job this small: rows are counted as they arrive, not 0/N then "done".
    steps = {int(k) for k in re.findall(rf"^\[caption\] (\d+)/{len(media)} ", proc.stdout, re.MULTILINE)}
    assert steps & set(range(1, len(media))), proc.stdout
    # Quiet by default: no Ray Data progress blocks off a terminal, no start-up chatter.
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr


def test_interrupted_job_resumes_without_duplicates_and_config_change_is_refused(tiny_mllama_dir, tmp_path):
    n = 160  # enough work that the first part file lands well before the end
    data = images_parquet(tmp_path / "in", n, files=20)  # many shards: output streams back shard by shard
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"model: {tiny_mllama_dir}\ninput: {data}\noutput: {out}\nmax_new_tokens: 16\n"
                   "max_model_len: 512\nbatch_size: 4\nrows_per_file: 4\nprogress_interval_s: 1\n"
                   # still running when the first part lands, however fast the machine (else the SIGINT could
                   # arrive as the job ends, and it would exit 0)
                   "fault_injection: {generate_delay_s: 0.1}\n")
    cmd = [sys.executable, str(CAPTION), "--config", str(cfg)]
    log = tmp_path / "first.stderr"  # a file, not a pipe: a full pipe would block the job
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if any(p.name.startswith("part-") for p in out.glob("part-*")):
            break
        time.sleep(0.2)
    killed = first.poll() is None
    if killed:
        os.kill(first.pid, signal.SIGINT)  # Ctrl-C: rows received so far are committed, exit status 130
        try:
            first.wait(timeout=90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)  # whatever of its local Ray outlived it
        err = log.read_text()
        assert first.returncode == 130, err[-3000:]
        assert "rows are saved in" in err and "re-run the same command to resume" in err
        assert "Traceback" not in err, err[-3000:]
    partial = output_ids(str(out))
    assert partial, "no part file was committed before the interrupt"
    if killed:
        assert len(partial) < n and f"interrupted: {len(partial)} rows are saved" in err

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = output_ids(str(out))
    assert sorted(ids) == [f"r{i:03d}" for i in range(n)]  # all rows, none twice
    assert f"skipped (already written) {len(partial)}" in proc.stdout

    parts = sorted(p.name for p in out.glob("part-*"))
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)  # a finished job, re-run
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"nothing to do: all {n} input rows are already in" in again.stdout  # said without starting Ray
    assert sorted(p.name for p in out.glob("part-*")) == parts  # nothing new written

    refused = run_cli("--config", str(cfg), "--prompt", "Something else entirely.")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "--prompt: " in refused.stderr
    redo = run_cli("--config", str(cfg), "--prompt", "Something else entirely.", "--overwrite", "--limit", "8")
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert len(output_ids(str(out))) == 8


def test_s3_in_and_out(tiny_mllama_dir, tmp_path, moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_s3["AWS_ENDPOINT_URL"])
    fs.mkdir("bucket")
    fs.put(str(images_parquet(tmp_path / "in.parquet", 12)), "bucket/in/data.parquet")
    fs.put(str(tiny_mllama_dir), "bucket/ckpt/tiny-mllama", recursive=True)  # the model comes from S3 too
    cache = tmp_path / "model-cache"
    proc = run_cli("--model", "s3://bucket/ckpt/tiny-mllama", "--input", "s3://bucket/in/", "--output",
                   "s3://bucket/out", "--max-new-tokens", "4", "--batch-size", "4",
                   env={**moto_s3, "VLMCAP_MODEL_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (copy,) = cache.iterdir()  # one local copy on this node, weights included, shared by all its actors
    assert sorted(p.name for p in copy.glob("*.safetensors")) == sorted(
        p.name for p in tiny_mllama_dir.glob("*.safetensors"))
    assert "testing" not in proc.stdout + proc.stderr  # credentials are never logged
    fs.invalidate_cache()
    parts = [p for p in fs.ls("bucket/out") if p.rsplit("/", 1)[-1].startswith("part-")]
    assert parts
    tables = [pq.read_table(io.BytesIO(fs.cat(p))) for p in parts]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert sorted(ids) == [f"r{i:03d}" for i in range(12)]
    assert all(e is None for t in tables for e in t.column("error").to_pylist())
    assert {m for t in tables for m in t.column("model").to_pylist()} == {"tiny-mllama"}
    # Resume state per input file: Ray's S3 paths map to the same unit the driver planned (parts named by it)
    (record,) = fs.ls("bucket/out/_vlmcap_done")
    assert record.rsplit("/", 1)[-1].endswith("-12.json") and all("/part-u" in p for p in parts)



class FlakyS3Proxy:
    """Forwards every request to the moto server but answers a seeded `rate` of them with S3's own
    "503 SlowDown" (RELIABILITY.md: planning-time reads on the driver failed at 50%)."""

    def __init__(self, upstream: str, rate: float, seed: int = 0):
        import http.client
        import http.server
        import random
        import threading
        import urllib.parse

        target = urllib.parse.urlsplit(upstream)
        rng, lock, proxy = random.Random(seed), threading.Lock(), self
        self.requests = self.refused = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                with lock:
                    proxy.requests += 1
                    refuse = rng.random() < rate
                    proxy.refused += refuse
                if refuse:
                    msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                # a HEAD answer has no body but states the object's size
                size = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815 - http.server's naming

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_s3_with_injected_503s_is_exact(tiny_mllama_dir, tmp_path, moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_s3["AWS_ENDPOINT_URL"])
    fs.mkdir("flaky")
    for f in sorted(images_parquet(tmp_path / "in", 18, files=3).iterdir()):
        fs.put(str(f), f"flaky/in/{f.name}")
    proxy = FlakyS3Proxy(moto_s3["AWS_ENDPOINT_URL"], rate=0.2)
    try:
        proc = run_cli("--model", str(tiny_mllama_dir), "--input", "s3://flaky/in/", "--output", "s3://flaky/out",
                       "--max-new-tokens", "4", "--max-model-len", "512", "--batch-size", "4",
                       env={**moto_s3, "AWS_ENDPOINT_URL": proxy.url})
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proxy.refused > 0
    fs.invalidate_cache()
    parts = [p for p in fs.ls("flaky/out") if p.rsplit("/", 1)[-1].startswith("part-")]
    ids = [i for p in parts for i in pq.read_table(io.BytesIO(fs.cat(p))).column("id").to_pylist()]
    assert sorted(ids) == [f"r{i:03d}" for i in range(18)]  # every row once, none lost to a 503


NOT_YET = ("No available agent", "Failed to connect to Ray at address")


@pytest.mark.cluster
def test_ray_start_head_and_job_submit(tiny_mllama_dir, tmp_path):
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, dash, client, metrics = free_port(), free_port(), free_port(), free_port()
    # Ray >= 2.5x clusters started by `ray start` require a token: give the cluster and the client the same one.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    temp = Path("/tmp") / f"rt{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    log = tmp_path / "ray_start.log"
    # `--block` keeps every process of this cluster in a process group of its own, so teardown stops exactly
    # this cluster: `ray stop` would kill every Ray process on the machine, other people's included.
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
                             f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}", "--num-cpus=2",
                             "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats"],
                            stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    job_id = f"caption-test-{os.getpid()}"
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        data = images_parquet(tmp_path / "in.parquet", 6)
        for attempt in range(30):
            # The head prints "started" before its job agent can take jobs (CI once failed with "No available
            # agent to submit job") and, on a loaded machine, before its dashboard answers (CI once failed with
            # "Failed to connect to Ray at address"): both mean "not yet", so ask again.
            job_id = f"caption-test-{os.getpid()}-{attempt}"
            submit = subprocess.run(
                [str(ray_bin), "job", "submit", "--address", address, "--submission-id", job_id,
                 "--working-dir", str(ROOT), "--runtime-env-json",
                 # Every dot-directory (.venv, .git, caches, local wheels) stays home: the upload is only the code.
                 json.dumps({"excludes": [".?*", "demo/model", "*.egg-info", "__pycache__", "caption_demo_output"]}),
                 "--",
                 sys.executable, "jobs/caption.py", "--model", str(tiny_mllama_dir), "--input", str(data),
                 "--output", str(tmp_path / "out"), "--max-new-tokens", "4", "--max-model-len", "512"],
                capture_output=True, text=True, timeout=400, env=env)
            if not any(m in submit.stdout + submit.stderr for m in NOT_YET):
                break
            time.sleep(2)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        assert "is very large" not in submit.stdout + submit.stderr  # nothing big was uploaded
        assert "succeeded" in submit.stdout.lower()
        assert "[caption] done: 6 rows" in submit.stdout  # the driver's summary, as `ray job logs` shows it
        assert sorted(output_ids(str(tmp_path / "out"))) == [f"r{i:03d}" for i in range(6)]
        # The stages' ray.util.metrics reach the node's Prometheus endpoint (what the dashboard reads).
        scraped = scrape_until(f"http://127.0.0.1:{metrics}/metrics", "vlmcap_rows", timeout_s=90)
        lines = [line for line in scraped.splitlines() if "vlmcap_rows" in line and not line.startswith("#")]
        rows = {line.split('stage="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in lines if 'stage="' in line}
        assert rows.get("preprocess") == 6 and rows.get("generate") == 6, lines
    finally:
        if head.poll() is None:
            subprocess.run([str(ray_bin), "job", "stop", "--address", address, job_id], capture_output=True,
                           timeout=60, env=env)  # a no-op once the job has finished
            os.killpg(head.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of this cluster's group outlived the SIGTERM
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_unusable_model_fails_fast_with_a_clear_message(tmp_path):
    # Refused on the driver with a clear message, before any actor starts (a GPU actor constructor that
    # raises would fail the job with a long traceback; one whose process dies would hang it).
    missing = run_cli("--model", str(tmp_path / "nope"), "--input", str(ROOT / "demo" / "media"),
                      "--output", str(tmp_path / "out"))
    assert missing.returncode == 2 and "cannot use --model" in missing.stderr


def test_gpu_actor_dying_while_starting_fails_the_job_in_bounded_time(tiny_mllama_dir, tmp_path):
    """RELIABILITY.md: a process death inside an actor's constructor is retried forever by Ray; without the
    stall watchdog this job never ends."""
    data = images_parquet(tmp_path / "in.parquet", 4)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({"model": str(tiny_mllama_dir), "input": str(data), "output": str(tmp_path / "out"),
                               "max_new_tokens": 4, "max_model_len": 512, "stall_timeout_s": 20,
                               "fault_injection": {"gpu_init_exit": True}}))  # JSON is YAML
    t0 = time.monotonic()
    proc = run_cli("--config", str(cfg), timeout=240)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "no output row for 20 s: the job is stuck" in proc.stderr
    assert time.monotonic() - t0 < 200
