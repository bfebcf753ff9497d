"""pipeline/serve/engine_process.py: the endpoint with its engine in a process of its own answers exactly as with
the engine thread (greedy and seeded, streamed and whole), a dropped stream frees its slot in the child, and a
dead engine process fails requests and the health check instead of hanging them."""

from __future__ import annotations

import pytest

from pipeline.serve.app import build_app
from pipeline.serve.service import ChatService


@pytest.fixture(scope="module")
def process_server(tiny_ov_dir, kit):
    service = ChatService(kit.serve_config(tiny_ov_dir, engine_process=True))
    server = kit.LocalServer(build_app(service))
    yield service, server
    server.stop()
    service.shutdown()


def answers(url: str, model: str, kit) -> dict:
    import httpx

    messages = kit.image_message("What is in this image?", kit.png(seed=3))
    base = {"model": model, "messages": messages, "max_tokens": 12}
    seeded = {**base, "n": 2, "temperature": 1.0, "seed": 7}
    with httpx.Client(base_url=url, timeout=120) as http:
        whole = [http.post("/v1/chat/completions", json=body).json() for body in (base, seeded)]
        with http.stream("POST", "/v1/chat/completions", json={**base, "stream": True}) as r:
            chunks = kit.sse_events(r.iter_lines())[:-1]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return {"greedy": [c["message"]["content"] for c in whole[0]["choices"]], "usage": whole[0]["usage"],
            "seeded": [c["message"]["content"] for c in whole[1]["choices"]], "streamed": streamed}


def test_the_engine_process_answers_as_the_engine_thread(process_server, ov_service, ov_server, kit):
    service, server = process_server
    got = answers(server.url, service.model_name, kit)
    assert got == answers(ov_server.url, ov_service.model_name, kit)
    assert got["streamed"] == got["greedy"][0] and got["greedy"][0]
    assert service.engine.slots() == ov_service.engine.slots()


def test_a_dropped_stream_frees_its_slot_in_the_engine_process(process_server, kit):
    import httpx

    service, server = process_server
    body = {"model": service.model_name, "messages": kit.image_message("Tell me everything.", kit.png(seed=9)),
            "stream": True, "max_tokens": 800}
    with httpx.Client(base_url=server.url, timeout=60) as http, http.stream("POST", "/v1/chat/completions",
                                                                            json=body) as r:
        assert any(line.startswith("data: ") for line in r.iter_lines())
        kit.wait_until(lambda: service.engine.running_count() == 1, "the request to run")
    kit.wait_until(lambda: service.engine.running_count() == 0 and service.pending == 0, "the slot to free")
    assert service.engine.stats["generated_tokens"] < 800 + 12 * 4  # cancelled, not run to its end


def test_a_dead_engine_process_fails_requests_and_health(tiny_ov_dir, kit):
    import httpx

    service = ChatService(kit.serve_config(tiny_ov_dir, engine_process=True))
    server = kit.LocalServer(build_app(service))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/health").status_code == 200
            service.engine.driver.process.kill()
            kit.wait_until(lambda: not service.engine.alive(), "the engine to be seen dead")
            assert http.get("/health").status_code == 503
            r = http.post("/v1/chat/completions", json={"model": service.model_name, "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error", r.text
    finally:
        server.stop()
        service.shutdown()
