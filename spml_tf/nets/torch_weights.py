"""torchvision's ResNet-50 weights for the Keras network of resnet.py: read a `.pth` without torch, safely.

A `.pth` is what `torch.save(model.state_dict(), path)` writes: a zip archive
(torch >= 1.6: `<name>/data.pkl` and one file per storage under
`<name>/data/`) or the legacy stream (torch < 1.6, or
`_use_new_zipfile_serialization=False`: pickles of a magic number, a protocol
version, system info, the state dict and the storage keys, then each storage's
element count and bytes). The file is taken as hostile: anything but a plain
tensor state dict is a DataError saying why, and nothing is allocated that the
file does not hold.

- No pickle.Unpickler (and no torch): `_unpickle` runs a pickle on a small
  stack machine over pickletools.genops, with only the opcodes torch's pickles
  use, calling only OrderedDict() and the tensor rebuild function. Its work and
  memory are linear in the pickle: dict keys must be str, persistent ids and
  rebuild arguments are checked by exact type before anything is hashed or
  formatted, untrusted objects are named by type (never repr), and BUILD is
  taken only on an OrderedDict (a module's `_metadata`, dropped).
- A tensor's offset, sizes and strides are ints in [0, 2**48); its elements
  lie inside its storage and are no more than it holds; all tensors together
  take no more bytes than their storages. `expected` ({name: shape}) refuses a
  tensor of another shape before any storage is read.
- Sizes are checked before bytes are read: a zip member must declare its
  storage's size (a compressed one, no more than its tensors use), a legacy
  count must fit in the bytes left. Zip member names must be plain relative.
- No np.lib.stride_tricks: an array is a slice and a reshape when contiguous,
  else a gather through an int64 index whose largest value was checked
  against the storage's length.

`read_backbone_arrays(backbone, path)` gives resnet.resnet50()'s weights from a file (`backbone_arrays` from a dict).
"""

import collections
import io
import math
import pickletools
import struct
import zipfile
import zlib

import numpy as np

from spml_tf.core.errors import DataError

# torch's storage types, by the names a pickle refers to them with, and the element type of each.
_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16", "LongStorage": "i8",
    "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LIMIT = 2 ** 48  # no real tensor's offset, size or stride reaches it; products of them stay within int64
# What torch's pickles of a state dict hold (protocol 2, as torch.save writes; FRAME ... STACK_GLOBAL for 4 and 5).
_OPCODES = set("""PROTO FRAME STOP MARK EMPTY_DICT EMPTY_LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3
    BINUNICODE SHORT_BINUNICODE BININT BININT1 BININT2 LONG1 BINFLOAT NONE NEWTRUE NEWFALSE BINPUT LONG_BINPUT
    MEMOIZE BINGET LONG_BINGET GLOBAL STACK_GLOBAL BINPERSID REDUCE BUILD SETITEM SETITEMS APPEND APPENDS""".split())
_CONSTANTS = {"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple, "NONE": lambda: None,
              "NEWTRUE": lambda: True, "NEWFALSE": lambda: False}


class _Refused(ValueError):
    """Why a file is not a plain state dict."""


def _show(text):  # a str from the file, quoted, at most 60 characters of it (the rest is never formatted)
    return repr(text[:60]) + ("..." if len(text) > 60 else "")


# What `torch.<Name>Storage` unpickles to here: just the element type (None: bfloat16, which NumPy lacks).
_StorageType = collections.namedtuple("_StorageType", "dtype")


class _Storage:
    """A storage as its persistent id declares it; `data`: its bytes once read; `used`: the elements its tensors use."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.used, self.data = key, dtype, numel, 0, None


class _Tensor:
    """What torch._utils._rebuild_tensor_v2 unpickles to here: the layout, checked against the storage's size."""

    def __init__(self, storage, offset, size, stride):
        if type(storage) is not _Storage:
            raise _Refused(f"a tensor whose storage is a {type(storage).__name__}")
        if not (type(offset) is int and type(size) is tuple and type(stride) is tuple and len(size) == len(stride)
                and len(size) <= 32 and all(type(n) is int for n in size + stride)):
            raise _Refused("a tensor whose offset, size or stride is not an int or a tuple of ints of one length")
        if not all(0 <= n < _LIMIT for n in (offset, *size, *stride)) or math.prod(max(n, 1) for n in size) >= _LIMIT:
            raise _Refused("a tensor whose offset, size or stride is negative or 2**48 or more")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.count = math.prod(size)
        self.end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if self.count else offset
        if self.end > storage.numel or self.count > storage.numel:
            raise _Refused(f"a tensor of size {size} and stride {stride} at offset {offset} needs more than the "
                           f"{storage.numel} elements of its storage")

    def array(self):
        """The tensor's elements, copied out of the storage bytes, in native byte order."""
        dtype = self.storage.dtype
        flat = np.frombuffer(self.storage.data, np.uint8 if dtype.kind == "b" else dtype)
        if not self.count:
            return np.zeros(self.size, dtype.newbyteorder("="))
        if all(s == math.prod(self.size[k + 1:]) for k, (n, s) in enumerate(zip(self.size, self.stride)) if n > 1):
            out = flat[self.offset:self.offset + self.count].reshape(self.size)
        else:  # every index is at most offset + sum((n - 1) * stride) < the storage's length, as __init__ checked
            index = np.array(self.offset, np.int64)
            for n, s in zip(self.size, self.stride):
                index = index[..., None] + np.arange(n, dtype=np.int64) * (s if n > 1 else 0)
            out = flat[index]
        return out != 0 if dtype.kind == "b" else out.astype(dtype.newbyteorder("="))


