"""Reading torch.save'd state dicts without torch: both formats, byte-exact; anything but tensors refused; hostile
files (issue #21) one DataError line each, never a crash, a huge allocation or a hang.

The hostile files are read in a child process, this file run as a program (`_child`, `_child_main`) under a 2 GiB
address-space cap and a time limit, so that what an unsafe reader does with them (a native crash, MemoryError,
a hang) fails the test instead of pytest."""

import collections
import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np
import pytest

import torch_files
import torch_parity
from spml_tf.nets import torch_weights
from spml_tf.core.errors import DataError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torch")


@pytest.mark.parametrize("name", ["state_dict_zip.pth", "state_dict_legacy.pth"])
def test_both_torch_save_formats_read_to_the_same_arrays(name):
    """Files torch 2.14 wrote (zip, and _use_new_zipfile_serialization=False), read back to the seeded draws."""
    state = torch_weights.read_state_dict(os.path.join(FIXTURES, name))
    expected = torch_parity.small_state_dict()
    assert list(state) == list(expected)
    for key, array in expected.items():
        assert state[key].dtype == array.dtype and state[key].shape == array.shape, key
        np.testing.assert_array_equal(state[key], array, err_msg=key)


@pytest.mark.parametrize("name, names", [
    ("runs_code.pth", "posix.system"),  # a pickled callable: unpickling it would run a shell command
    ("whole_module.pth", "torch.nn.modules.linear.Linear"),  # torch.save(model) instead of its state dict
])
def test_a_file_holding_any_other_object_is_refused(name, names, tmp_path):
    path = os.path.join(FIXTURES, name)
    with pytest.raises(DataError, match=rf"{path} is not a plain PyTorch state dict: it names {names}, which a plain "
                                        "tensor state dict does not hold"):
        torch_weights.read_state_dict(path)


def _module_state_dict(path, state, protocol, compression):
    """Writes `state` as torch.save(model.state_dict(), path) would in the zip format: an OrderedDict with the
    module's `_metadata` (pickled as a BUILD), here in any pickle protocol and with members deflated, as a zip tool
    repacking the file would."""
    with torch_files._torch_names() as torch:
        saved = collections.OrderedDict((name, torch_files._Tensor(str(i), array, torch))
                                        for i, (name, array) in enumerate(state.items()))
        saved._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
        buffer = io.BytesIO()
        pickler = torch_files._Pickler(buffer, protocol=protocol)
        pickler.torch_module = torch
        pickler.dump(saved)
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for i, array in enumerate(state.values()):
            archive.writestr(f"archive/data/{i}", array.tobytes())
    return str(path)


@pytest.mark.parametrize("protocol, compression", [(2, zipfile.ZIP_STORED), (4, zipfile.ZIP_DEFLATED),
                                                   (5, zipfile.ZIP_STORED)])
def test_a_modules_state_dict_in_any_pickle_protocol_and_deflated(protocol, compression, tmp_path):
    """_metadata's BUILD, protocol 4's and 5's FRAME, MEMOIZE, SHORT_BINUNICODE and STACK_GLOBAL, deflated members."""
    rng = np.random.RandomState(3)
    state = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "bn.running_mean": rng.standard_normal(4).astype(np.float32),
             "bn.num_batches_tracked": np.array(12, np.int64)}
    read = torch_weights.read_state_dict(_module_state_dict(tmp_path / "module.pth", state, protocol, compression))
    assert list(read) == list(state)
    for key, array in state.items():
        assert read[key].dtype == array.dtype and read[key].shape == array.shape, key
        np.testing.assert_array_equal(read[key], array, err_msg=key)


