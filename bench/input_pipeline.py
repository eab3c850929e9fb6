"""Input pipeline throughput: our tf.data pipeline from shards against the original loader and the bare decode limit.

    python bench/input_pipeline.py [--images=1000] [--batch_size=32] [--image_size=448] [--repeats=3]
                                   [--workers=N] [--output=bench/results/input_pipeline.json]

Makes --images photo-like JPEGs of VOC's typical size (500x375, quality 90),
writes them as shards with our converter's writer (`records.write_split`) and
as plain files (the same bytes), then measures training images/s at
--image_size with a random horizontal flip for:

  (a)  ours: `pipeline.make_train_dataset` from the shards, one epoch per pass.
       It delivers float32 images in [0, 255]: normalisation is the model's
       first layer, so it costs the input pipeline nothing.
  (a') (a) plus the model's caffe normalisation (RGB -> BGR, minus the
       ImageNet mean) as a map over batches, for a like-for-like comparison.
  (b)  the original PyTorch loader's work: per file, PIL open + convert("RGB")
       + resize to --image_size (bilinear) + random flip + to float CHW / 255 +
       ImageNet mean/std, in --workers spawned processes; the parent stacks
       batches, as DataLoader's collate does. Skipped if Pillow is missing.
  (c)  the bare limit: the encoded bytes held in memory, `tf.io.decode_jpeg` +
       resize + flip + mean/std normalisation, parallel map, batch, prefetch.

Every loader gets one untimed warm-up pass (file cache, tracing, worker
start-up, tf.data autotuning), then --repeats timed passes alternating
a, a', b, c; each pass is a fresh iterator over every image. Reports the
median images/s of each and the ratios a/b (target >= 3) and a/c (target
>= 0.8), as a Markdown table and as JSON.
"""

import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

# TensorFlow is imported inside functions only: the baseline's worker
# processes are spawned and re-import this module, and the original loader's
# workers have no TensorFlow in them.

flags.DEFINE_integer("images", 1000, "JPEGs in the synthetic set.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("image_size", 448, "Training input size (square).")
flags.DEFINE_integer("repeats", 3, "Timed passes per loader, after one warm-up pass.")
flags.DEFINE_integer("workers", os.cpu_count(), "Worker processes of the PIL baseline (b).")
flags.DEFINE_float("shard_size_mb", 32, "Shard size for the converter's writer.")
flags.DEFINE_string("output", "bench/results/input_pipeline.json", "Where the JSON goes.")
FLAGS = flags.FLAGS

SOURCE_WIDTH, SOURCE_HEIGHT = 500, 375  # VOC's typical image size
NUM_CLASSES = 20
JPEG_QUALITY = 90
# torchvision's ImageNet statistics, as the original code normalises (on [0, 1] images).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TARGETS = {"a/b": 3.0, "a/c": 0.8}
LOADERS = {
    "a": "ours: make_train_dataset from shards (float32 0..255, normalised in the model)",
    "a'": "ours + caffe normalisation as a map over batches",
    "b": "original loader: PIL per file in worker processes, mean/std, parent stacks",
    "c": "bare limit: decode_jpeg + resize + flip + mean/std from bytes in memory",
}


# --- data ---------------------------------------------------------------------------------------------------------

def make_jpegs(num_images, seed=0):
    """`num_images` 500x375 JPEGs (quality 90) with photo-like content, as encoded bytes."""
    import tensorflow as tf

    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:SOURCE_HEIGHT, 0:SOURCE_WIDTH]
    jpegs = []
    for _ in range(num_images):
        # Smooth colour fields plus grain: compresses like a photo, not like noise or a flat image.
        phase = rng.rand(3) * 6.28
        base = 127 + 100 * np.sin(x[..., None] / (20 + 30 * rng.rand()) + y[..., None] / 40.0 + phase)
        image = np.clip(base + rng.normal(0, 12, size=(SOURCE_HEIGHT, SOURCE_WIDTH, 3)), 0, 255).astype(np.uint8)
        jpegs.append(tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy())
    return jpegs


