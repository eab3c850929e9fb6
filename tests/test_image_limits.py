"""The pixel limit: sizes read from image headers (never decoded), eagerly and inside tf.data."""

import io
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import raw_fixtures
from spml_tf.data import image_limits, pipeline
from spml_tf.core.errors import DataError


def _encoded(fmt, height, width):
    image = np.random.RandomState(height).randint(0, 256, size=(height, width, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def _webp(height, width, **options):
    image = np.random.RandomState(height).randint(0, 256, size=(height, width, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP", **options)
    return buffer.getvalue()


def _webp_header_only(chunk, height, width):
    """A RIFF/WEBP file of one chunk header declaring height x width (VP8 lossy, VP8L lossless, VP8X extended),
    and no pixel: 34 bytes or so, like the finding of issue 21."""
    if chunk == b"VP8 ":
        body = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
    elif chunk == b"VP8L":
        body = b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14)
    else:
        body = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    data = chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(data) + 4) + b"WEBP" + data


WEBP = {"webp-lossy": lambda h, w: _webp(h, w, quality=80), "webp-lossless": lambda h, w: _webp(h, w, lossless=True),
        "webp-extended": lambda h, w: _webp(h, w, lossless=True, exif=b"Exif\x00\x00" + b"\x00" * 8)}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", *WEBP])
def test_declared_size_is_the_decoded_size(fmt):
    for height, width in ((37, 53), (300, 7), (1, 1)):
        data = WEBP[fmt](height, width) if fmt in WEBP else _encoded(fmt, height, width)
        if fmt == "webp-extended":
            assert data[12:16] == b"VP8X", data[:16]
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


@pytest.mark.parametrize("chunk", [b"VP8 ", b"VP8L", b"VP8X"])
def test_a_tiny_webp_declaring_16383_squared_is_refused_before_it_is_decoded(chunk):
    data = _webp_header_only(chunk, 16383, 16383)
    assert len(data) < 40
    assert [int(v) for v in image_limits.declared_size(tf.constant(data))] == [16383, 16383]
    assert image_limits.problem(data, image_limits.DEFAULT_MAX_PIXELS).startswith("declares 16383 x 16383 pixels")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)image declares.*16383.*x.*16383"):
        pipeline.decode(tf.constant(data))


def test_unknown_formats_declare_nothing_and_are_refused_before_decoding():
    jpeg_xl = b"\xff\x0a" + b"\x00" * 40  # a format TensorFlow's decoder may know, whose size is not read here
    riff_other = b"RIFF\x20\x00\x00\x00WEBPVP8Z" + b"\x00" * 30  # a WebP chunk that gives no size
    for data in (b"", b"x", b"not an image at all, longer than the header", jpeg_xl, riff_other):
        assert [int(v) for v in image_limits.declared_size(tf.constant(data))] == [-1, -1]
        assert image_limits.problem(data, 1) is None  # the converter's decoder says what is wrong
        with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG, PNG, GIF, BMP or WebP image"):
            pipeline.decode(tf.constant(data))


def test_an_animated_gif_decodes_its_first_frame_only():
    frames = [Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)) for k in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert pipeline.decode(tf.constant(buffer.getvalue())).shape == (20, 30, 3)


def test_training_refuses_a_forged_shard_holding_an_image_bomb(tiny_digits_dir, tmp_path):
    """A shard whose manifest was rewritten to match (the converter would have refused the image): the trainer's
    pipeline checks the header too, and the run stops naming the image, with nothing decoded."""
    import shutil

    from spml_tf import config as config_lib
    from spml_tf.training import trainer as train
    from spml_tf.data import records

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_digits_dir, data_dir)
    manifest = records.read_manifest(str(data_dir / "train"))
    bomb = raw_fixtures.png_header_only(12000, 12000)  # 144 megapixels
    examples = []
    for record in tf.data.TFRecordDataset(manifest.shard_paths):
        example = records.parse_examples(record, manifest.num_classes)
        encoded = bomb if int(example["example/index"]) == 3 else example["image/encoded"].numpy()
        examples.append((int(example["example/index"]), encoded, example["image/id"].numpy(),
                         example["label/full"].numpy(), example["label/observed"].numpy()))
    for path in manifest.shard_paths:
        os.remove(path)
    examples.sort(key=lambda example: example[0])
    raw_fixtures.write_split(str(data_dir / "train"), dataset="digits", split="train",
                             class_names=manifest.class_names, examples=[e[1:] for e in examples])
    config = config_lib.from_overrides("digits", data_dir=str(data_dir), model_dir=str(tmp_path / "run"), epochs=2,
                                       warmup_epochs=1, image_size=16, batch_size=32)
    with pytest.raises(DataError, match=r"1 image\(s\) in .* declare more than 100,000,000 pixels and were not "
                                        r"decoded: digits_train_"):
        train.train_and_evaluate(config, log=lambda message: None, verbose=0)


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