def test_expected_shapes_refuse_a_tensor_of_another_shape(tmp_path):
    path = os.path.join(FIXTURES, "state_dict_zip.pth")
    state = torch_weights.read_state_dict(path, {"conv.weight": (3, 4, 2, 2), "transposed": (6, 5), "other": (1,)})
    assert set(state) == set(torch_parity.small_state_dict())
    with pytest.raises(DataError, match=rf"^{path}: 'transposed' has shape \(6, 5\), which does not fit the network "
                                        r"\(expected \(5, 6\)\)$"):
        torch_weights.read_state_dict(path, {"conv.weight": (3, 4, 2, 2), "transposed": (5, 6)})


def test_damaged_files_are_refused(tmp_path):
    data = open(os.path.join(FIXTURES, "state_dict_legacy.pth"), "rb").read()
    for name, content in (("cut.pth", data[:-20]), ("empty.pth", b""), ("text.pth", b"not a pickle at all")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="is not a plain PyTorch state dict"):
            torch_weights.read_state_dict(str(tmp_path / name))


def test_a_state_dict_that_does_not_fit_the_network_is_named(tmp_path):
    from spml_tf.nets import resnet

    backbone = resnet.resnet50(32)
    state = {key: value for key, value in torch_parity.resnet50_state().items()}
    arrays = torch_weights.backbone_arrays(backbone, state, "x.pth")
    assert len(arrays) == len(backbone.weights)
    missing = dict(state)
    del missing["layer3.2.bn2.running_var"]
    with pytest.raises(DataError, match=r"x.pth has no 'layer3.2.bn2.running_var': it is not a torchvision ResNet-50"):
        torch_weights.backbone_arrays(backbone, missing, "x.pth")
    wrong = dict(state)
    wrong["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(DataError, match=r"'layer1.0.conv2.weight' has shape \(64, 64, 1, 1\), which does not fit"):
        torch_weights.backbone_arrays(backbone, wrong, "x.pth")
    extra = {**state, "layer4.3.conv1.weight": np.zeros((512, 2048, 1, 1), np.float32)}  # a ResNet-101's, say
    with pytest.raises(DataError, match=r"holds 1 tensor\(s\) the network does not have \(layer4.3.conv1.weight\)"):
        torch_weights.backbone_arrays(backbone, extra, "x.pth")
    # read from a file, a tensor of the wrong shape is refused as it is read, before its array is made
    path = str(tmp_path / "wrong.pth")
    torch_files.write_state_dict(path, {"conv1.weight": np.zeros((64, 3, 7, 8), np.float32)})
    with pytest.raises(DataError, match=rf"^{path}: 'conv1.weight' has shape \(64, 3, 7, 8\), which does not fit the "
                                        r"network \(expected \(64, 3, 7, 7\)\)$"):
        torch_weights.read_backbone_arrays(backbone, path)


# --- Hostile files (issue #21) -------------------------------------------------------------------------------------


def _child(*args, timeout=60):
    """The child's stdout lines; fails the test when it crashed, was killed or ran out of time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path), "OPENBLAS_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the reader took more than {timeout} s")
    assert done.returncode == 0, f"the reader died (return code {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout.splitlines()


def _read(path, expected=None):
    """What the child says reading `path` gives: "ok ...", "DataError ..." or "FAIL ..."."""
    lines = _child("read", str(path), *([json.dumps(expected)] if expected else []))
    assert len(lines) == 1, lines
    return lines[0]


# A small pickle assembler (protocol 2, the opcodes torch.save's pickles use), for files torch would never write.
def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(n):  # LONG1: any int, also those beyond 64 bits
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _storage_id(key, numel, storage_type="FloatStorage"):
    return _tuple([_str("storage"), _global("torch", storage_type), key, _str("cpu"), _int(numel)]) + b"Q"


def _tensor(numel, size, stride, offset=0, key=None):
    """torch._utils._rebuild_tensor_v2 of a FloatStorage: what torch.save writes for one tensor."""
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + _storage_id(key or _str("0"), numel)
            + _int(offset) + _tuple(map(_int, size)) + _tuple(map(_int, stride)) + b"\x89"
            + _global("collections", "OrderedDict") + b")Rt" + b"R")


def _state(*entries):
    """A pickled dict of (name, pickled value) entries."""
    return b"\x80\x02}(" + b"".join(_str(name) + value for name, value in entries) + b"u."


def _dag(depth):
    """A list of the levels of a DAG: a tuple of two references to a tuple of two references to ... 'a', 4 opcodes a
    level; level i is memo entry i, the last one has 2**depth leaves (its repr and hash take that long)."""
    ops = b"](" + _str("a") + b"q\x00"
    for level in range(depth):
        ops += b"h" + bytes([level]) + b"h" + bytes([level]) + b"\x86q" + bytes([level + 1])
    return ops + b"e"


def _zip(path, members):
    """Writes a zip archive of (name, bytes, method, declared size or None, crc or None) members, as given:
    names, methods and sizes are not checked (zipfile would)."""
    out, central = b"", b""
    for name, data, method, declared, crc in members:
        name, crc = name.encode(), zlib.crc32(data) if crc is None else crc
        size = len(data) if declared is None else declared
        fields = (20, 0, method, 0, 33, crc, len(data), size, len(name))
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, len(out)) + name
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", *fields, 0) + name + data
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    with open(path, "wb") as f:
        f.write(out + central + end)
    return str(path)


def _state_zip(path, pickled, storages=((b"\0" * 16),), prefix="archive/", extra=()):
    """A zip-format .pth: prefix/data.pkl and prefix/data/<i> of each storage's bytes, then `extra` members."""
    members = [(prefix + "data.pkl", pickled, 0, None, None), (prefix + "byteorder", b"little", 0, None, None)]
    members += [(f"{prefix}data/{i}", data, 0, None, None) for i, data in enumerate(storages)]
    return _zip(path, members + list(extra))


def _refused(line, path, why):
    assert line == f"DataError {path} is not a plain PyTorch state dict: {why}", line


def test_the_assembled_files_are_right(tmp_path):
    """The assembler and zip writer make files that read: the hostile ones below differ from this one only where
    it is said."""
    pickled = _state(("w", _tensor(4, (2, 2), (1, 2))))
    path = _state_zip(tmp_path / "fine.pth", pickled, [struct.pack("<4f", 1, 2, 3, 4)])
    assert _read(path) == "ok w (2, 2) float32"


@pytest.mark.parametrize("size, stride", [((2,), (-1,)), ((1, 4), (2 ** 62, 1)), ((2,), (2 ** 70,))],
                         ids=["negative", "overflowing once multiplied by the item size", "beyond 64 bits"])
def test_a_negative_or_overflowing_stride_is_refused(tmp_path, size, stride):
    path = _state_zip(tmp_path / "stride.pth", _state(("w", _tensor(4, size, stride))))
    _refused(_read(path), path, "a tensor whose offset, size or stride is negative or 2**48 or more")


def test_a_tensor_changed_after_it_was_made_is_refused(tmp_path):
    """BUILD on a tensor: a pickle could otherwise give it a negative stride after its checks (the old reader then
    read memory before its storage, and crashed)."""
    build = b"}(" + _str("size") + _tuple([_int(2)]) + _str("stride") + _tuple([_int(-(2 ** 40))]) + b"ub"
    path = _state_zip(tmp_path / "build.pth", _state(("w", _tensor(4, (2,), (1,)) + build)))
    _refused(_read(path), path, "its pickle changes a _Tensor, which torch's state dict pickles do not")


def test_a_tensor_larger_than_its_storage_is_refused_before_any_allocation(tmp_path):
    """100000 x 100000 floats (37.3 GiB) over one element, by zero strides: the old reader tried to allocate them."""
    path = _state_zip(tmp_path / "huge.pth", _state(("w", _tensor(1, (100000, 100000), (0, 0)))), [b"\0" * 4])
    _refused(_read(path), path, "a tensor of size (100000, 100000) and stride (0, 0) at offset 0 needs more than the "
                                "1 elements of its storage")
    # declared over a storage said to hold them all (its member holds 4 bytes): refused by the expected shape
    # before any storage is read, and without `expected` by the member's size
    path = _state_zip(tmp_path / "declared.pth", _state(("w", _tensor(10 ** 10, (100000, 100000), (100000, 1)))),
                      [b"\0" * 4])
    assert _read(path, {"w": [4]}) == (f"DataError {path}: 'w' has shape (100000, 100000), which does not fit the "
                                       "network (expected (4,))")
    _refused(_read(path), path, "its zip member 'archive/data/0' declares 4 bytes, not the 40000000000 of its storage")


@pytest.mark.parametrize("use", ["persistent id", "dict key", "storage key"])
def test_a_pickle_reusing_its_memo_for_an_exponential_object_is_refused_at_once(tmp_path, use):
    """A DAG of 2**60 leaves in 240 opcodes: its repr or hash never ends (the old reader hung on it)."""
    dag, last = _dag(60), b"h" + bytes([60])  # the DAG, made as an entry of the state dict, then its last level
    pickled = {"persistent id": _state(("dag", dag), ("w", last + b"Q")),
               "dict key": b"\x80\x02}(" + _str("dag") + dag + last + b"Nu.",
               "storage key": _state(("dag", dag), ("w", _tensor(4, (4,), (1,), key=last)))}[use]
    path = _state_zip(tmp_path / "dag.pth", pickled)
    why = {"dict key": "its pickle makes a dict whose keys are not all str"}.get(use, (
        "an unknown persistent object (a tuple; torch's storage ids are ('storage', a storage type, a str key, "
        "a str location, an int) tuples)"))
    _refused(_read(path), path, why)


@pytest.mark.parametrize("prefix, extra", [
    ("../archive/", ()),
    ("/archive/", ()),
    ("archive/", [("archive/../../etc/passwd", b"x", 0, None, None)]),
    ("archive/", [("archive\\data\\0", b"x", 0, None, None)]),
])
def test_a_zip_member_outside_the_archive_is_named(tmp_path, prefix, extra):
    path = _state_zip(tmp_path / "names.pth", _state(("w", _tensor(4, (4,), (1,)))), prefix=prefix, extra=extra)
    bad = extra[0][0] if extra else prefix + "data.pkl"
    _refused(_read(path), path, f"its zip member {bad!r} is not a plain relative path")


@pytest.mark.parametrize("numel, why", [
    (4, "its zip member 'archive/data/0' declares 3000000000 bytes, not the 16 of its storage"),
    (750000000, "its zip member 'archive/data/0' is compressed and holds 3000000000 bytes, more than its tensors "
                "use (16)"),
])
def test_a_compressed_member_declaring_a_huge_size_is_refused_before_it_is_read(tmp_path, numel, why):
    """A deflate bomb: 3 MB that inflate to 3 GB of zeros, for a tensor of 4 floats (the old reader inflated 2 GiB
    of it at once)."""
    compressor, zeros = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)  # each further megabyte of zeros
    bomb = first + block * 2860 + compressor.flush()
    assert len(bomb) < 4 << 20
    pickled = _state(("w", _tensor(numel, (4,), (1,))))
    path = _zip(tmp_path / "bomb.pth", [("archive/data.pkl", pickled, 0, None, None),
                                        ("archive/data/0", bomb, 8, 3_000_000_000, 0)])
    _refused(_read(path), path, why)