def write_files(directory, jpegs):
    """The JPEGs as files, for the per-file baseline; returns their paths."""
    os.makedirs(directory)
    paths = []
    for i, data in enumerate(jpegs):
        paths.append(os.path.join(directory, f"{i:06d}.jpg"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def write_shards(directory, jpegs, shard_size_mb, seed=0):
    """The same JPEGs as a training split written by our converter's writer; returns its Manifest."""
    from spml_tf import records

    rng = np.random.RandomState(seed)

    def examples():
        for i, data in enumerate(jpegs):
            row = np.zeros(NUM_CLASSES, np.float32)
            row[rng.randint(NUM_CLASSES)] = 1.0  # a single positive, observed and full alike
            yield data, f"{i:06d}", row, row

    class_names = [f"class{c:02d}" for c in range(NUM_CLASSES)]
    return records.write_split(directory, dataset="bench", split="train", class_names=class_names,
                               examples=examples(), shard_size_mb=shard_size_mb)


# --- the loaders: each a function of the pass number that returns an iterable of image batches ---------------------

def ours(manifest, image_size, batch_size, normalize=False):
    """(a), or (a') with `normalize`: our training pipeline, exactly as training builds it."""
    import tensorflow as tf

    from spml_tf import models, pipeline

    mean = tf.constant(models.CAFFE_BGR_MEAN, tf.float32)

    def caffe(images, index):
        # tf.reverse, as the model's keras.ops.flip: a [..., ::-1] slice costs 2.5x as much here.
        return tf.reverse(images, axis=[-1]) - mean, index

    def batches(pass_number):
        dataset = pipeline.make_train_dataset(manifest, image_size, batch_size, random_flip=True, seed=pass_number)
        if normalize:
            dataset = dataset.map(caffe, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        return (images for images, _ in dataset)

    return batches


def bare_limit(jpegs, image_size, batch_size):
    """(c): decode, resize, flip and normalise the bytes in memory; nothing else."""
    import tensorflow as tf

    mean, std = tf.constant(IMAGENET_MEAN), tf.constant(IMAGENET_STD)

    def batches(pass_number):
        def preprocess(index, encoded):
            image = tf.io.decode_jpeg(encoded, channels=3)
            image = tf.image.resize(image, [image_size, image_size])
            image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([tf.constant(pass_number, tf.int64), index]))
            return (image / 255.0 - mean) / std

        dataset = tf.data.Dataset.from_tensor_slices(jpegs).enumerate()
        dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return batches


def load_like_the_original(task):
    """One training image as the original's Dataset.__getitem__ makes it: a float32 CHW array, mean/std normalised.

    torchvision's Resize((S, S)) + RandomHorizontalFlip + ToTensor + Normalize, restated with PIL and NumPy.
    """
    from PIL import Image

    path, flip, image_size = task
    with Image.open(path) as raw:
        image = raw.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    chw = np.asarray(image).transpose(2, 0, 1)  # ToTensor: HWC uint8 -> CHW float in [0, 1]
    return (chw.astype(np.float32) / 255.0 - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def original_loader(pool, paths, image_size, batch_size):
    """(b): a shuffled epoch of files loaded by `pool`'s workers, batched in the parent like DataLoader's collate."""

    def batches(pass_number):
        rng = np.random.RandomState(pass_number)
        order = rng.permutation(len(paths))
        flips = rng.rand(len(paths)) < 0.5
        tasks = [(paths[i], bool(flip), image_size) for i, flip in zip(order, flips)]
        loaded = pool.imap(load_like_the_original, tasks, chunksize=2)
        for start in range(0, len(tasks), batch_size):
            yield np.stack([next(loaded) for _ in range(min(batch_size, len(tasks) - start))])

    return batches


# --- measuring ----------------------------------------------------------------------------------------------------

def images_per_second(batches):
    """Drains one pass of `batches`; images/s over the whole pass, start-up included."""
    start = time.perf_counter()
    count = sum(int(batch.shape[0]) for batch in batches)
    return count / (time.perf_counter() - start), count


def measure(loaders, num_images, repeats):
    """One warm-up pass each, then `repeats` passes alternating between the loaders; images/s of every pass."""
    for key, batches in loaders.items():
        rate, count = images_per_second(batches(0))
        if count != num_images:
            raise RuntimeError(f"loader ({key}) delivered {count} images in one pass, expected {num_images}")
        print(f"warm-up ({key}): {rate:.0f} images/s", flush=True)
    passes = {key: [] for key in loaders}
    for repeat in range(1, repeats + 1):
        for key, batches in loaders.items():
            passes[key].append(images_per_second(batches(repeat))[0])
            print(f"pass {repeat} ({key}): {passes[key][-1]:.0f} images/s", flush=True)
    return passes


def markdown(rows, ratios):
    lines = ["| loader | what | images/s (median) | passes |", "|---|---|---|---|"]
    for key, row in rows.items():
        if row is None:
            lines.append(f"| ({key}) | {LOADERS[key]} | skipped (no Pillow) | |")
            continue
        passes = ", ".join(f"{rate:.0f}" for rate in row["passes"])
        lines.append(f"| ({key}) | {LOADERS[key]} | {row['images_per_second']:.1f} | {passes} |")
    lines += ["", "| ratio | measured | target |", "|---|---|---|"]
    for name, target in TARGETS.items():
        measured = f"{ratios[name]:.2f}" if ratios[name] is not None else "skipped"
        lines.append(f"| {name} | {measured} | >= {target:g} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    load_at_start = round(os.getloadavg()[0], 2)  # other processes on the machine skew every rate
    for name in ("images", "batch_size", "image_size", "repeats", "workers"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be at least 1")
    try:
        import PIL
        pillow = PIL.__version__
    except ImportError:
        pillow = None
        print("Pillow is not installed: skipping baseline (b), the original PIL loader, and the a/b ratio. "
              "`pip install pillow` to measure it.", flush=True)
    import tensorflow as tf

    work = tempfile.mkdtemp(prefix="spml_input_bench_")
    pool = None
    try:
        # --- data: the same encoded bytes in shards, in files and in memory
        print(f"making {FLAGS.images:,} JPEGs of {SOURCE_WIDTH}x{SOURCE_HEIGHT} ...", flush=True)
        jpegs = make_jpegs(FLAGS.images)
        megabytes = sum(map(len, jpegs)) / 1e6
        print(f"{megabytes:.1f} MB, {megabytes * 1e3 / FLAGS.images:.0f} kB per image", flush=True)
        manifest = write_shards(os.path.join(work, "shards"), jpegs, FLAGS.shard_size_mb)
        paths = write_files(os.path.join(work, "files"), jpegs)

        # --- loaders, in the order they alternate
        size, batch = FLAGS.image_size, FLAGS.batch_size
        loaders = {"a": ours(manifest, size, batch), "a'": ours(manifest, size, batch, normalize=True)}
        if pillow:
            # Spawned, not forked: this process already runs TensorFlow's threads.
            pool = multiprocessing.get_context("spawn").Pool(FLAGS.workers)
            loaders["b"] = original_loader(pool, paths, size, batch)
        loaders["c"] = bare_limit(jpegs, size, batch)
        passes = measure(loaders, FLAGS.images, FLAGS.repeats)

        # --- report
        rows = {key: None for key in LOADERS}
        for key, rates in passes.items():
            rows[key] = {"what": LOADERS[key], "images_per_second": round(statistics.median(rates), 1),
                         "passes": [round(rate, 1) for rate in rates]}
        median = {key: row["images_per_second"] if row else None for key, row in rows.items()}
        ratios = {"a/b": median["a"] / median["b"] if median["b"] else None, "a/c": median["a"] / median["c"]}
        targets = {name: {"target": target,
                          "measured": round(ratios[name], 3) if ratios[name] is not None else None,
                          "met": ratios[name] >= target if ratios[name] is not None else None}
                   for name, target in TARGETS.items()}
        report = {
            "what": "training input pipelines, images/s at image_size with a random horizontal flip; median of "
                    "the timed passes, each a fresh iterator over every image, after one warm-up pass",
            "images": FLAGS.images, "source_size": [SOURCE_WIDTH, SOURCE_HEIGHT], "jpeg_quality": JPEG_QUALITY,
            "megabytes": round(megabytes, 1), "shards": len(manifest.shards),
            "image_size": size, "batch_size": batch, "repeats": FLAGS.repeats, "workers": FLAGS.workers,
            "results": rows,
            "ratios": {name: round(ratio, 3) if ratio is not None else None for name, ratio in ratios.items()},
            "targets": targets,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version(), "tensorflow": tf.__version__, "pillow": pillow,
                        "load_average_at_start": load_at_start},
            "command": " ".join(["python", "bench/input_pipeline.py"] + sys.argv[1:]),
        }
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(report, f, indent=2)
        print(markdown(rows, ratios))
        for name, target in targets.items():
            if target["met"] is False:
                print(f"TARGET MISSED: {name} = {target['measured']:.2f}, target >= {target['target']:g}")
            elif target["met"]:
                print(f"target met: {name} = {target['measured']:.2f} >= {target['target']:g}")
            else:
                print(f"target {name}: not measured (baseline (b) skipped)")
        print(f"Wrote {FLAGS.output}")
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
