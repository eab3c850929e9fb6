"""Writes converted splits as TFRecord shards: images checked, work spread over processes, resumable.

For each split: check every image (readable, a decodable JPEG or PNG), collect
every problem, then either fail with the full list or (skip_bad_images) drop
them; plan the shards by size; write each shard under a temporary name and
rename it when complete; write the manifest last. The plan is saved next to
the shards with a fingerprint of the inputs, so a re-run after a crash writes
only the shards that are missing, and a re-run after success does nothing.
Image bytes are stored as they are, never re-encoded.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re

import numpy as np
import tensorflow as tf

from spml_tf.core import files
from spml_tf.data import image_limits, records
from spml_tf.core.errors import DataError, UsageError, reason
from spml_tf.core.progress import Progress

PLAN = "plan.json"
CHECK_CHUNK = 64  # images per check task: small enough for a smooth progress line
RECORD_OVERHEAD = 64  # bytes a record adds to its image, besides the labels
MAX_REPORTED = 50  # problems printed in the error; all of them go to the report file
REPORT = "conversion_problems.txt"
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class SplitInput:
    """One split to write: images in order, their labels, and problems already known from the labels."""

    name: str
    paths: tuple
    ids: tuple
    full: np.ndarray  # N x C in {0, 1}; zeros when unknown
    observed: np.ndarray  # N x C in {-1, 0, 1}
    full_labels_known: bool = True
    problems: tuple = ()  # (row, reason)
    origin: str = ""  # the split its rows were read from, when another one (val held out of train)

    @property
    def label(self):
        """How reports name the split's rows: `val (held out of train)` for rows read from the train input."""
        return f"{self.name} (held out of {self.origin})" if self.origin and self.origin != self.name else self.name

    def __len__(self):
        return len(self.ids)

    def fingerprint(self, dataset, class_names, options):
        digest = hashlib.sha256()
        header = [records.SCHEMA_VERSION, dataset, self.name, list(class_names), self.full_labels_known, options]
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update("\n".join(self.ids).encode())
        digest.update(np.ascontiguousarray(self.full, np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.observed, np.float32).tobytes())
        digest.update(json.dumps(sorted(self.problems)).encode())
        return digest.hexdigest()


# --- Work done in the worker processes (plain functions: they are pickled by name) --------