_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict, ("torch._utils", "_rebuild_tensor_v2"): _Tensor,
            **{("torch", name): _StorageType(None if code == "bf16" else np.dtype("<" + code))
               for name, code in _STORAGE_DTYPES.items()}}


def _unpickle(stream, persistent_load, allowed):
    """The object the pickle at `stream` builds, run opcode by opcode; `allowed` are the globals it may name."""
    metastack, stack, memo = [], [], {}

    def pop(count=1):
        if len(stack) < count:
            raise _Refused(f"its pickle is malformed (an opcode finds {len(stack)} of {count} objects)")
        items = stack[-count:]
        del stack[-count:]
        return items

    def pop_mark():
        nonlocal stack
        if not metastack:
            raise _Refused("its pickle is malformed (an opcode finds no MARK)")
        items, stack = stack, metastack.pop()
        return items

    def target(*types):
        if not stack or type(stack[-1]) not in types:
            raise _Refused(f"its pickle changes a {type(stack[-1]).__name__ if stack else 'missing object'}, "
                           "which torch's state dict pickles do not")
        return stack[-1]

    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name not in _OPCODES:
            raise _Refused(f"its pickle uses the opcode {name}, which torch's state dict pickles do not")
        if name == "MARK":
            metastack.append(stack)
            stack = []
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name]())
        elif name.startswith("TUPLE"):
            items = pop_mark() if name == "TUPLE" else pop(int(name[-1]))  # (before `stack.`: pop_mark rebinds it)
            stack.append(tuple(items))
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT"):
            stack.append(arg)
        elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack:
                raise _Refused("its pickle is malformed (it memoizes nothing)")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _Refused(f"its pickle refers to memo entry {arg}, which it never stored")
            stack.append(memo[arg])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, qualname = arg.split(" ", 1) if name == "GLOBAL" else pop(2)
            if type(module) is not str or type(qualname) is not str:
                raise _Refused("its pickle names a global by something other than a str")
            if (module, qualname) not in allowed:
                raise _Refused(f"it names {module[:80]}.{qualname[:80]}, which a plain tensor state dict does not "
                               "hold (refused: unpickling it could run code)")
            stack.append(allowed[(module, qualname)])
        elif name == "BINPERSID":
            stack.append(persistent_load(pop()[0]))
        elif name == "REDUCE":
            function, args = pop(2)
            if type(args) is not tuple:
                raise _Refused(f"its pickle calls a function with a {type(args).__name__} for arguments")
            if function is collections.OrderedDict and not args:
                stack.append(collections.OrderedDict())
            elif function is _Tensor and 4 <= len(args) <= 7:  # requires_grad, hooks, metadata: dropped
                stack.append(_Tensor(*args[:4]))
            else:
                raise _Refused(f"its pickle calls a {type(function).__name__} with {len(args)} arguments")
        elif name == "BUILD":
            pop()  # the state of an OrderedDict: a module's _metadata (versions), not a tensor
            target(collections.OrderedDict)
        elif name in ("SETITEM", "SETITEMS"):
            items = pop(2) if name == "SETITEM" else pop_mark()
            into = target(dict, collections.OrderedDict)
            if len(items) % 2 or not all(type(key) is str for key in items[::2]):
                raise _Refused("its pickle makes a dict whose keys are not all str")
            into.update(zip(items[::2], items[1::2]))
        elif name in ("APPEND", "APPENDS"):
            items = pop() if name == "APPEND" else pop_mark()
            target(list).extend(items)
    if metastack or len(stack) != 1:
        raise _Refused("its pickle is malformed (it does not end with one object)")
    return stack[0]


