"""jobs/serve.py: `serve run`-style key=value options map onto the CLI flags; and the one Ray Serve test: the
app builder's deployment on a local Ray cluster answers over Serve's HTTP proxy with the same text as the
in-process app (the same engine code behind Serve's own ingress)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs import serve as serve_job
from pipeline.serve.service import ServeConfig, engine_placement
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_serve_run_options_become_flags(tiny_ov_dir):
    argv = serve_job._argv_from_dict({"model": "/m", "tp": 2, "allow-http": "true", "no_cuda_graphs": "false",
                                      "max_model_len": 4096, "engine-process": "true"})
    assert argv == ["--model", "/m", "--tp", "2", "--allow-http", "--max-model-len", "4096", "--engine-process"]
    config = serve_job.config_from_args(serve_job.parser().parse_args(argv + ["--api-key", "k", "--step-trace", "/t"]))
    assert (config.tp, config.media.allow_http, config.cuda_graphs, config.max_model_len, config.api_key,
            config.step_trace) == (2, True, True, 4096, "k", "/t")
    assert config.engine_process
    default = serve_job.config_from_args(serve_job.parser().parse_args(["--model", "/m"]))
    assert (default.engine_process, default.stage_vision_images) == (None, None)  # the replica decides
    assert serve_job._argv_from_dict({"engine_process": "false"}) == ["--no-engine-process"]
    with pytest.raises(ValueError, match="unknown option 'modle'"):
        serve_job._argv_from_dict({"modle": "/m"})


def test_cli_refuses_a_directory_without_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        serve_job.main(["--model", str(tmp_path)])
    assert info.value.code == 2 and "no config.json" in capsys.readouterr().err


def test_cli_refuses_staged_vision_for_onevision(tiny_ov_dir, capsys):
    with pytest.raises(SystemExit) as info:
        serve_job.main(["--model", str(tiny_ov_dir), "--stage-vision-images", "2"])
    assert info.value.code == 2 and "--stage-vision-images needs an Mllama model" in capsys.readouterr().err



def test_ray_serve_deployment_answers_like_the_in_process_app(tiny_ov_dir, http, ov_service, kit):
    import httpx
    import ray
    from ray import serve

    body = {"model": ov_service.model_name, "max_tokens": 8, "messages": kit.image_message("Hi?", kit.png(seed=6))}
    want = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = serve_job.app({"model": str(tiny_ov_dir), "max-model-len": kit.MAX_LEN, "max-num-seqs": 2,
                             "dtype": "float32", "no-cuda-graphs": "true", "api-key": "k"})
        serve.run(app, name="vlmcap", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            assert client.get("/health").json() == {"status": "ok"}
            assert client.post("/v1/chat/completions", json=body).status_code == 401
            r = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want
    finally:
        serve.shutdown()
        ray.shutdown()


def test_engine_placement_defaults_follow_the_hardware():
    mllama, ov = "MllamaForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"
    default = ServeConfig(model="/m")
    assert engine_placement(default, mllama, gpu=True) == (True, 4)  # process + staged vision on a GPU
    assert engine_placement(default, mllama, gpu=False) == (False, 0)  # a thread, unstaged, on a CPU
    assert engine_placement(default, ov, gpu=True) == (True, 0)  # OneVision has no staging
    assert engine_placement(ServeConfig(model="/m", tp=2), mllama, gpu=True) == (False, 0)
    assert engine_placement(ServeConfig(model="/m", max_decode_stall_ms=None), mllama, gpu=True) == (True, 0)
    explicit = ServeConfig(model="/m", engine_process=False, stage_vision_images=1)
    assert engine_placement(explicit, mllama, gpu=True) == (False, 1)
    assert engine_placement(ServeConfig(model="/m", stage_vision_images=0), mllama, gpu=True) == (True, 0)
