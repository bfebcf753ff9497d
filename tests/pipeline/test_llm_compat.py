"""`pipeline.llm_compat`: Ray's documented `ray.data.llm` multimodal example, with only the import and the
config class changed, runs on the tiny OneVision checkpoint; its texts equal the engine's on the same
inputs with per-row sampling params; config and sampling translations refuse what they cannot honour.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import ray
from PIL import Image

from ops.sampling import SamplingParams
from pipeline.engine.builder import build_engine
from pipeline.engine.config import EngineConfig
from pipeline.engine.request import Request
from pipeline.job_config import JobConfig
from pipeline.llm_compat import build_processor, sampling_from_dict, vLLMEngineProcessorConfig
from pipeline.media_codec import codec_for

pytestmark = pytest.mark.usefixtures("local_ray")


def jpeg(h: int, w: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def tiny_config(model) -> vLLMEngineProcessorConfig:
    """The config of Ray's vision example, pointed at the tiny checkpoint and sized for a CPU."""
    return vLLMEngineProcessorConfig(
        model_source=str(model),
        engine_kwargs=dict(tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=2048,
                           enable_chunked_prefill=True, max_num_batched_tokens=2048, max_num_seqs=8),
        runtime_env=dict(env_vars=dict(VLLM_USE_V1="1")),
        batch_size=4,
        accelerator_type="L4",
        concurrency=1,
        has_image=True,
    )


def test_rays_vision_example_shape_runs(tiny_ov_dir, watched):
    rows = [{"id": i, "question": f"What is in picture {i}?", "image": {"bytes": jpeg(40 + 10 * i, 60, seed=i)}}
            for i in range(3)]
    rows.append({"id": 3, "question": "And this one?", "image": {"bytes": b"<html>not an image</html>"}})

    def vision_preprocess(row: dict) -> dict:
        image = row["image"]["bytes"]
        # Ray's two documented spellings: a PIL image in an `image` part, or an `image_url` data URL.
        url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
        part = ({"type": "image", "image": Image.open(io.BytesIO(image))} if row["id"] % 2 == 0 else
                {"type": "image_url", "image_url": {"url": url}})
        return dict(
            messages=[
                {"role": "system", "content": "Analyze the image and answer the question."},
                {"role": "user", "content": [{"type": "text", "text": row["question"]}, part]},
            ],
            sampling_params=dict(temperature=0.3, max_tokens=5, detokenize=False),
        )

    def vision_postprocess(row: dict) -> dict:
        return dict(resp=row["generated_text"], error=row["error"], n=row["num_generated_tokens"])

    processor = build_processor(tiny_config(tiny_ov_dir), preprocess=vision_preprocess,
                                postprocess=vision_postprocess)
    out = watched(lambda: processor(ray.data.from_items(rows)).take_all())
    assert len(out) == 4 and all(set(r) == {"resp", "error", "n"} for r in out)
    good = [r for r in out if r["error"] is None]
    assert len(good) == 3 and all(isinstance(r["resp"], str) and 1 <= r["n"] <= 5 for r in good)
    (bad,) = [r for r in out if r["error"] is not None]
    assert bad["error"].startswith("decode_error") and bad["resp"] == "" and bad["n"] == 0


def engine_result(model, image: bytes, prompt: str, max_tokens: int):
    """The engine on the `--prompt` convention (one user turn: the image, then the text), without Ray."""
    config = JobConfig(model=str(model), input="-", output="-", prompt=prompt, max_model_len=2048)
    codec = codec_for(model, config)
    ids, blob = codec.prepare({"image": image})
    engine = build_engine(model, EngineConfig(max_num_seqs=8, max_model_len=2048, dtype="float32",
                                              cuda_graphs=False), device="cpu")
    (c,) = engine.generate([Request("x", ids, codec.unpack({"media": [blob]}, 0),
                                    SamplingParams(max_new_tokens=max_tokens))])
    return c.text, len(ids), c.num_generated_tokens


def test_texts_equal_engine_with_per_row_sampling(tiny_ov_dir, watched):
    images = [jpeg(50, 70, seed=20), jpeg(90, 40, seed=21)]
    rows = [{"k": i, "url": "data:image/jpeg;base64," + base64.b64encode(b).decode(), "max_tokens": 2 + 4 * i}
            for i, b in enumerate(images)]

    def preprocess(row: dict) -> dict:
        return dict(k=row["k"], messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": row["url"]}}, {"type": "text", "text": "Describe it."}]}],
            sampling_params=dict(max_tokens=row["max_tokens"], temperature=0.0, top_k=-1, ignore_eos=True))

    out = watched(lambda: build_processor(tiny_config(tiny_ov_dir), preprocess=preprocess)(
        ray.data.from_items(rows)).take_all())
    by_k = {r["k"]: r for r in out}
    for i, image in enumerate(images):
        text, n_prompt, n_gen = engine_result(tiny_ov_dir, image, "Describe it.", 2 + 4 * i)
        r = by_k[i]
        assert r["error"] is None, r["error"]
        assert r["generated_text"] == r["text"] == text
        assert r["num_input_tokens"] == n_prompt and r["num_generated_tokens"] == n_gen == 2 + 4 * i
        assert r["sampling_params"]["max_tokens"] == 2 + 4 * i  # the preprocess row's columns are kept


def test_sampling_params_translation():
    s = sampling_from_dict(dict(max_tokens=7, temperature=0.5, top_p=0.9, top_k=-1, seed=3, stop="\n",
                                detokenize=False, n=1), default_max_tokens=99)
    assert s == SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, top_k=0, seed=3, stop=("\n",))
    assert sampling_from_dict(None, default_max_tokens=99) == SamplingParams(max_new_tokens=99)
    for bad in (dict(n=2), dict(presence_penalty=0.5), dict(logprobs=5), dict(best_of=2)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sampling_from_dict(bad, default_max_tokens=8)


def test_config_translation_and_refusals(tiny_ov_dir):
    job = vLLMEngineProcessorConfig(model_source="m", batch_size=16, concurrency=(1, 3), max_concurrent_batches=4,
                                    engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 4096,
                                                   "enforce_eager": True, "dtype": "auto"}).job_config()
    assert (job.tp, job.replicas, job.batch_size, job.batches_in_flight, job.max_model_len, job.cuda_graphs,
            job.dtype, job.messages_column, job.prompt) == (2, 3, 16, 4, 4096, False, "bfloat16", "messages", None)
    with pytest.raises(ValueError, match="unsupported engine_kwargs.*quantization"):
        vLLMEngineProcessorConfig(model_source="m", engine_kwargs={"quantization": "awq"})
    with pytest.raises(ValueError, match="pipeline_parallel_size"):
        vLLMEngineProcessorConfig(model_source="m", engine_kwargs={"pipeline_parallel_size": 2})
    vLLMEngineProcessorConfig(model_source="m", engine_kwargs={"trust_remote_code": False})
    with pytest.raises(ValueError, match="never executed"):
        vLLMEngineProcessorConfig(model_source="m", engine_kwargs={"trust_remote_code": True})