def _storage_id(pid, length, storages):
    """The _Storage a persistent id ('storage', type, key, location, numel[, view]) names; made at its first use."""
    if not (type(pid) is tuple and len(pid) == length and type(pid[0]) is str and pid[0] == "storage"
            and type(pid[1]) is _StorageType and type(pid[2]) is str and type(pid[3]) is str and type(pid[4]) is int):
        raise _Refused(f"an unknown persistent object (a {type(pid).__name__}; torch's storage ids are "
                       "('storage', a storage type, a str key, a str location, an int) tuples)")
    _, storage_type, key, _, numel = pid[:5]
    if length > 5 and pid[5] is not None:
        raise _Refused("storage views (torch < 1.0 files) are not supported")
    if storage_type.dtype is None:
        raise _Refused("bfloat16 tensors are not supported; save the state dict in float32")
    if not (key.isascii() and key.isalnum() and len(key) <= 40) or not 0 <= numel < _LIMIT:
        raise _Refused(f"a storage of key {_show(key)} and {numel if 0 <= numel < _LIMIT else 'a bad number of'} "
                       "elements")
    storage = storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
    if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
        raise _Refused(f"storage {key} is declared twice, differently")
    return storage


def read_state_dict(path, expected=None):
    """{name: np.ndarray} of a `.pth` state dict in either torch.save format; DataError if it is anything else.

    `expected`, {name: shape}: a tensor of one of those names must have that shape (checked before any storage
    is read).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    try:
        if not data:
            raise _Refused("the file is empty")
        read = _read_zip if data[:4] == b"PK\x03\x04" else _read_legacy
        state = read(data, lambda state: _check(state, expected, path))
        return {name: tensor.array() for name, tensor in state.items()}
    except (ValueError, EOFError, OverflowError, NotImplementedError, struct.error, zlib.error,
            zipfile.BadZipFile) as error:
        why = (str(error) or type(error).__name__)[:300]  # printable, on one line, whatever the file's names hold:
        why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in why)
        raise DataError(f"{path} is not a plain PyTorch state dict: {why}") from None


def _check(state, expected, path):
    """The distinct storages of the pickle's state dict, once it is checked (its storages are not read yet)."""
    if type(state) not in (dict, collections.OrderedDict):
        raise _Refused(f"it holds a {type(state).__name__}, not a dict of names to tensors")
    for name, tensor in state.items():
        if type(tensor) is not _Tensor:
            raise _Refused(f"its entry {_show(name)} is a {type(tensor).__name__}, not a tensor")
        if expected is not None and name in expected and tensor.size != tuple(expected[name]):
            raise DataError(f"{path}: {name!r} has shape {tensor.size}, which does not fit the network "
                            f"(expected {tuple(expected[name])})")
        tensor.storage.used = max(tensor.storage.used, tensor.end)
    storages = {id(tensor.storage): tensor.storage for tensor in state.values()}.values()
    made = sum(tensor.count * tensor.storage.dtype.itemsize for tensor in state.values())
    held = sum(storage.numel * storage.dtype.itemsize for storage in storages)
    if made > held:
        raise _Refused(f"its tensors overlap: they would take {made} bytes, more than the {held} of their storages")
    return storages


def _member(archive, info, limit, what):
    """The bytes of a zip member whose declared size is at most `limit`, read no further than that size."""
    if info.flag_bits & 1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Refused(f"its zip member {_show(info.filename)} is encrypted or compressed other than by deflate")
    if info.file_size > limit:
        raise _Refused(f"its zip member {_show(info.filename)} declares {info.file_size} bytes, more than {what} "
                       f"({limit})")
    with archive.open(info) as member:
        raw = member.read(info.file_size)  # (read() would inflate up to 2 GiB at once, whatever the size declared)
    if len(raw) != info.file_size:
        raise _Refused(f"its zip member {_show(info.filename)} is cut short")
    return raw


def _read_zip(data, check):
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = {}
    for info in archive.infolist():
        name = info.filename[:-1] if info.filename.endswith("/") else info.filename
        if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
            raise _Refused(f"its zip member {_show(info.filename)} is not a plain relative path")
        if infos.setdefault(info.filename, info) is not info:
            raise _Refused(f"its zip member {_show(info.filename)} appears twice")
    pickles = [name for name in infos if name.endswith("/data.pkl") or name == "data.pkl"]
    if len(pickles) != 1:
        raise _Refused(f"a zip archive without one data.pkl ({len(pickles)} found)")
    prefix = pickles[0][: -len("data.pkl")]
    order = b"little"
    if prefix + "byteorder" in infos:
        order = _member(archive, infos[prefix + "byteorder"], 16, "a byte order").strip()
    if order not in (b"little", b"big"):
        raise _Refused("its byteorder is neither little nor big")
    storages = {}
    pickled = _member(archive, infos[pickles[0]], len(data), "the whole file")
    state = _unpickle(io.BytesIO(pickled), lambda pid: _storage_id(pid, 5, storages), _GLOBALS)
    for storage in check(state):
        name = f"{prefix}data/{storage.key}"
        if name not in infos:
            raise _Refused(f"storage {storage.key} has no zip member {_show(name)}")
        info, size = infos[name], storage.numel * storage.dtype.itemsize
        if info.compress_type != zipfile.ZIP_STORED and storage.used < storage.numel:
            raise _Refused(f"its zip member {_show(name)} is compressed and holds {size} bytes, more than its "
                           f"tensors use ({storage.used * storage.dtype.itemsize})")
        if info.file_size != size:
            raise _Refused(f"its zip member {_show(name)} declares {info.file_size} bytes, not the {size} of its "
                           "storage")
        storage.data = _member(archive, info, size, "its storage")
        storage.dtype = storage.dtype.newbyteorder("<" if order == b"little" else ">")
    return state


