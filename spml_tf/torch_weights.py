"""torchvision's ResNet-50 weights for the Keras network of resnet.py: read a `.pth` without torch, safely.

A `.pth` is what `torch.save(model.state_dict(), path)` writes, in one of two
formats: a zip archive (torch >= 1.6: `<name>/data.pkl` and one file per
storage under `<name>/data/`) or the legacy stream (torch < 1.6, or
`_use_new_zipfile_serialization=False`: pickles of a magic number, a protocol
version and system info, then the state dict, then the storage keys, then
each storage's element count and bytes). Either way the state dict itself is
a pickle, and unpickling runs whatever callables the file names. Here the
unpickler accepts only what a plain tensor state dict uses (an OrderedDict,
torch's tensor rebuild function, the storage types), builds every tensor as a
NumPy array from the little-endian storage bytes, and refuses anything else
with a DataError naming it. torch is never imported.

`load_into(backbone, state)` copies a state dict into resnet.resnet50(),
checking that every tensor is there with the shape the network needs.
"""

import collections
import io
import pickle
import zipfile

import numpy as np

from spml_tf.errors import DataError

# torch's storage types, by the names a pickle refers to them with, and the element type of each.
_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """What `torch.<Name>Storage` unpickles to here: just the element type."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage's flat elements (a 1-D NumPy array; in the legacy format, filled in after the pickle)."""

    def __init__(self, array):
        self.array = array


class _Tensor:
    """A tensor as its pickle describes it; made an array once its storage's bytes are read (`array()`)."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage, self.offset = storage, int(storage_offset)
        self.size, self.stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
        if len(self.size) != len(self.stride) or self.offset < 0 or any(n < 0 for n in self.size + self.stride):
            raise pickle.UnpicklingError(f"a tensor of size {self.size} and stride {self.stride}")

    def array(self):
        """The strided view of the storage, copied."""
        flat = self.storage.array
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else -1
        if last >= len(flat):
            raise ValueError(f"a tensor of size {self.size} reaches past its storage of {len(flat)} elements")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=[n * flat.itemsize for n in self.stride], writeable=False)
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """What torch._utils._rebuild_tensor_v2 unpickles to here (the legacy format's bytes come after the pickle)."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _Tensor(storage, storage_offset, size, stride)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
}


class _Unpickler(pickle.Unpickler):
    """Unpickles a tensor state dict, and nothing else: any other global is refused."""

    def __init__(self, stream, storage):
        super().__init__(stream)
        self._storage = storage  # (persistent id tuple) -> _Storage

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a plain tensor state dict does not hold "
                                     "(refused: unpickling it could run code)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"an unknown persistent object {pid!r:.80}")
        return self._storage(pid)


def read_state_dict(path):
    """{name: np.ndarray} of a `.pth` state dict in either torch.save format; DataError if it is anything else."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            state = _read_zip(data)
        else:
            state = _read_legacy(data)
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor)
                                                  for k, v in state.items()):
            raise ValueError(f"it holds a {type(state).__name__}, not a dict of names to tensors")
        return {name: tensor.array() for name, tensor in state.items()}
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError,
            zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a plain PyTorch state dict: {error}") from None


def _dtype(storage_type, little_endian=True):
    if storage_type.dtype == "bf16":
        raise ValueError("bfloat16 tensors are not supported; save the state dict in float32")
    return np.dtype(("<" if little_endian else ">") + storage_type.dtype)


def _read_zip(data):
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
    if len(pickles) != 1:
        raise ValueError(f"a zip archive without one data.pkl ({len(pickles)} found)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    little = archive.read(byteorder).decode().strip() != "big" if byteorder in names else True
    loaded = {}

    def storage(pid):
        _, storage_type, key, _location, numel = pid[:5]
        if key not in loaded:
            raw = archive.read(f"{prefix}data/{key}")
            array = np.frombuffer(raw, dtype=_dtype(storage_type, little))
            if len(array) != numel:
                raise ValueError(f"storage {key} holds {len(array)} elements, its tensor says {numel}")
            loaded[key] = _Storage(array.astype(array.dtype.newbyteorder("=")))
        return loaded[key]

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), storage).load()


def _read_legacy(data):
    stream = io.BytesIO(data)

    def plain(what):  # the header pickles hold numbers and a dict: no global is allowed there at all
        return _Unpickler(stream, lambda pid: (_ for _ in ()).throw(ValueError(f"{what}: a storage"))).load()

    if plain("magic number") != _LEGACY_MAGIC:
        raise ValueError("neither a zip archive nor torch's legacy format (no magic number)")
    if plain("protocol") != _LEGACY_PROTOCOL:
        raise ValueError("an unknown legacy protocol version")
    system = plain("system info")
    little = bool(system.get("little_endian", True)) if isinstance(system, dict) else True
    storages = {}  # key -> (dtype, numel, _Storage once read)

    def storage(pid):
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError("storage views (torch < 1.0 files) are not supported")
        storages.setdefault(key, [_dtype(storage_type, little), int(numel), _Storage(None)])
        return storages[key][2]

    state = _Unpickler(stream, storage).load()
    keys = plain("storage keys")
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ValueError("the storage list does not match the tensors")
    for key in keys:
        dtype, numel, holder = storages[key]
        count = int(np.frombuffer(stream.read(8), "<i8")[0])
        raw = stream.read(count * dtype.itemsize)
        if count != numel or len(raw) != count * dtype.itemsize:
            raise ValueError(f"storage {key} is cut short or of the wrong size")
        holder.array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
    return state


# Entries of torchvision's resnet50 state dict that the backbone has no use for: the ImageNet classifier and
# BatchNorm's step counters.
_UNUSED = ("fc.weight", "fc.bias")
_COUNTER = ".num_batches_tracked"


def backbone_arrays(backbone, state, source):
    """The backbone's weights (a list in `backbone.get_weights()` order) taken from a torchvision state dict.

    Conv2D kernels are transposed from torch's (out, in, h, w) to Keras's
    (h, w, in, out); BatchNorm's weight, bias, running_mean and running_var
    become gamma, beta, moving_mean and moving_variance. DataError naming the
    entry when one is missing, has the wrong shape, or is not the network's.
    """
    import keras

    used, arrays = set(), []

    def take(key, shape, convert=lambda array: array):
        if key not in state:
            raise DataError(f"{source} has no {key!r}: it is not a torchvision ResNet-50 state dict")
        array = convert(np.asarray(state[key], np.float32))
        if tuple(array.shape) != tuple(shape):
            raise DataError(f"{source}: {key!r} has shape {tuple(np.asarray(state[key]).shape)}, which does not fit "
                            "the network (it is not a torchvision ResNet-50 state dict)")
        used.add(key)
        return array

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            arrays.append(take(f"{layer.name}.weight", layer.kernel.shape, lambda a: a.transpose(2, 3, 1, 0)))
        elif isinstance(layer, keras.layers.BatchNormalization):
            for name, variable in zip(("weight", "bias", "running_mean", "running_var"),
                                      (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)):
                arrays.append(take(f"{layer.name}.{name}", variable.shape))
        elif layer.weights:
            raise ValueError(f"layer {layer.name} has weights torch_weights does not know")
    extra = sorted(key for key in state if key not in used and key not in _UNUSED and not key.endswith(_COUNTER))
    if extra:
        raise DataError(f"{source} holds {len(extra)} tensor(s) the network does not have ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}): it is not a torchvision ResNet-50 state dict")
    return arrays
