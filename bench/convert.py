"""Conversion throughput: a VOC-sized synthetic release converted with 1..N worker processes.

    python bench/convert.py [--images=2000] [--workers=1,2] [--output=bench/results/convert.json]

Makes a release in VOC 2012's exact layout with JPEGs of VOC's typical size
(500x375, photo-like content, about 50-100 kB each), then times the whole
`python -m spml_tf.convert` job (read labels, check and decode every image,
write shards, hash them) once per worker count, in a fresh process each time,
and prints images/s and MB/s. A re-run of a finished conversion (which
verifies every shard's SHA-256 and writes nothing) is timed too.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

flags.DEFINE_integer("images", 2000, "Images in the synthetic release (train and val image sets together).")
flags.DEFINE_list("workers", ["1", "2"], "Worker process counts to time.")
flags.DEFINE_string("output", "bench/results/convert.json", "Where the JSON goes.")
FLAGS = flags.FLAGS

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def make_release(raw_dir, num_images):
    """VOCdevkit/VOC2012 with ImageSets/Main/<class>_{train,val}.txt and 500x375 JPEGs; returns total bytes."""
    import tensorflow as tf

    rng = np.random.RandomState(0)
    root = os.path.join(raw_dir, "VOCdevkit", "VOC2012")
    os.makedirs(os.path.join(root, "ImageSets", "Main"))
    os.makedirs(os.path.join(root, "JPEGImages"))
    y, x = np.mgrid[0:375, 0:500]
    total = 0
    ids = {"train": [], "val": []}
    for i in range(num_images):
        image_id = f"2008_{i:06d}"
        ids["train" if i % 2 == 0 else "val"].append(image_id)
        # Smooth colour fields plus grain: compresses like a photo, not like noise or a flat image.
        phase = rng.rand(3) * 6.28
        base = 127 + 100 * np.sin(x[..., None] / (20 + 30 * rng.rand()) + y[..., None] / 40.0 + phase)
        image = np.clip(base + rng.normal(0, 12, size=(375, 500, 3)), 0, 255).astype(np.uint8)
        data = tf.io.encode_jpeg(image, quality=90).numpy()
        total += len(data)
        with open(os.path.join(root, "JPEGImages", image_id + ".jpg"), "wb") as f:
            f.write(data)
    for image_set, names in ids.items():
        positives = {image_id: set(rng.choice(len(CLASSES), rng.randint(1, 3), replace=False)) for image_id in names}
        for c, name in enumerate(CLASSES):
            with open(os.path.join(root, "ImageSets", "Main", f"{name}_{image_set}.txt"), "w") as f:
                f.writelines(f"{i} {1 if c in positives[i] else -1:2d}\n" for i in names)
    return total


def timed_conversion(raw_dir, out_dir, workers):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "spml_tf.convert", "--dataset=voc", f"--raw_dir={raw_dir}", f"--out_dir={out_dir}",
         f"--workers={workers}", "--shard_size_mb=32"],
        cwd=ROOT, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return seconds


def main(argv):
    del argv
    work = tempfile.mkdtemp(prefix="spml_convert_bench_")
    try:
        raw_dir = os.path.join(work, "raw")
        print(f"making {FLAGS.images:,} VOC-sized JPEGs ...", flush=True)
        total_bytes = make_release(raw_dir, FLAGS.images)
        print(f"{total_bytes / 1e6:.1f} MB, {total_bytes / FLAGS.images / 1e3:.0f} kB per image")
        rows = []
        for workers in map(int, FLAGS.workers):
            out_dir = os.path.join(work, f"out-{workers}")
            seconds = timed_conversion(raw_dir, out_dir, workers)
            again = timed_conversion(raw_dir, out_dir, workers)  # finished: verify every shard, write nothing
            rows.append({"workers": workers, "seconds": round(seconds, 2),
                         "images_per_second": round(FLAGS.images / seconds, 1),
                         "mb_per_second": round(total_bytes / 1e6 / seconds, 1),
                         "rerun_seconds": round(again, 2)})
            print(f"workers={workers}: {seconds:.1f} s, {FLAGS.images / seconds:.0f} images/s, "
                  f"{total_bytes / 1e6 / seconds:.1f} MB/s (a re-run that verifies and skips: {again:.1f} s)",
                  flush=True)
        report = {
            "what": "python -m spml_tf.convert --dataset=voc, whole job in a fresh process (TensorFlow start-up "
                    "included), synthetic VOC-layout release",
            "images": FLAGS.images, "megabytes": round(total_bytes / 1e6, 1),
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "results": rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
