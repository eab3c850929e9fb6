"""The pixel limit: sizes read from image headers (never decoded), eagerly and inside tf.data."""

import io
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import raw_fixtures
from spml_tf import image_limits


def _encoded(fmt, height, width):
    image = np.random.RandomState(height).randint(0, 256, size=(height, width, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_declared_size_is_the_decoded_size(fmt):
    for height, width in ((37, 53), (300, 7), (1, 1)):
        data = _encoded(fmt, height, width)
        eager = [int(v) for v in image_limits.declared_size(tf.constant(data))]
        in_graph = next(iter(tf.data.Dataset.from_tensors(data).map(image_limits.declared_size)))
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False).shape
        assert eager == [int(v) for v in in_graph] == [decoded[0], decoded[1]] == [height, width], fmt


def test_a_header_alone_is_enough():
    def size(data):
        return [int(v) for v in image_limits.declared_size(tf.constant(data))]

    assert size(raw_fixtures.png_header_only(23000, 17)) == [17, 23000]
    # Big-endian and 4 bytes wide: sizes above 65535 and 2**24 read right.
    assert size(raw_fixtures.png_header_only(70000, 2**24 + 3)) == [2**24 + 3, 70000]


def test_unknown_formats_declare_nothing():
    for data in (b"", b"x", b"not an image at all, longer than the header"):
        assert [int(v) for v in image_limits.declared_size(tf.constant(data))] == [0, 0]
        assert image_limits.problem(data, 1) is None  # decoding will say what is wrong


def test_problem_names_the_size_and_the_limit():
    assert image_limits.problem(raw_fixtures.png_header_only(23000, 23000), image_limits.DEFAULT_MAX_PIXELS) == (
        "declares 23000 x 23000 pixels (529 megapixels), above the limit of 100 megapixels (--max_image_pixels)")
    data = _encoded("JPEG", 40, 50)
    assert image_limits.problem(data, 2000) is None and image_limits.problem(data, 1999) is not None


def test_checked_stops_a_graph_before_the_decode():
    limit = 2000

    def decode(encoded):
        return tf.io.decode_image(image_limits.checked(encoded, limit), channels=3, expand_animations=False)

    small, large = _encoded("PNG", 40, 50), raw_fixtures.png_header_only(23000, 23000)
    assert next(iter(tf.data.Dataset.from_tensors(small).map(decode))).shape == (40, 50, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image declares\] \[23000\] \[x\] \[23000\]"):
        next(iter(tf.data.Dataset.from_tensors(large).map(decode)))
