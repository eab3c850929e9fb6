"""Synthetic photo-like JPEGs, as files and as a training split written by our converter's shard writer: the data
of the benchmarks that need images (input_pipeline.py, train_step.py). TensorFlow is imported when used."""

import os

import numpy as np

JPEG_QUALITY = 90


def make_jpegs(num_images, width, height, seed=0):
    """`num_images` JPEGs (quality 90) of width x height with photo-like content, as encoded bytes."""
    import tensorflow as tf

    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    jpegs = []
    for _ in range(num_images):
        # Smooth colour fields plus grain: compresses like a photo, not like noise or a flat image.
        phase = rng.rand(3) * 6.28
        base = 127 + 100 * np.sin(x[..., None] / (20 + 30 * rng.rand()) + y[..., None] / 40.0 + phase)
        image = np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
        jpegs.append(tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy())
    return jpegs


def write_files(directory, jpegs):
    """The JPEGs as files; returns their paths."""
    os.makedirs(directory)
    paths = []
    for i, data in enumerate(jpegs):
        paths.append(os.path.join(directory, f"{i:06d}.jpg"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def write_shards(directory, paths, num_classes, shard_size_mb, seed=0, resize_to=0):
    """The image files as a training split (one random positive each) written by our converter's shard writer
    (resized as --resize_to does, if resize_to); returns its Manifest."""
    from spml_tf.data import shard_writer

    rng = np.random.RandomState(seed)
    labels = np.zeros((len(paths), num_classes), np.float32)
    labels[np.arange(len(paths)), rng.randint(num_classes, size=len(paths))] = 1.0
    split = shard_writer.SplitInput("train", tuple(paths), tuple(f"{i:06d}" for i in range(len(paths))), labels,
                                    labels)
    class_names = [f"class{c:02d}" for c in range(num_classes)]
    return shard_writer.write_splits(directory, "bench", class_names, [split], shard_size_mb=shard_size_mb,
                                     resize_to=resize_to, log=lambda line: None)["train"]
