"""The online endpoint: an OpenAI-compatible `/v1/chat/completions` over the same engine as the batch job.

- `schemas.py`: request validation (pydantic) and the OpenAI response / chunk / error shapes.
- `messages.py`: OpenAI messages -> the chat-template messages plus the media bytes (data: URLs, optionally
  http(s) through the bounded fetcher or files under one allowed directory), with typed 400s.
- `stream_engine.py`: per-token streaming and cancellation around the batch job's `EngineThread`.
- `service.py`: one replica's state (codec, engine thread, admission control, request log).
- `completions.py`: one request -> its `chat.completion` body or its SSE chunks. `metrics.py`: Ray metrics.
- `app.py`: the FastAPI app (routes, auth, SSE). `deployment.py`: the Ray Serve deployment and app builder.
Never imports transformers; `jobs/serve.py` is the entry point.
"""
