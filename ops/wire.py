"""The byte format of rank-to-rank control messages (`ParallelContext.broadcast_object`).

Messages are plain Python values, our own dataclasses (requests, media, sampling parameters) and CPU
tensors / numpy arrays. They are pickled, but never unpickled with the default machinery: tensors and
arrays travel as (dtype, shape, raw bytes) out of band (`persistent_id`), so no `torch.load` runs on the
receiving rank, and `find_class` admits only builtin containers, torch dtypes and classes from this
project's own packages; any other global (a function, `os.system`, torch's storage loaders) is refused.
"""

from __future__ import annotations

import builtins
import io
import pickle
from typing import Any

import numpy as np
import torch

PACKAGES = ("models", "ops", "pipeline")
BUILTINS = frozenset({"list", "dict", "tuple", "set", "frozenset", "slice", "range", "complex", "bytearray",
                      "bytes", "str", "int", "float", "bool", "object"})


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").contiguous()
            raw = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            return ("tensor", str(t.dtype).removeprefix("torch."), tuple(t.shape), raw)
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise TypeError("numpy arrays of Python objects cannot travel between ranks")
            return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes())
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: tuple):
        kind, dtype, shape, raw = pid
        if kind == "ndarray":
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        if kind == "tensor":
            dt = getattr(torch, dtype)
            if not isinstance(dt, torch.dtype):
                raise pickle.UnpicklingError(f"not a torch dtype: {dtype}")
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            return flat.view(dt).reshape(shape)
        raise pickle.UnpicklingError(f"unknown out-of-band object {kind!r}")

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "collections" and name in ("OrderedDict", "deque"):
            return super().find_class(module, name)
        if module.split(".", 1)[0] in PACKAGES:
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a rank message")


def encode(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def decode(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()