def test_mutated_state_dicts_are_refused_or_read_never_a_crash():
    """A few hundred seeded mutations of the torch-written fixtures (both formats): cut at many offsets, bytes changed
    at many offsets, and for the zip its data.pkl cut and changed inside a well-formed archive. Each is a DataError
    or a dict of arrays; a cut file is always a DataError."""
    names = [os.path.join(FIXTURES, name) for name in ("state_dict_zip.pth", "state_dict_legacy.pth")]
    lines = _child("fuzz", "21", *names, timeout=120)
    assert lines and lines[-1] == f"done {len(lines) - 1}", lines[-5:]
    results = [line.split(" ", 3) for line in lines[:-1]]
    assert len(results) >= 600
    failures = [" ".join(result) for result in results if not result[3].startswith(("ok", "DataError"))]
    assert not failures, "\n".join(failures[:20])
    cut = [" ".join(result) for result in results
           if result[1].endswith("cut") and not result[3].startswith("DataError")]
    assert not cut, "\n".join(cut[:20])
    kinds = {(kind, outcome.split(" ", 1)[0]) for _, kind, _, outcome in results}
    for kind in ("change1", "change3", "pickle-change1"):  # the mutations reach both outcomes
        assert {(kind, "ok"), (kind, "DataError")} <= kinds, kind


