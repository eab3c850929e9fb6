"""Reading torch.save'd state dicts without torch: both formats, byte-exact; anything but tensors refused."""

import os

import numpy as np
import pytest

import torch_parity
from spml_tf import torch_weights
from spml_tf.errors import DataError

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


def test_damaged_files_are_refused(tmp_path):
    data = open(os.path.join(FIXTURES, "state_dict_legacy.pth"), "rb").read()
    for name, content in (("cut.pth", data[:-20]), ("empty.pth", b""), ("text.pth", b"not a pickle at all")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="is not a plain PyTorch state dict"):
            torch_weights.read_state_dict(str(tmp_path / name))


def test_a_state_dict_that_does_not_fit_the_network_is_named(tmp_path):
    from spml_tf import resnet

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
