"""Writes a state dict in torch.save's zip format without torch, for tests that need a full-size ResNet-50 `.pth`
(98 MB: too large to commit). torch_weights reads files torch itself wrote in both formats
(tests/test_torch_weights.py); this writer makes the same layout: `archive/data.pkl`, whose tensors refer to
`torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`, and one file per storage under `archive/data/`."""

import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np


@contextlib.contextmanager
def _torch_names():
    """Stand-ins named torch.FloatStorage / torch.LongStorage / torch._utils._rebuild_tensor_v2, so that pickle
    writes references to them; removed afterwards (torch itself is never needed)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in ("FloatStorage", "LongStorage"):
        storage_type = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_type)
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Tensor:
    def __init__(self, key, array, torch):
        self.key, self.array, self.torch = key, array, torch

    def __reduce__(self):
        strides = tuple(s // self.array.itemsize for s in self.array.strides)
        return (self.torch._utils._rebuild_tensor_v2,
                (_Storage(self.key, self.array, self.torch), 0, self.array.shape, strides, False,
                 collections.OrderedDict()))


class _Storage:
    def __init__(self, key, array, torch):
        self.key, self.array, self.torch = key, array, torch


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            torch = self.torch_module
            storage_type = torch.LongStorage if obj.array.dtype == np.int64 else torch.FloatStorage
            return ("storage", storage_type, obj.key, "cpu", obj.array.size)
        return None


def write_state_dict(path, state):
    """Writes {name: float32 / int64 array} as torch.save(state_dict, path) would (zip format)."""
    arrays = {name: np.array(array, order="C") for name, array in state.items()}  # 0-d stays 0-d
    with _torch_names() as torch:
        buffer = io.BytesIO()
        pickler = _Pickler(buffer, protocol=2)
        pickler.torch_module = torch
        pickler.dump(collections.OrderedDict(
            (name, _Tensor(str(i), array, torch)) for i, (name, array) in enumerate(arrays.items())))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for i, array in enumerate(arrays.values()):
            archive.writestr(f"archive/data/{i}", array.astype(array.dtype.newbyteorder("<")).tobytes())
        archive.writestr("archive/version", "3\n")
