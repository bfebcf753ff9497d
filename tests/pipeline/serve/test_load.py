"""Issue 14's bounded load test: 300 requests (text-only and small images, small max_tokens) from 16 client
threads against the tiny OneVision behind a real uvicorn all succeed with well-formed answers; throughput
and p50/p99 latency are printed, never asserted (pipeline/serve/loadgen.py does the work). Also: the
generator's CLI, and that its answer check catches what it should."""

from __future__ import annotations

from pipeline.serve import loadgen

REQUESTS, CLIENTS = 300, 16


def test_bounded_load_has_no_errors(ov_server, ov_service, kit, monkeypatch, capsys):
    monkeypatch.setattr(ov_service, "max_pending", CLIENTS)  # 4 slots, 16 clients: queue rather than 429
    bodies = loadgen.default_bodies(ov_service.model_name, REQUESTS, max_tokens=8, image_every=2)
    report = loadgen.run(ov_server.url, bodies, CLIENTS, timeout_s=60)
    with capsys.disabled():
        print(f"\n[load test: tiny OneVision, CPU float32, 4 engine slots]\n{report.summary()}")
    assert report.errors == [] and report.ok == REQUESTS
    assert report.completion_tokens >= REQUESTS
    kit.wait_until(lambda: ov_service.engine.running_count() == 0 and ov_service.pending == 0, "an idle engine")


def test_cli_against_the_server(ov_server, capsys):
    assert loadgen.main(["--url", ov_server.url, "--requests", "6", "--concurrency", "2", "--max-tokens", "3"]) == 0
    assert "6 requests, concurrency 2: 6 ok, 0 errors" in capsys.readouterr().out


def test_check_response_flags_bad_answers():
    request = {"model": "m", "max_tokens": 4, "messages": []}
    good = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    assert loadgen.check_response(200, good, request) is None
    assert loadgen.check_response(429, {"error": {"message": "busy"}}, request) == "HTTP 429: busy"
    bad_usage = {**good, "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
    assert "outside" in loadgen.check_response(200, bad_usage, request)
    early = {**good, "choices": [{**good["choices"][0], "finish_reason": "length"}]}
    assert "'length' after 2 of 4" in loadgen.check_response(200, early, request)
    assert "choices" in loadgen.check_response(200, {**good, "choices": []}, request)
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0 and loadgen.percentile([1.0, 2.0], 99) == 2.0
