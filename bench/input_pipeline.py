"""Input pipeline throughput: our tf.data pipeline from shards against the original loader and the bare decode limit.

    python bench/input_pipeline.py [--images=1000] [--batch_size=32] [--image_size=448] [--repeats=3]
                                   [--workers=N] [--output=bench/results/input_pipeline.json]

Makes --images photo-like JPEGs of VOC's typical size (500x375, quality 90),
writes them as plain files and, from those, as shards with our converter's
shard writer (`shard_writer.write_splits`), then measures training images/s at
--image_size with a random horizontal flip for:

  (a)  ours: `pipeline.make_train_dataset` from the shards, one epoch per pass.
       It delivers float32 images in [0, 255]: normalisation is the model's
       first layer, so it costs the input pipeline nothing.
  (a') (a) plus the model's normalisation (its first layer: ImageNet mean
       and std, as torchvision's) as a map over batches, for a like-for-like
       comparison.
  (a'') (a) from shards converted with `--resize_to=--image_size`: the
       images were resized (and re-encoded) once at conversion, so training
       decodes and skips the resize.
  (b)  the original PyTorch loader's work: per file, PIL open + convert("RGB")
       + resize to --image_size (bilinear) + random flip + to float CHW / 255 +
       ImageNet mean/std, in --workers spawned processes that send each image
       back through a pipe; the parent stacks the batches.
  (b') the same work moved as torch's DataLoader moves it: each worker
       collates whole batches into shared memory (2 batches in flight per
       worker, DataLoader's prefetch_factor), so nothing is pickled. On this
       2-core machine a real torch DataLoader(num_workers=2) doing the same
       over the same files delivered about 370 images/s, (b) about 170 and
       (b') 400-425: the pipe, not PIL, limits (b), and (b') is the fair
       stand-in for the original. Both are skipped if Pillow is missing.
  (c)  the bare limit: the encoded bytes held in memory, our decode + resize
       (`pipeline.decode_and_resize`: PIL's pixels and filter) + flip +
       mean/std normalisation, parallel map, batch, prefetch.

Every loader gets one untimed warm-up pass (file cache, tracing, worker
start-up, tf.data autotuning), then --repeats timed passes alternating
a, a', b, b', c; each pass is a fresh iterator over every image, timed from
its creation to the arrival of the last image (see `timed_pass`). Reports
the median images/s of each and the ratios a/b and a/b' (target >= 3) and
a/c (target >= 0.8), with a'/b' and a'/c for reference, as a Markdown table
and as JSON.
"""

import collections
import json
import multiprocessing
from multiprocessing import shared_memory
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

from bench.synthetic import JPEG_QUALITY, make_jpegs, write_files, write_shards  # noqa: E402

# TensorFlow is imported inside functions only: the baseline's worker
# processes are spawned and re-import this module, and the original loader's
# workers have no TensorFlow in them.

