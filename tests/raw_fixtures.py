"""Small raw datasets in the real release layouts, and the ground truth they were made from.

Each builder writes tiny, distinct JPEG images and the dataset's own label
files (VOC ImageSets, COCO instances json, CUB text files, Cole et al.'s
formatted .npy, a user's CSVs) and returns what a correct reader must find,
stated directly from how the files were made, not from the code under test.
"""

import dataclasses
import json
import os
import struct
import zlib

import numpy as np
import tensorflow as tf

from spml_tf.data import records

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def write_jpeg(path, seed):
    """A distinct 8x10 JPEG at `path`; returns its bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, size=(8, 10, 3), dtype=np.uint8)
    data = tf.io.encode_jpeg(pixels).numpy()
    with open(path, "wb") as f:
        f.write(data)
    return data


def make_voc(raw_dir, num_train=40, num_val=20, seed=0):
    """VOCdevkit/VOC2012 with ImageSets/Main/<class>_{train,val}.txt and JPEGImages/.

    Some images have only difficult (0) entries and no positive: they are in
    no split. Returns {"train"/"test": (sorted file names, labels)}.
    """
    rng = np.random.RandomState(seed)
    root = os.path.join(raw_dir, "VOCdevkit", "VOC2012")
    main = os.path.join(root, "ImageSets", "Main")
    os.makedirs(main)
    truth = {}
    number = 0
    for image_set, count, split in (("train", num_train, "train"), ("val", num_val, "test")):
        ids = []
        for _ in range(count):
            number += 1
            ids.append(f"20{8 + number % 3:02d}_{number * 7 % 1000:06d}")
        values = {}  # id -> per-class value in {1, -1, 0}
        for i, image_id in enumerate(ids):
            row = np.full(len(VOC_CLASSES), -1)
            if i % 7 == 3:  # difficult only: never a positive
                row[rng.choice(len(VOC_CLASSES), 2, replace=False)] = 0
            else:
                row[rng.choice(len(VOC_CLASSES), rng.randint(1, 4), replace=False)] = 1
                other = rng.randint(len(VOC_CLASSES))
                if row[other] != 1:
                    row[other] = 0  # difficult: not a positive
            values[image_id] = row
            write_jpeg(os.path.join(root, "JPEGImages", image_id + ".jpg"), seed=int(image_id.replace("_", "")))
        listing = list(ids)
        rng.shuffle(listing)  # the reader must sort, not trust the file order
        for c, name in enumerate(VOC_CLASSES):
            with open(os.path.join(main, f"{name}_{image_set}.txt"), "w") as f:
                for image_id in listing:
                    f.write(f"{image_id} {values[image_id][c]:2d}\n")  # the release's column format
        files = sorted(image_id + ".jpg" for image_id in ids if (values[image_id] == 1).any())
        labels = np.array([(values[file[:-4]] == 1).astype(np.float32) for file in files])
        truth[split] = (files, labels)
    return truth


def voc_image_path(raw_dir):
    """One JPEG of a make_voc release."""
    directory = os.path.join(raw_dir, "VOCdevkit", "VOC2012", "JPEGImages")
    return os.path.join(directory, sorted(os.listdir(directory))[0])


def make_coco(raw_dir, seed=0):
    """annotations/instances_{train,val}2014.json and {train,val}2014/COCO_*.jpg.

    Category ids are not contiguous and the category list is not sorted by
    id; image ids sort differently as strings and as numbers; some images have
    no annotation. Returns (class names, {"train"/"test": (file names, labels)}).
    """
    rng = np.random.RandomState(seed)
    categories = [(7, "cat"), (2, "car"), (13, "dog"), (5, "bus"), (90, "toothbrush")]
    names = tuple(name for _, name in categories)
    truth = {}
    for official, split, ids in (("train", "train", [9, 10, 100, 25, 3, 1000, 42, 77, 8, 250, 31, 4]),
                                 ("val", "test", [11, 2, 300, 45, 6, 12])):
        annotations, labelled = [], {}
        for k, image_id in enumerate(ids):
            write_jpeg(os.path.join(raw_dir, f"{official}2014", f"COCO_{official}2014_{image_id:012d}.jpg"),
                       seed=1000 + image_id)
            if k % 5 == 4:
                continue  # an image without annotations is in no split
            chosen = rng.choice(len(categories), rng.randint(1, 4), replace=False)
            labelled[image_id] = chosen
            for c in list(chosen) + [chosen[0]]:  # the same category twice: still one label
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": categories[c][0]})
        data = {
            "images": [{"id": i, "file_name": f"COCO_{official}2014_{i:012d}.jpg"} for i in ids],
            "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": "x"} for cid, name in categories],
        }
        os.makedirs(os.path.join(raw_dir, "annotations"), exist_ok=True)
        with open(os.path.join(raw_dir, "annotations", f"instances_{official}2014.json"), "w") as f:
            json.dump(data, f)
        order = sorted(labelled, key=str)  # as strings: "10" < "100" < "1000" < "25" < "3"
        labels = np.zeros((len(order), len(categories)), np.float32)
        for row, image_id in enumerate(order):
            labels[row, labelled[image_id]] = 1.0
        truth[split] = ([f"{official}2014/COCO_{official}2014_{i:012d}.jpg" for i in order], labels)
    return names, truth


def make_cub(raw_dir, num_images=30, num_attributes=12, seed=0):
    """CUB_200_2011/{images.txt, train_test_split.txt, attributes/image_attribute_labels.txt, images/}
    and attributes.txt beside CUB_200_2011/, as in CUB_200_2011.tgz.

    Returns (attribute names, {"train"/"test": (file names, labels)}).
    """
    rng = np.random.RandomState(seed)
    root = os.path.join(raw_dir, "CUB_200_2011")
    os.makedirs(os.path.join(root, "attributes"))
    names = tuple(f"has_part::{k}_shape" for k in range(num_attributes))
    with open(os.path.join(raw_dir, "attributes.txt"), "w") as f:
        f.writelines(f"{k + 1} {name}\n" for k, name in enumerate(names))
    files = [f"{1 + i % 3:03d}.Bird_{i % 3}/Bird_{i:04d}_{i * 13}.jpg" for i in range(num_images)]
    is_train = rng.rand(num_images) < 0.6
    labels = (rng.rand(num_images, num_attributes) < 0.3).astype(np.float32)
    labels[np.arange(num_images), rng.randint(num_attributes, size=num_images)] = 1.0
    with open(os.path.join(root, "images.txt"), "w") as f:
        f.writelines(f"{i + 1} {file}\n" for i, file in enumerate(files))
    with open(os.path.join(root, "train_test_split.txt"), "w") as f:
        f.writelines(f"{i + 1} {int(t)}\n" for i, t in enumerate(is_train))
    with open(os.path.join(root, "attributes", "image_attribute_labels.txt"), "w") as f:
        for i in range(num_images):
            for a in range(num_attributes):
                certainty = rng.randint(1, 5)
                extra = " 0" if (i, a) == (2, 5) else ""  # the release has a few lines with an extra field
                f.write(f"{i + 1} {a + 1} {int(labels[i, a])} {certainty}{extra} {rng.rand() * 10:.3f}\n")
    for i, file in enumerate(files):
        write_jpeg(os.path.join(root, "images", file), seed=2000 + i)
    truth = {}
    for split, flag in (("train", True), ("test", False)):
        rows = np.flatnonzero(is_train == flag)
        truth[split] = ([files[r] for r in rows], labels[rows])
    return names, truth


def make_formatted(formatted_dir, image_root, num_train=30, num_test=12, num_classes=6, seed=0):
    """formatted_{train,val}_{images,labels}.npy and the images they name.

    Returns {"train"/"test": (paths, labels)}.
    """
    rng = np.random.RandomState(seed)
    os.makedirs(formatted_dir, exist_ok=True)
    truth = {}
    for phase, split, count in (("train", "train", num_train), ("val", "test", num_test)):
        paths = [f"folder_{i % 4}/{phase}_{i:04d}.jpg" for i in range(count)]
        labels = (rng.rand(count, num_classes) < 0.3).astype(np.float64)
        labels[np.arange(count), rng.randint(num_classes, size=count)] = 1.0
        for i, path in enumerate(paths):
            write_jpeg(os.path.join(image_root, path), seed=3000 + i + (0 if phase == "train" else 500))
        np.save(os.path.join(formatted_dir, f"formatted_{phase}_images.npy"), np.array(paths))
        np.save(os.path.join(formatted_dir, f"formatted_{phase}_labels.npy"), labels)
        truth[split] = (paths, labels.astype(np.float32))
    return truth


def write_csv(path, rows):
    """A CSV with the `image,labels` header; rows are (image, [class names])."""
    with open(path, "w") as f:
        f.write("image,labels\n")
        for image, names in rows:
            f.write(f"{image},{'|'.join(names)}\n")


def png_header_only(width, height):
    """A PNG's signature and IHDR chunk, nothing more: it declares a size and holds no pixel (a decoder fails on
    it, so a size check must come first to be seen)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF))