def check_images(items, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """[(row, size, reason or None)] for (row, path) items: the file is read and fully decoded."""
    results = []
    for row, path in items:
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        except tf.errors.NotFoundError:
            results.append((row, 0, "file not found"))
            continue
        except tf.errors.OpError as error:
            results.append((row, 0, f"unreadable ({reason(error)})"))
            continue
        results.append((row, len(data), image_problem(data, max_pixels)))
    return results


def image_problem(data, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Why `data` is not a decodable JPEG or PNG of at most `max_pixels` pixels, or None if it is one."""
    if data.startswith(JPEG_MAGIC):
        decode = lambda: tf.io.decode_jpeg(data, channels=3, ratio=8)  # noqa: E731  (ratio 8: all data read, 64x less work)
    elif data.startswith(PNG_MAGIC):
        decode = lambda: tf.io.decode_png(data, channels=3)  # noqa: E731
    else:
        kind = "an empty file" if not data else f"starts with bytes {data[:8].hex()}"
        return f"not a JPEG or PNG file ({kind})"
    too_large = image_limits.problem(data, max_pixels)  # from the header, before decoding
    if too_large:
        return too_large
    try:
        decode()
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
        return f"does not decode ({reason(error)})"
    return None


def write_shard(task):
    """Writes one shard from (directory, file, examples, resize_to) and returns its records.Shard.

    examples: (path, image id, full row, observed row, example index, size seen by the check).
    """
    directory, file, examples, resize_to = task
    final = os.path.join(directory, file)

    def save(temporary):
        with tf.io.TFRecordWriter(temporary) as writer:
            for path, image_id, full, observed, index, size in examples:
                with tf.io.gfile.GFile(path, "rb") as f:
                    encoded = f.read()
                if len(encoded) != size:
                    raise DataError(f"{path} changed during the conversion ({size} bytes when checked, "
                                    f"{len(encoded)} now); run the same command again")
                if resize_to:
                    encoded = resized_jpeg(encoded, resize_to)
                writer.write(records.serialize_example(encoded, image_id, full, observed, index))

    files.replace(final, save)
    return records.Shard(file, len(examples), tf.io.gfile.stat(final).length, records.sha256(final))


def resized_jpeg(encoded, side):
    """The image resized to side x side as the training pipeline resizes it, re-encoded as JPEG 95."""
    from spml_tf.data import pipeline

    image = pipeline.decode_and_resize(encoded, side)  # already whole numbers in [0, 255]
    return tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=95).numpy()


def finished_shard(task):
    """The records.Shard of a shard a previous run completed (renamed into place, so whole)."""
    directory, file, examples, _ = task
    path = os.path.join(directory, file)
    return records.Shard(file, len(examples), tf.io.gfile.stat(path).length, records.sha256(path))


class WorkerPool:
    """An unordered map over `workers` processes, or in this process for workers <= 1.

    The processes start at the first map (a conversion that has nothing left
    to do starts none) and serve every later one. They are spawned (never
    forked: TensorFlow's threads do not survive a fork) and see no GPU, so
    they cannot take accelerator memory from a training job on the machine.
    """

    def __init__(self, workers):
        self.workers = workers
        self.pool = None

    def map(self, function, tasks):
        if self.workers <= 1:
            return map(function, tasks)
        if self.pool is None:
            saved = {key: os.environ.get(key) for key in ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")}
            os.environ.update(CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3")
            try:  # the children copy the environment when they start
                self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        return self.pool.imap_unordered(function, tasks)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()  # on success every task is done; on an error nothing is left worth waiting for
            self.pool.join()


# --- The conversion of a dataset's splits ---------------------------------------------------


def write_splits(out_dir, dataset, class_names, splits, *, skip_bad_images=False, shard_size_mb=150, workers=1,
                 resize_to=0, log=print, options=None, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Writes every SplitInput of `splits` under out_dir/<split>/ and returns {split: Manifest}.

    resize_to: store images resized to this side (re-encoded), instead of the source bytes.
    `options` (JSON-able) joins the fingerprint: anything else that shapes the output.
    """
    options = {"options": options, "shard_size_mb": shard_size_mb, "skip_bad_images": skip_bad_images,
               "resize_to": resize_to}
    fingerprints = {split.name: split.fingerprint(dataset, class_names, options) for split in splits}

    # Where each split stands: done (every shard verified), planned (resume), or new.
    manifests, plans = {}, {}
    for split in splits:
        directory = os.path.join(out_dir, split.name)
        plan = _read_plan(directory, fingerprints[split.name])
        done = _verified_manifest(directory, fingerprints[split.name], plan is not None, log)
        if done:
            log(f"{split.name}: already converted ({done.num_examples:,} images, every shard verified)")
            manifests[split.name] = done
        elif plan:
            log(f"{split.name}: resuming an interrupted conversion")
            plans[split.name] = plan
    new = [split for split in splits if split.name not in manifests and split.name not in plans]
    pending = [split for split in splits if split.name not in manifests]

    with contextlib.closing(WorkerPool(workers)) as pool:
        # Check every image of the new splits, then report all problems at once.
        checked = _check(new, pool, max_pixels)
        problems = [(split.label, row, split.ids[row], reason)
                    for split in new for row, reason in sorted(set(split.problems) | checked[split.name][1])]
        if problems and not skip_bad_images:
            raise DataError(_report(out_dir, problems, skipping=False))
        if problems:
            log(_report(out_dir, problems, skipping=True))
        for split in new:
            sizes, bad = checked[split.name]
            plans[split.name] = _make_plan(split, sizes, sorted(set(split.problems) | bad), shard_size_mb,
                                           fingerprints[split.name])
            _start_split(os.path.join(out_dir, split.name), plans[split.name])
        shards = _write_shards(out_dir, pending, plans, pool, resize_to)

    for split in pending:
        plan = plans[split.name]
        manifest = records.Manifest(
            dataset=dataset, split=split.name, num_examples=sum(len(rows) for _, rows in plan["shards"]),
            num_classes=len(class_names), class_names=tuple(class_names),
            shards=tuple(shards[file] for file, _ in plan["shards"]), full_labels_known=split.full_labels_known,
            dropped=tuple({"image": split.ids[row], "reason": reason} for row, reason in plan["dropped"]),
            fingerprint=plan["fingerprint"], resized_to=resize_to, directory=os.path.join(out_dir, split.name),
        )
        manifest.write()  # the plan stays: it lets a later run repair a damaged shard
        manifests[split.name] = manifest
        log(f"{split.name}: {manifest.num_examples:,} images in {len(manifest.shards)} shard(s)"
            + (f", {len(manifest.dropped)} dropped" if manifest.dropped else ""))
    return manifests


def _write_shards(out_dir, splits, plans, pool, resize_to):
    """{file: Shard} of every planned shard: written if missing, hashed if a previous run wrote it."""
    tasks, finished = [], []
    for split in splits:
        directory = os.path.join(out_dir, split.name)
        sizes = plans[split.name]["sizes"]
        for file, rows in plans[split.name]["shards"]:
            examples = [(split.paths[row], split.ids[row], split.full[row], split.observed[row], index, sizes[row])
                        for index, row in rows]
            exists = tf.io.gfile.exists(os.path.join(directory, file))  # renamed into place: whole
            (finished if exists else tasks).append((directory, file, examples, resize_to))
    shards = {shard.file: shard for shard in pool.map(finished_shard, finished)}
    if tasks:
        progress = Progress(sum(len(task[2]) for task in tasks), "writing shards")
        for shard in pool.map(write_shard, tasks):
            shards[shard.file] = shard
            progress.update(shard.num_examples)
        progress.close()
    return shards


def _check(splits, pool, max_pixels):
    """{split: (sizes, {(row, reason)})} for every image of `splits`, checked in parallel."""
    results = {split.name: (np.zeros(len(split), np.int64), set()) for split in splits}
    tasks = []
    for split in splits:
        rows = [(row, path) for row, path in enumerate(split.paths) if path]  # no path: a problem already
        tasks += [(split.name, rows[i : i + CHECK_CHUNK]) for i in range(0, len(rows), CHECK_CHUNK)]
    if not tasks:
        return results
    progress = Progress(sum(len(items) for _, items in tasks), "checking images")
    names = [name for name, _ in tasks]
    check = _TaggedCall(functools.partial(check_images, max_pixels=max_pixels))
    for chunk, checked in pool.map(check, list(enumerate(items for _, items in tasks))):
        sizes, bad = results[names[chunk]]
        for row, size, why in checked:
            sizes[row] = size
            if why:
                bad.add((row, why))
        progress.update(len(checked))
    progress.close()
    return results


class _TaggedCall:
    """function(argument) for a (number, argument) task, returned as (number, result): an unordered map's results
    can then be matched to their tasks."""

    def __init__(self, function):
        self.function = function

    def __call__(self, numbered):
        number, argument = numbered
        return number, self.function(argument)


def _report(out_dir, problems, skipping):
    """The problems, one per line (the first MAX_REPORTED), and the file that lists them all."""
    tf.io.gfile.makedirs(out_dir)
    path = os.path.join(out_dir, REPORT)
    lines = [f"{split}\t{image}\t{why}" for split, _, image, why in problems]
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("split\timage\treason\n" + "\n".join(lines) + "\n")
    shown = "\n".join(f"  {split}: {image}: {why}" for split, _, image, why in problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    if skipping:
        return (f"--skip_bad_images: dropping {len(problems)} image(s) (listed in {path} and in the manifests):\n"
                f"{shown}{more}")
    return (f"{len(problems)} bad input(s), nothing was written:\n{shown}{more}\n"
            f"All are listed in {path}. Fix them, or pass --skip_bad_images to leave them out "
            "(the manifests then record what was dropped).")


def _make_plan(split, sizes, dropped, shard_size_mb, fingerprint):
    """The kept rows, numbered 0..N-1 in order and grouped into shards of about shard_size_mb."""
    limit = shard_size_mb * 2**20
    record_extra = RECORD_OVERHEAD + len(split.ids[0] if split.ids else "") + 8 * split.full.shape[1]
    bad_rows = {row for row, _ in dropped}
    groups, current, current_bytes = [], [], 0
    kept = [row for row in range(len(split)) if row not in bad_rows]
    for index, row in enumerate(kept):
        size = int(sizes[row]) + record_extra
        if current and current_bytes + size > limit:
            groups.append(current)
            current, current_bytes = [], 0
        current.append((index, row))
        current_bytes += size
    if current or not groups:
        groups.append(current)
    shards = [(records.shard_name(split.name, k, len(groups)), group) for k, group in enumerate(groups)]
    return {"fingerprint": fingerprint, "sizes": [int(s) for s in sizes], "dropped": dropped, "shards": shards}


def _start_split(directory, plan):
    """Empties the split directory of an earlier, different conversion and saves the plan.

    Only the files a conversion writes are removed; a directory holding
    anything else is not ours, and is refused untouched.
    """
    if tf.io.gfile.isdir(directory):
        split = os.path.basename(directory.rstrip("/"))
        names = [name.rstrip("/") for name in tf.io.gfile.listdir(directory)]
        foreign = [name for name in names if not _written_by_conversion(name, split)]
        if foreign:
            shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(f"{directory} holds files that no conversion wrote ({shown}); pass an --out_dir that "
                             "is new, empty or an earlier conversion's. Nothing was touched")
        for name in names:
            tf.io.gfile.remove(os.path.join(directory, name))
    tf.io.gfile.makedirs(directory)
    files.write_json(os.path.join(directory, PLAN), plan, indent=None)


def _written_by_conversion(name, split):
    """Whether a file of a split directory has the name of one a conversion writes."""
    name = name[: -len(".tmp")] if name.endswith(".tmp") else name.replace("-partial.", ".")  # temporaries too
    return name in (records.MANIFEST, PLAN) or re.fullmatch(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.tfrecord", name)


def _read_plan(directory, fingerprint):
    path = os.path.join(directory, PLAN)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            plan = json.load(f)
    except ValueError:
        return None
    if plan.get("fingerprint") != fingerprint:
        return None
    plan["shards"] = [(file, [tuple(pair) for pair in rows]) for file, rows in plan["shards"]]
    plan["dropped"] = [tuple(pair) for pair in plan["dropped"]]
    return plan


def _verified_manifest(directory, fingerprint, have_plan, log):
    """The Manifest of a finished conversion of these inputs whose shards all match it, else None.

    Shards that do not match (size or SHA-256) are deleted when the plan is
    there to rewrite them, and so is the manifest: the caller then resumes.
    """
    try:
        recorded = records.parse_manifest(directory)
    except DataError:
        return None  # none, or not readable: convert the split anew
    if recorded.fingerprint != fingerprint:
        return None
    damaged = [shard.file for shard in recorded.shards if not _shard_matches(directory, shard)]
    if not damaged:
        return records.read_manifest(directory)
    if have_plan:
        log(f"{os.path.basename(directory)}: {len(damaged)} shard(s) damaged or missing, rewriting them")
        for file in damaged + [records.MANIFEST]:
            # Only names inside the split directory: a manifest naming "../x" must not delete x.
            if records.is_plain_name(file) and tf.io.gfile.exists(os.path.join(directory, file)):
                tf.io.gfile.remove(os.path.join(directory, file))
    return None


def _shard_matches(directory, shard):
    path = os.path.join(directory, shard.file)
    return (records.is_plain_name(shard.file) and tf.io.gfile.exists(path)
            and tf.io.gfile.stat(path).length == shard.num_bytes and records.sha256(path) == shard.sha256)
