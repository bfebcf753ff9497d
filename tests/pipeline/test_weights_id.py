"""pipeline/weights_id.py: equal weights give equal identities, any sampled change another; nothing to read
gives None."""

import torch
from safetensors.torch import save_file

from pipeline.weights_id import weights_identity


def test_identity_follows_the_weights(tmp_path):
    save_file({"a": torch.zeros(300, 300), "b": torch.zeros(7)}, tmp_path / "model.safetensors")
    first = weights_identity(str(tmp_path))
    assert first == weights_identity(f"file://{tmp_path}") and len(first) == 16
    save_file({"a": torch.zeros(300, 300), "b": torch.full((7,), 0.5)}, tmp_path / "model.safetensors")
    assert weights_identity(str(tmp_path)) != first  # the last tensor's bytes: the last sample reads them
    assert weights_identity(str(tmp_path), random_weights=True) is None
    assert weights_identity("s3://bucket/model") is None
    assert weights_identity(str(tmp_path / "empty")) is None