def write_split(directory, *, dataset, split, class_names, examples, full_labels_known=True, shard_size_mb=150):
    """Writes `examples` (an iterable of (encoded, image_id, full, observed)) straight into shards + a manifest,
    checking nothing: for tests that need bytes held in memory, or data the converter (shard_writer) refuses
    to write (images that do not decode, labels out of range). Example indices follow iteration order."""
    tf.io.gfile.makedirs(directory)
    shard_limit = int(shard_size_mb * 2**20)
    shards, writer, count, size, index = [], None, 0, 0, 0

    def finish_shard():
        name = f"{split}-{len(shards):05d}.tfrecord"
        temporary, final = os.path.join(directory, name + ".tmp"), os.path.join(directory, name)
        writer.close()
        tf.io.gfile.rename(temporary, final, overwrite=True)
        shards.append(records.Shard(name, count, tf.io.gfile.stat(final).length, records.sha256(final)))

    for encoded, image_id, full, observed in examples:
        if writer is None:
            name = f"{split}-{len(shards):05d}.tfrecord.tmp"
            writer, count, size = tf.io.TFRecordWriter(os.path.join(directory, name)), 0, 0
        record = records.serialize_example(encoded, image_id, full, observed, index)
        writer.write(record)
        index, count, size = index + 1, count + 1, size + len(record)
        if size >= shard_limit:
            finish_shard()
            writer = None
    if writer is not None:
        finish_shard()
    for k, shard in enumerate(shards):  # the converter's names, `<split>-k-of-n`, once n is known
        final = records.shard_name(split, k, len(shards))
        tf.io.gfile.rename(os.path.join(directory, shard.file), os.path.join(directory, final), overwrite=True)
        shards[k] = dataclasses.replace(shard, file=final)
    manifest = records.Manifest(
        dataset=dataset, split=split, num_examples=index, num_classes=len(class_names),
        class_names=tuple(class_names), shards=tuple(shards), full_labels_known=full_labels_known,
        directory=directory,
    )
    manifest.write()
    return manifest