flags.DEFINE_integer("images", 1000, "JPEGs in the synthetic set.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("image_size", 448, "Training input size (square).")
flags.DEFINE_integer("repeats", 3, "Timed passes per loader, after one warm-up pass.")
flags.DEFINE_integer("workers", os.cpu_count(), "Worker processes of the PIL baselines (b) and (b').")
flags.DEFINE_float("shard_size_mb", 32, "Shard size for the converter's writer.")
flags.DEFINE_string("output", "bench/results/input_pipeline.json", "Where the JSON goes.")
FLAGS = flags.FLAGS

SOURCE_WIDTH, SOURCE_HEIGHT = 500, 375  # VOC's typical image size
NUM_CLASSES = 20
# torchvision's ImageNet statistics, as the original code normalises (on [0, 1] images).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BATCHES_IN_FLIGHT_PER_WORKER = 2  # torch DataLoader's default prefetch_factor
TARGETS = {"a/b": 3.0, "a/b'": 3.0, "a/c": 0.8}
RATIOS = ("a/b", "a/b'", "a/c", "a'/b'", "a'/c", "a''/b'")  # informative, no target
LOADERS = {
    "a": "ours: make_train_dataset from shards (float32 0..255, normalised in the model)",
    "a'": "ours + the model's ImageNet mean/std normalisation as a map over batches",
    "a''": "ours from shards converted with --resize_to=image_size (resized once at conversion)",
    "b": "original loader: PIL per file in worker processes, mean/std, sent by pipe, parent stacks",
    "b'": "original loader as DataLoader runs it: workers collate batches into shared memory",
    "c": "bare limit: decode_jpeg + resize + flip + mean/std from bytes in memory",
}


# --- data ---------------------------------------------------------------------------------------------------------

# --- the loaders: each a function of the pass number that returns an iterable of image batches ---------------------

def ours(manifest, image_size, batch_size, normalize=False):
    """(a), or (a') with `normalize`: our training pipeline, exactly as training builds it."""
    import tensorflow as tf

    from spml_tf.data import pipeline
    from spml_tf.nets import resnet

    # What the model's first layer (resnet.imagenet_normalization) computes, as constants a tf.data map can hold.
    mean = tf.constant([255.0 * m for m in resnet.IMAGENET_MEAN])
    std = tf.constant([255.0 * s for s in resnet.IMAGENET_STD])

    def normalized(images, index):
        return (images - mean) / std, index

    def batches(pass_number):
        dataset = pipeline.make_train_dataset(manifest, image_size, batch_size, random_flip=True, seed=pass_number)
        if normalize:
            dataset = dataset.map(normalized, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        return (images for images, _ in dataset)

    return batches


def bare_limit(jpegs, image_size, batch_size):
    """(c): decode, resize, flip and normalise the bytes in memory; nothing else."""
    import tensorflow as tf

    from spml_tf.data import pipeline

    mean, std = tf.constant(IMAGENET_MEAN), tf.constant(IMAGENET_STD)
    # One tensor of every file's bytes, made once: copying 75 MB of Python bytes into it is no part of a pass.
    encoded = tf.constant(jpegs)

    def batches(pass_number):
        def preprocess(index, encoded):
            image = pipeline.decode_and_resize(encoded, image_size)
            seed = tf.stack([tf.constant(pass_number, tf.int64), index])
            image = tf.image.stateless_random_flip_left_right(image, seed=seed)
            return (image / 255.0 - mean) / std

        dataset = tf.data.Dataset.from_tensor_slices(encoded).enumerate()
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
    """(b): a shuffled epoch of files loaded by `pool`'s workers, each image pickled back, stacked in the parent."""

    def batches(pass_number):
        rng = np.random.RandomState(pass_number)
        order = rng.permutation(len(paths))
        flips = rng.rand(len(paths)) < 0.5
        tasks = [(paths[i], bool(flip), image_size) for i, flip in zip(order, flips)]
        loaded = pool.imap(load_like_the_original, tasks, chunksize=2)
        for start in range(0, len(tasks), batch_size):
            yield np.stack([next(loaded) for _ in range(min(batch_size, len(tasks) - start))])

    return batches


def load_batch_into(task):
    """A (b') worker's job: load a batch with `load_like_the_original` straight into a shared-memory slot."""
    slot_name, items = task
    image_size = items[0][2]
    slot = shared_memory.SharedMemory(name=slot_name)
    try:
        batch = np.ndarray((len(items), 3, image_size, image_size), np.float32, buffer=slot.buf)
        for row, item in enumerate(items):
            batch[row] = load_like_the_original(item)  # DataLoader's collate copies into shared memory alike
        del batch  # the buffer must have no views left when the slot closes
    finally:
        slot.close()
    return len(items)


class DataLoaderLike:
    """(b'): batches loaded by `pool`'s workers into shared memory slots, in order, a few batches in flight.

    A batch is a view of its slot, valid until the next one is asked for. `close()` frees the slots.
    """

    def __init__(self, pool, workers, paths, image_size, batch_size):
        self.pool, self.paths, self.image_size, self.batch_size = pool, paths, image_size, batch_size
        slot_bytes = batch_size * 3 * image_size * image_size * np.dtype(np.float32).itemsize
        self.slots = [shared_memory.SharedMemory(create=True, size=slot_bytes)
                      for _ in range(BATCHES_IN_FLIGHT_PER_WORKER * workers)]

    def __call__(self, pass_number):
        rng = np.random.RandomState(pass_number)
        order = rng.permutation(len(self.paths))
        flips = rng.rand(len(self.paths)) < 0.5
        items = [(self.paths[i], bool(flip), self.image_size) for i, flip in zip(order, flips)]
        jobs = [items[start:start + self.batch_size] for start in range(0, len(items), self.batch_size)]
        pending = collections.deque()

        def submit(job):
            slot = self.slots[job % len(self.slots)]
            pending.append(self.pool.apply_async(load_batch_into, ((slot.name, jobs[job]),)))

        for job in range(min(len(self.slots), len(jobs))):
            submit(job)
        for job in range(len(jobs)):
            count = pending.popleft().get()
            slot = self.slots[job % len(self.slots)]
            yield np.ndarray((count, 3, self.image_size, self.image_size), np.float32, buffer=slot.buf)
            # The consumer is done with this batch: its slot takes the batch len(slots) further on.
            if job + len(self.slots) < len(jobs):
                submit(job + len(self.slots))

    def close(self):
        for slot in self.slots:
            slot.close()
            slot.unlink()


# --- measuring ----------------------------------------------------------------------------------------------------

def timed_pass(loader, pass_number, num_images):
    """One pass: images/s from the start until the last image arrives, and how long the end of the pass then took.

    Keras takes as many batches as the dataset's cardinality says and never
    waits for its end, so neither do we. tf.data with autotuning sometimes
    holds the end-of-sequence signal back: here it then came exactly 1.27 s
    or 2.56 s after the start (10 ms x (2^n - 1), as if at the next round of
    an optimiser whose period doubles), never with autotuning off. On short
    passes that added up to 60% to the time of ours and of (c), so it is
    reported apart.
    """
    start = time.perf_counter()
    batches = iter(loader(pass_number))
    count = 0
    while count < num_images:
        batch = next(batches, None)
        if batch is None:
            raise RuntimeError(f"a pass ended after {count} images, expected {num_images}")
        count += int(batch.shape[0])
    delivered = time.perf_counter() - start
    count += sum(int(batch.shape[0]) for batch in batches)
    if count != num_images:
        raise RuntimeError(f"a pass delivered {count} images, expected {num_images}")
    return num_images / delivered, time.perf_counter() - start - delivered


def measure(loaders, num_images, repeats):
    """One warm-up pass each, then `repeats` passes alternating between the loaders.

    Returns {loader: [(images/s, seconds the end of the pass took), ...]} of the timed passes.
    """
    passes = {key: [] for key in loaders}
    for repeat in range(repeats + 1):
        for key, loader in loaders.items():
            rate, end_wait = timed_pass(loader, repeat, num_images)
            if repeat:
                passes[key].append((rate, end_wait))
            held = f" (then {end_wait:.2f} s to signal its end)" if end_wait > 0.05 else ""
            print(f"{f'pass {repeat}' if repeat else 'warm-up'} ({key}): {rate:.0f} images/s{held}", flush=True)
    return passes


def summarize(passes):
    """Per loader its median and passes (None if skipped), the ratios of the medians, and the targets' verdicts."""
    rows = {key: None for key in LOADERS}
    for key, timed in passes.items():
        rates, end_waits = zip(*timed)
        rows[key] = {"what": LOADERS[key], "images_per_second": round(statistics.median(rates), 1),
                     "passes": [round(rate, 1) for rate in rates],
                     "end_of_pass_seconds": [round(wait, 3) for wait in end_waits]}
    ratios = {}
    for name in RATIOS:
        numerator, denominator = (rows[key] for key in name.split("/"))
        ratios[name] = numerator["images_per_second"] / denominator["images_per_second"] if denominator else None
    targets = {name: {"target": target,
                      "measured": round(ratios[name], 3) if ratios[name] is not None else None,
                      "met": ratios[name] >= target if ratios[name] is not None else None}
               for name, target in TARGETS.items()}
    return rows, ratios, targets


def markdown(rows, ratios):
    lines = ["| loader | what | images/s (median) | passes |", "|---|---|---|---|"]
    for key, row in rows.items():
        if row is None:
            lines.append(f"| ({key}) | {LOADERS[key]} | skipped (no Pillow) | |")
            continue
        passes = ", ".join(f"{rate:.0f}" for rate in row["passes"])
        lines.append(f"| ({key}) | {LOADERS[key]} | {row['images_per_second']:.1f} | {passes} |")
    lines += ["", "| ratio | measured | target |", "|---|---|---|"]
    for name, ratio in ratios.items():
        measured = f"{ratio:.2f}" if ratio is not None else "skipped"
        lines.append(f"| {name} | {measured} | {f'>= {TARGETS[name]:g}' if name in TARGETS else ''} |")
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
        print("Pillow is not installed: skipping the original PIL loader, baselines (b) and (b'), and their ratios. "
              "`pip install pillow` to measure it.", flush=True)
    import tensorflow as tf

    work = tempfile.mkdtemp(prefix="spml_input_bench_")
    pool = dataloader_like = None
    try:
        # --- data: the same encoded bytes in shards, in files and in memory
        print(f"making {FLAGS.images:,} JPEGs of {SOURCE_WIDTH}x{SOURCE_HEIGHT} ...", flush=True)
        jpegs = make_jpegs(FLAGS.images, SOURCE_WIDTH, SOURCE_HEIGHT)
        megabytes = sum(map(len, jpegs)) / 1e6
        print(f"{megabytes:.1f} MB, {megabytes * 1e3 / FLAGS.images:.0f} kB per image", flush=True)
        paths = write_files(os.path.join(work, "files"), jpegs)
        manifest = write_shards(os.path.join(work, "shards"), paths, NUM_CLASSES, FLAGS.shard_size_mb)
        resized = write_shards(os.path.join(work, "resized"), paths, NUM_CLASSES, FLAGS.shard_size_mb,
                               resize_to=FLAGS.image_size)

        # --- loaders, in the order they alternate
        size, batch = FLAGS.image_size, FLAGS.batch_size
        loaders = {"a": ours(manifest, size, batch), "a'": ours(manifest, size, batch, normalize=True),
                   "a''": ours(resized, size, batch)}
        if pillow:
            # Spawned, not forked: this process already runs TensorFlow's threads.
            pool = multiprocessing.get_context("spawn").Pool(FLAGS.workers)
            loaders["b"] = original_loader(pool, paths, size, batch)
            loaders["b'"] = dataloader_like = DataLoaderLike(pool, FLAGS.workers, paths, size, batch)
        loaders["c"] = bare_limit(jpegs, size, batch)
        passes = measure(loaders, FLAGS.images, FLAGS.repeats)

        # --- report
        rows, ratios, targets = summarize(passes)
        report = {
            "what": "training input pipelines, images/s at image_size with a random horizontal flip; median of "
                    "the timed passes, each a fresh iterator over every image timed from its creation to its last "
                    "image (end_of_pass_seconds: how long the end-of-sequence signal then took), after one "
                    "warm-up pass",
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
                print(f"target {name}: not measured (the PIL baselines were skipped)")
        print(f"Wrote {FLAGS.output}")
    finally:
        if dataloader_like is not None:
            dataloader_like.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
