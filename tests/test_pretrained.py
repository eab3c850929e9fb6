"""--weights for the paper's ResNet-50: torchvision's file downloaded, verified, converted once, reused; a local
.pth or converted file; a file that does not fit is one clear line."""

import hashlib

import numpy as np
import pytest

import local_http
import torch_files
import torch_parity as P
from spml_tf import config as config_lib
from spml_tf.core import download
from spml_tf.nets import models, pretrained, torch_weights
from spml_tf.core.errors import DataError


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A full-size torchvision ResNet-50 state dict (ImageNet head of 1000 classes), as torch.save writes it."""
    path = str(tmp_path_factory.mktemp("weights") / "resnet50-drawn.pth")
    torch_files.write_state_dict(path, P.resnet50_state(num_classes=1000))
    return path


def _backbone_arrays(model):
    return [np.asarray(weight) for weight in model.get_layer("resnet50").weights]


def _expected(backbone_model):
    backbone = backbone_model.get_layer("resnet50")
    return torch_weights.backbone_arrays(backbone, P.resnet50_state(num_classes=1000), "drawn")


def test_imagenet_is_downloaded_verified_converted_once_and_reused(torchvision_file, tmp_path, monkeypatch):
    body = open(torchvision_file, "rb").read()
    monkeypatch.setenv("SPML_TF_DATA", str(tmp_path / "cache"))
    with local_http.serve({"resnet50-abcd.pth": body}) as server:
        published = download.Archive(server.url("resnet50-abcd.pth"),
                                     sha256_prefix=hashlib.sha256(body).hexdigest()[:8])
        monkeypatch.setattr(pretrained, "TORCHVISION_RESNET50", published)
        said = []
        config = config_lib.from_overrides("voc", image_size=32)  # the preset: weights=imagenet
        model = models.build_model(config, 20, log=said.append)
        for ours, expected in zip(_backbone_arrays(model), _expected(model)):
            np.testing.assert_array_equal(ours, expected)
        converted = tmp_path / "cache" / "weights" / "resnet50-abcd.weights.h5"
        assert converted.exists() and any("Converted" in line for line in said)
        requests = len(server.requests)
        again = models.build_model(config, 20, log=lambda line: pytest.fail(f"no download or conversion: {line}"))
        assert len(server.requests) == requests  # the converted file is reused
        for ours, expected in zip(_backbone_arrays(again), _expected(again)):
            np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("kind", ["pth", "converted"])
def test_weights_from_a_local_file(torchvision_file, tmp_path, kind):
    path = torchvision_file
    if kind == "converted":
        model = models.build_model(config_lib.from_overrides("voc", image_size=32, weights=torchvision_file), 20)
        path = str(tmp_path / "backbone.weights.h5")
        model.get_layer("resnet50").save_weights(path)
    model = models.build_model(config_lib.from_overrides("voc", image_size=32, weights=path), 20)
    for ours, expected in zip(_backbone_arrays(model), _expected(model)):
        np.testing.assert_array_equal(ours, expected)


def test_a_file_that_does_not_fit_is_named(tmp_path):
    state = P.resnet50_state(num_classes=1000)
    del state["layer2.1.conv2.weight"]
    path = str(tmp_path / "cut.pth")
    torch_files.write_state_dict(path, state)
    with pytest.raises(DataError, match=rf"{path} has no 'layer2.1.conv2.weight'"):
        models.build_model(config_lib.from_overrides("voc", image_size=32, weights=path), 20)
    other = tmp_path / "other.weights.h5"
    models.build_model(config_lib.from_overrides("digits", image_size=16), 10).save_weights(str(other))
    with pytest.raises(DataError, match=rf"--weights={other}: not a ResNet-50 weights file of this network"):
        models.build_model(config_lib.from_overrides("voc", image_size=32, weights=str(other)), 20)

