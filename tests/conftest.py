"""Shared fixtures: a tiny embedded dataset, built once per test session."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_digits_dir(tmp_path_factory):
    """A small build of the digits dataset (200 official-train, 100 test images) in the real format."""
    from spml_tf.data.datasets import digits

    directory = str(tmp_path_factory.mktemp("data") / "digits")
    saved = digits.NUM_OFFICIAL_TRAIN, digits.NUM_TEST, digits.SHARD_SIZE_MB
    digits.NUM_OFFICIAL_TRAIN, digits.NUM_TEST, digits.SHARD_SIZE_MB = 200, 100, 0.05
    try:
        digits.build(directory)
    finally:
        digits.NUM_OFFICIAL_TRAIN, digits.NUM_TEST, digits.SHARD_SIZE_MB = saved
    return directory