def _read_legacy(data, check):
    stream = io.BytesIO(data)

    def plain(what):  # the header pickles hold numbers, lists and dicts: no global is allowed there at all
        return _unpickle(stream, lambda pid: (_ for _ in ()).throw(_Refused(f"{what}: a storage")), {})

    for what, value in (("magic number", _LEGACY_MAGIC), ("protocol version", _LEGACY_PROTOCOL)):
        if plain(what) != value:  # (an int compared with any object here: at once)
            raise _Refused(f"neither a zip archive nor torch's legacy format (no {what})")
    system = plain("system info")
    little = system.get("little_endian", True) if type(system) is dict else True
    if type(little) is not bool:
        raise _Refused("its system info's little_endian is not a bool")
    storages = {}
    state = _unpickle(stream, lambda pid: _storage_id(pid, 6, storages), _GLOBALS)
    check(state)
    keys = plain("storage keys")
    if type(keys) is not list or not all(type(key) is str for key in keys) or sorted(keys) != sorted(storages):
        raise _Refused("the storage list does not match the tensors")
    for key in keys:
        storage = storages[key]
        head = stream.read(8)
        count = int.from_bytes(head, "little", signed=True)
        size = count * storage.dtype.itemsize
        if len(head) != 8 or count != storage.numel or size > len(data) - stream.tell():
            raise _Refused(f"storage {key} is cut short or of the wrong size")
        storage.data = stream.read(size)
        storage.dtype = storage.dtype.newbyteorder("<" if little else ">")
    return state


# Entries of torchvision's resnet50 state dict that the backbone has no use for: the ImageNet classifier and
# BatchNorm's step counters.
_UNUSED = ("fc.weight", "fc.bias")
_COUNTER = ".num_batches_tracked"


def _backbone_entries(backbone):
    """(torch name, torch shape, to Keras) of each of the backbone's weights, in `backbone.get_weights()` order."""
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w, i, o = layer.kernel.shape
            yield f"{layer.name}.weight", (o, i, h, w), lambda array: array.transpose(2, 3, 1, 0)
        elif isinstance(layer, keras.layers.BatchNormalization):
            for name, variable in zip(("weight", "bias", "running_mean", "running_var"),
                                      (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)):
                yield f"{layer.name}.{name}", tuple(variable.shape), lambda array: array
        elif layer.weights:
            raise ValueError(f"layer {layer.name} has weights torch_weights does not know")


def read_backbone_arrays(backbone, path):
    """backbone_arrays of the `.pth` at path; a tensor of the wrong shape is refused before its array is made."""
    shapes = {key: shape for key, shape, _ in _backbone_entries(backbone)}
    return backbone_arrays(backbone, read_state_dict(path, shapes), path)


def backbone_arrays(backbone, state, source):
    """The backbone's weights (a list in `backbone.get_weights()` order) taken from a torchvision state dict.

    Conv2D kernels are transposed from torch's (out, in, h, w) to Keras's
    (h, w, in, out); BatchNorm's weight, bias, running_mean and running_var
    become gamma, beta, moving_mean and moving_variance. DataError naming the
    entry when one is missing, has the wrong shape, or is not the network's.
    """
    used, arrays = set(), []
    for key, shape, convert in _backbone_entries(backbone):
        if key not in state:
            raise DataError(f"{source} has no {key!r}: it is not a torchvision ResNet-50 state dict")
        array = np.asarray(state[key], np.float32)
        if tuple(array.shape) != tuple(shape):
            raise DataError(f"{source}: {key!r} has shape {tuple(array.shape)}, which does not fit "
                            "the network (it is not a torchvision ResNet-50 state dict)")
        used.add(key)
        arrays.append(convert(array))
    extra = sorted(key for key in state if key not in used and key not in _UNUSED and not key.endswith(_COUNTER))
    if extra:
        raise DataError(f"{source} holds {len(extra)} tensor(s) the network does not have ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}): it is not a torchvision ResNet-50 state dict")
    return arrays