# --- The child process: this file run as a program ----------------------------------------------------------------


def _outcome(path, expected=None):
    """One line: what reading the file gave."""
    try:
        state = torch_weights.read_state_dict(path, expected) if expected else torch_weights.read_state_dict(path)
    except DataError as error:
        if not str(error).isprintable():
            return f"FAIL DataError not on one printable line: {error!r}"
        return f"DataError {error}"
    except Exception as error:  # noqa: BLE001 - anything else is what the tests look for
        return f"FAIL {type(error).__name__}: {str(error)[:200]}"
    if type(state) is not dict or not all(type(k) is str and type(v) is np.ndarray for k, v in state.items()):
        return f"FAIL not a dict of names to arrays: {type(state).__name__}"
    return "ok " + "; ".join(f"{ascii(name)[1:-1]} {value.shape} {value.dtype}" for name, value in state.items())


def _mutations(data, rng):
    """(kind, offset, bytes): the file cut at many offsets, one byte or three bytes changed at many offsets; for a
    zip archive also its data.pkl cut and changed, the archive rewritten around it (CRCs right)."""
    for offset in sorted(rng.sample(range(len(data)), 40)):
        yield "cut", offset, data[:offset]
    for count in (1, 1, 3):
        for _ in range(80):
            changed = bytearray(data)
            offsets = [rng.randrange(len(data)) for _ in range(count)]
            for offset in offsets:
                changed[offset] = (changed[offset] + rng.randrange(1, 256)) % 256
            yield f"change{count}", offsets[0], bytes(changed)
    if data[:4] != b"PK\x03\x04":
        return
    archive = zipfile.ZipFile(io.BytesIO(data))
    members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    pickled = next(content for name, content in members if name.endswith("/data.pkl"))

    def rezip(new_pickle):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for name, content in members:
                out.writestr(name, new_pickle if name.endswith("/data.pkl") else content)
        return buffer.getvalue()

    for offset in sorted(rng.sample(range(len(pickled)), 30)):
        yield "pickle-cut", offset, rezip(pickled[:offset])
    for _ in range(120):
        changed = bytearray(pickled)
        offset = rng.randrange(len(pickled))
        changed[offset] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        yield "pickle-change1", offset, rezip(bytes(changed))


def _child_main(argv):
    """The child: `read PATH [EXPECTED_JSON]` prints one line, "ok NAME SHAPE DTYPE; ...", "DataError MESSAGE" or
    "FAIL TYPE: MESSAGE"; `fuzz SEED FILE...` one line per mutation of each file, "FILE KIND OFFSET <that>", then
    "done COUNT"."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # an attempted huge allocation fails here
    if argv[1] == "read":
        print(_outcome(argv[2], json.loads(argv[3]) if len(argv) > 3 else None), flush=True)
        return
    rng, count = random.Random(int(argv[2])), 0
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "mutated.pth")
        for name in argv[3:]:
            for kind, offset, content in _mutations(open(name, "rb").read(), rng):
                with open(path, "wb") as f:
                    f.write(content)
                print(f"{os.path.basename(name)} {kind} {offset} {_outcome(path)[:300]}", flush=True)
                count += 1
    print(f"done {count}", flush=True)


if __name__ == "__main__":
    _child_main(sys.argv)
