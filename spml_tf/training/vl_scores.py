"""A frozen CLIP's (or SigLIP's) scores of a training split: what the pseudo-label rules of methods/vl.py read.

For every training image i (row i = example/index i, the label bank's row) and class c:
  global_cosine[i, c]  the cosine between the whole image, squashed to the preset's size, and class c's prompt;
  tile_max[i, c], tile_min[i, c]  the max and the min, over a G x G grid of tiles of the image as stored (each
      floor(W/G) x floor(H/G), from the top-left, squashed to the preset's size), of softmax over classes of
      cosine / tile_temperature.
`<out_dir>/scores.npz` holds the three arrays (float32 [N, C]), `scores.json` how they were made (written last).
The images go in chunks, each saved atomically under `<out_dir>/partial/`: a killed run continues after its last
whole chunk. No embedding is stored. Images are resized with the preset's own interpolation, no flip, no crop.
"""

import io
import json
import os
import re
import zipfile

import numpy as np
import tensorflow as tf

from spml_tf.core import files, progress, schema
from spml_tf.core.errors import DataError, UsageError, reason
from spml_tf.data import pipeline, records
from spml_tf.nets import clip

FORMAT = 1
SCORES, META, PARTIAL, PLAN = "scores.npz", "scores.json", "partial", "plan.json"
ARRAYS = ("global_cosine", "tile_max", "tile_min")
CHUNK_SIZE = 512
DEFAULT_TEMPLATE = "a photo of a {name}."
_CHUNK = re.compile(r"chunk-(\d{5})\.npz")
_OWN = {SCORES, META, PARTIAL, files.temporary_path(SCORES), files.temporary_path(META)}
_OWN_PARTIAL = re.compile(r"(plan(-partial)?\.json|chunk-\d{5}(-partial)?\.npz)")
_NAMES = schema.ListOf(schema.Text(max_length=1000), min_length=1, max_length=100_000)
META_SCHEMA = schema.Record({
    "format": schema.Integer(FORMAT, FORMAT), "preset": schema.Text(), "template": schema.Text(),
    "prompts": _NAMES, "class_names": _NAMES, "grid": schema.Integer(0, 64),
    "tile_temperature": schema.Number(1e-9), "dataset": schema.Text(), "train_examples": schema.Integer(0),
    "fingerprint": schema.Text(), "image_size": schema.Integer(1, 100_000)})
PLAN_SCHEMA = schema.Record({"settings": schema.Anything(), "chunk_size": schema.Integer(1),
                             "batch_size": schema.Integer(1), "image_size": schema.Integer(1, 100_000)})


def default_grid(dataset):
    """Tiles per side: AEVLP's 5 on CUB, 4 elsewhere."""
    return 5 if dataset == "cub" else 4


def default_tile_temperature(dataset):
    """AEVLP's softmax temperature of the tiles: 0.1 on CUB, 0.01 elsewhere."""
    return 0.1 if dataset == "cub" else 0.01


def slug(preset):
    """A directory name for a preset: a directory's own name, a handle with its separators as dashes."""
    text = preset.rstrip("/\\")
    text = text.replace("://", "-") if "://" in text else os.path.basename(text) or text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "preset"


def default_out_dir(dataset, data_dir, preset):
    """<data_dir>/vl_scores/<slug>, where spml-train looks for them (training/vl_positives.py)."""
    del dataset
    return os.path.join(data_dir, "vl_scores", slug(preset))


def read_wordings(value):
    """The wordings --class_names gives: the lines of a file when it names one, else its comma-separated items."""
    if tf.io.gfile.exists(value) and not tf.io.gfile.isdir(value):
        with tf.io.gfile.GFile(value, "r") as f:
            return [line.strip() for line in f.read().splitlines() if line.strip()]
    return [item.strip() for item in value.split(",") if item.strip()]


def prompts_for(class_names, template=DEFAULT_TEMPLATE, wordings=None):
    """One prompt per class: `template` with {name} replaced by the wording (default: the name, _ as spaces)."""
    if "{name}" not in template:
        raise UsageError(f"--template={template!r} has no {{name}} for the class name")
    if wordings is not None and len(wordings) != len(class_names):
        raise UsageError(f"--class_names gives {len(wordings)} wordings for the {len(class_names)} classes")
    wordings = wordings if wordings is not None else [name.replace("_", " ") for name in class_names]
    return [template.replace("{name}", wording) for wording in wordings]


def settings_of(manifest, dataset, preset, template, prompts, grid, tile_temperature):
    """What the scores depend on (scores.json but the preset's image size): equal settings, equal scores."""
    return {"format": FORMAT, "preset": preset, "template": template, "prompts": list(prompts),
            "class_names": list(manifest.class_names), "grid": int(grid), "tile_temperature": float(tile_temperature),
            "dataset": dataset, "train_examples": int(manifest.num_examples), "fingerprint": manifest.fingerprint}


def score(manifest, out_dir, settings, batch_size=32, chunk_size=CHUNK_SIZE, log=print, stream=None):
    """Scores the split of `manifest` into `out_dir`, or continues an unfinished run there (with the batch and chunk
    size it started with: its chunks then equal an uninterrupted run's bit for bit); False if the scores were there."""
    state, plan, done = _state(out_dir, settings)
    if state == "done":
        log(f"{out_dir} already holds these scores ({settings['train_examples']:,} images, preset "
            f"{settings['preset']}): nothing to do")
        return False
    model = clip.load(settings["preset"])
    partial = files.join(out_dir, PARTIAL)
    if plan is None:
        plan = {"settings": settings, "chunk_size": int(chunk_size), "batch_size": int(batch_size),
                "image_size": model.image_size}
        _write(files.join(partial, PLAN), lambda path: (tf.io.gfile.makedirs(partial), files.write_json(path, plan)))
    elif plan["image_size"] != model.image_size:
        raise UsageError(f"{out_dir} holds an unfinished run at image size {plan['image_size']} and "
                         f"{settings['preset']} now takes {model.image_size}: pass another --out_dir or remove it")
    chunk_size, batch_size, total = plan["chunk_size"], plan["batch_size"], settings["train_examples"]
    texts = model.embed_texts(settings["prompts"])
    if done:
        log(f"continuing the unfinished scores in {out_dir}: {min(done * chunk_size, total):,} of {total:,} images")
    _score_chunks(manifest, partial, model, texts, settings, batch_size, chunk_size, done, stream)
    _finish(out_dir, settings, model.image_size, chunk_size)
    log(f"wrote the scores of {total:,} images and {len(texts)} classes to {files.join(out_dir, SCORES)}")
    return True


def image_views(image, size, grid, interpolation="bilinear", antialias=False):
    """float32 [1 + grid^2, size, size, 3] in [0, 255]: the whole image, then its tiles row by row, each resized."""
    crops = [image]
    if grid:  # grid 0: the whole image only (VLPL's rule reads nothing else)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        tile_height, tile_width = tf.maximum(height // grid, 1), tf.maximum(width // grid, 1)
    for row in range(grid):
        for column in range(grid):
            top = tf.minimum(row * tile_height, height - tile_height)  # only an image under G pixels overlaps
            left = tf.minimum(column * tile_width, width - tile_width)
            crops.append(image[top:top + tile_height, left:left + tile_width])
    resized = [tf.image.resize(crop, [size, size], method=interpolation, antialias=antialias) for crop in crops]
    return tf.clip_by_value(tf.stack(resized), 0.0, 255.0)


def views_dataset(manifest, start, chunk_size, size, grid, batch_size, interpolation="bilinear", antialias=False):
    """Batches of (views, example index) from record `start` on, in file order; no batch straddles two chunks
    of `chunk_size` images, so a chunk's batches are the same whichever run makes them."""
    spec = {key: value for key, value in records.feature_spec(manifest.num_classes).items()
            if key in ("image/encoded", "example/index")}
    count = 1 + grid * grid

    def to_views(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        image = tf.cast(pipeline.decode(example["image/encoded"]), tf.float32)
        views = image_views(image, size, grid, interpolation, antialias)
        return views, tf.fill([count], example["example/index"])

    def chunk_views(serialized):
        views = tf.data.Dataset.from_tensor_slices(serialized).map(
            to_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return views.unbatch().batch(batch_size)

    serialized = tf.data.TFRecordDataset(manifest.shard_paths).skip(start).batch(chunk_size)
    return serialized.flat_map(chunk_views).prefetch(tf.data.AUTOTUNE)


def scores_of(image_embeddings, text_embeddings, grid, tile_temperature):
    """(global_cosine, tile_max, tile_min), float32 [n, C], of the embeddings [n * (1 + grid^2), D] of views_dataset's
    views (unit length) and the prompts' [C, D]."""
    count = 1 + grid * grid
    cosine = (image_embeddings @ text_embeddings.T).reshape(-1, count, len(text_embeddings))
    if not grid:  # no tiles: zeros stand in (AEVLP's rule refuses such scores, training/vl_positives.py)
        zeros = np.zeros(cosine[:, 0].shape, np.float32)
        return cosine[:, 0].astype(np.float32), zeros, zeros
    logits = cosine[:, 1:].astype(np.float64) / tile_temperature
    softmax = np.exp(logits - logits.max(axis=-1, keepdims=True))
    softmax /= softmax.sum(axis=-1, keepdims=True)
    return cosine[:, 0].astype(np.float32), softmax.max(axis=1).astype(np.float32), softmax.min(axis=1).astype(
        np.float32)


def _score_chunks(manifest, partial, model, texts, settings, batch_size, chunk_size, done, stream):
    total, grid = settings["train_examples"], settings["grid"]
    count = 1 + grid * grid
    start = done * chunk_size
    dataset = views_dataset(manifest, start, chunk_size, model.image_size, grid, batch_size, model.interpolation,
                            model.antialias)
    batches = iter(dataset)
    meter = progress.Progress(total - start, f"{settings['dataset']} train, {slug(settings['preset'])}", stream=stream)
    try:
        for chunk in range(done, -(-total // chunk_size)):
            wanted = min(chunk_size, total - chunk * chunk_size) * count
            embeddings, indices, seen = [], [], 0
            while seen < wanted:
                views, index = next(batches)
                embeddings.append(model.embed_images(views))
                indices.append(index.numpy())
                meter.update((seen + len(indices[-1])) // count - seen // count)
                seen += len(indices[-1])
            global_cosine, tile_max, tile_min = scores_of(np.concatenate(embeddings), texts, grid,
                                                          settings["tile_temperature"])
            arrays = {"index": np.concatenate(indices)[::count].astype(np.int64), "global_cosine": global_cosine,
                      "tile_max": tile_max, "tile_min": tile_min}
            _write(files.join(partial, f"chunk-{chunk:05d}.npz"), lambda path: save_arrays(path, arrays))
    except (tf.errors.OpError, StopIteration) as error:
        if isinstance(error, StopIteration):
            raise DataError(f"{manifest.directory} holds fewer records than its manifest's "
                            f"{total:,}. {pipeline.REPAIR_HINT}") from None
        raise pipeline.explain_read_error(manifest, error) from None
    meter.close()


def _finish(out_dir, settings, image_size, chunk_size):
    """The chunks joined in example-index order into scores.npz, then scores.json; partial/ removed."""
    partial = files.join(out_dir, PARTIAL)
    total, num_classes = settings["train_examples"], len(settings["class_names"])
    parts = {name: [] for name in ("index", *ARRAYS)}
    for chunk in range(-(-total // chunk_size)):
        rows = min(chunk_size, total - chunk * chunk_size)
        path = files.join(partial, f"chunk-{chunk:05d}.npz")
        shapes = {"index": (rows,), **{name: (rows, num_classes) for name in ARRAYS}}
        try:
            arrays = load_arrays(path, shapes)
        except ValueError as error:
            raise DataError(f"{path} is damaged ({error}): remove it and run again (its images are scored "
                            "again)") from None
        for name in parts:
            parts[name].append(arrays[name])
    index = np.concatenate(parts["index"]) if parts["index"] else np.zeros(0, np.int64)
    if not np.array_equal(np.sort(index), np.arange(total)):
        raise DataError(f"the records of the train split do not carry each example/index 0..{total - 1} once. "
                        f"{pipeline.REPAIR_HINT}")
    arrays = {}
    for name in ARRAYS:
        arrays[name] = np.empty((total, num_classes), np.float32)
        arrays[name][index] = np.concatenate(parts[name]) if parts[name] else arrays[name][:0]
    _write(files.join(out_dir, SCORES), lambda path: save_arrays(path, arrays))
    _write(files.join(out_dir, META), lambda path: files.write_json(path, {**settings, "image_size": image_size}))
    tf.io.gfile.rmtree(partial)


def _state(out_dir, settings):
    """("done" | "resume", the unfinished run's plan or None, its whole chunks); UsageError for a directory that
    is not ours or holds other settings."""
    if not tf.io.gfile.exists(out_dir):
        return "resume", None, 0
    if not tf.io.gfile.isdir(out_dir):
        raise UsageError(f"--out_dir={out_dir!r} is a file, not a directory")
    entries = {name.rstrip("/") for name in tf.io.gfile.listdir(out_dir)}
    partial = files.join(out_dir, PARTIAL)
    inside = {name.rstrip("/") for name in tf.io.gfile.listdir(partial)} if PARTIAL in entries else set()
    foreign = sorted(entries - _OWN) + sorted(f"{PARTIAL}/{name}" for name in inside
                                              if not _OWN_PARTIAL.fullmatch(name))
    if foreign or (PARTIAL in entries and not tf.io.gfile.isdir(partial)):
        shown = ", ".join(foreign[:5] or [PARTIAL]) + (", ..." if len(foreign) > 5 else "")
        raise UsageError(f"{out_dir} holds files spml-vl-scores did not write ({shown}): pass another --out_dir "
                         "(nothing in it was touched)")
    if META in entries:
        arrays, meta = read(out_dir)
        del arrays
        stored = {key: value for key, value in meta.items() if key != "image_size"}
        if stored != _as_json(settings):
            raise UsageError(f"{out_dir} holds scores made with other settings ({_differences(stored, settings)}): "
                             "pass another --out_dir or remove it")
        if PARTIAL in entries:  # stopped after scores.json was written, before partial/ was removed
            tf.io.gfile.rmtree(partial)
        return "done", None, 0
    if PLAN not in inside:
        return "resume", None, 0
    plan_path = files.join(partial, PLAN)
    try:
        plan = schema.check(files.read_json(plan_path), PLAN_SCHEMA, PLAN)
    except ValueError as error:
        raise DataError(f"{plan_path} is damaged ({error}): remove {out_dir} and run again") from None
    if plan["settings"] != _as_json(settings):
        raise UsageError(f"{out_dir} holds an unfinished run with other settings "
                         f"({_differences(plan['settings'], settings)}): give the same flags to finish it, or pass "
                         "another --out_dir or remove it")
    chunks = {int(match[1]) for match in map(_CHUNK.fullmatch, inside) if match}
    done, last = 0, -(-settings["train_examples"] // plan["chunk_size"])
    while done in chunks and done < last:
        done += 1
    return "resume", plan, done


def _as_json(value):
    return json.loads(json.dumps(value))


def _differences(stored, settings):
    """`grid 5 (now 4), other prompts`: what differs between stored and current settings."""
    settings = _as_json(settings)
    shown = []
    for key in settings:
        if stored.get(key) != settings[key]:
            value = stored.get(key)
            short = isinstance(value, (int, float, str)) and len(str(value)) <= 60 and isinstance(settings[key],
                                                                                                    type(value))
            shown.append(f"{key} {value!r} (now {settings[key]!r})" if short else f"other {key}")
    return ", ".join(shown) or "another format"


def _write(path, save):
    try:
        save(path)
    except (OSError, tf.errors.OpError) as error:
        raise DataError(f"cannot write {path} ({reason(error)})") from None


def save_arrays(path, arrays):
    """The named arrays as one .npz (np.savez's: uncompressed), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)

    def save(temporary):
        with tf.io.gfile.GFile(temporary, "wb") as f:
            f.write(buffer.getvalue())

    files.replace(path, save)


def load_arrays(path, shapes):
    """The arrays of the .npz at `path`, exactly the names of `shapes` (name -> shape) each of its shape; ValueError
    else. Headers are checked against the bytes present before any array is made; nothing is unpickled."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.OpError as error:
        raise ValueError(reason(error)) from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"not a .npz archive ({error})") from None
    if sorted(infos) != sorted(f"{name}.npy" for name in shapes):
        raise ValueError(f"it holds {', '.join(sorted(infos)[:6]) or 'nothing'}, not {', '.join(shapes)}")
    arrays = {}
    for name, shape in shapes.items():
        info = infos[f"{name}.npy"]
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size or info.file_size > len(
                data):
            raise ValueError(f"{name} is compressed or larger than the archive")
        try:
            arrays[name] = files.read_npy(archive.read(info), shape)
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"{name}: {error}") from None
        if arrays[name].dtype.kind not in "fiu":
            raise ValueError(f"{name} holds {arrays[name].dtype}, not numbers")
    return arrays


class Meta(dict):
    """scores.json as a dict, with the `directory` it was read from."""

    directory = ""


def read(path):
    """(arrays, meta) of the scores in a directory (or its scores.json / scores.npz): the three float32 [N, C]
    arrays and scores.json; DataError in one line when they are missing or damaged."""
    directory = os.path.dirname(path) if str(path).endswith((".json", ".npz")) else path
    meta_path, scores_path = files.join(directory, META), files.join(directory, SCORES)
    again = f"make them again: spml-vl-scores --out_dir=<a new directory>, or remove {directory} and run it"
    if not tf.io.gfile.exists(meta_path):
        raise DataError(f"no {META} in {directory}: its scores were never made or their run did not finish (run "
                        "spml-vl-scores again: it continues)")
    try:
        meta = Meta(schema.check(files.read_json(meta_path), META_SCHEMA, META))
        if len(meta["prompts"]) != len(meta["class_names"]):
            raise ValueError(f"{len(meta['prompts'])} prompts for {len(meta['class_names'])} classes")
    except (ValueError, tf.errors.OpError) as error:
        raise DataError(f"{meta_path} is damaged ({reason(error)}); {again}") from None
    meta.directory = directory
    shape = (meta["train_examples"], len(meta["class_names"]))
    try:
        arrays = load_arrays(scores_path, {name: shape for name in ARRAYS})
        arrays = {name: arrays[name].astype(np.float32, copy=False) for name in ARRAYS}
        _check_values(arrays)
    except ValueError as error:
        raise DataError(f"{scores_path} is damaged ({error}); {again}") from None
    return arrays, meta


def _check_values(arrays):
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds values that are not finite")
    if np.abs(arrays["global_cosine"]).max(initial=0.0) > 1.001:
        raise ValueError("global_cosine holds values outside [-1, 1]")
    tiles_low, tiles_high = arrays["tile_min"], arrays["tile_max"]
    if tiles_low.min(initial=0.0) < 0 or tiles_high.max(initial=0.0) > 1.0001 or (tiles_low > tiles_high).any():
        raise ValueError("tile_min and tile_max are not softmax scores with tile_min <= tile_max")


def check_matches(meta, dataset, class_names, train_examples, fingerprint, preset=None, where=None):
    """UsageError unless the scores (`meta` of read) were made for this data, these classes (and this preset)."""
    where = where or getattr(meta, "directory", "") or "the given directory"
    if (meta["dataset"], meta["train_examples"], meta["fingerprint"]) != (dataset, train_examples, fingerprint):
        raise UsageError(f"the scores in {where} were made for other data ({meta['dataset']}, "
                         f"{meta['train_examples']:,} training images, conversion {meta['fingerprint'][:12] or '?'}; "
                         f"here {dataset}, {train_examples:,}, {fingerprint[:12] or '?'}): run spml-vl-scores on "
                         "this data")
    if list(meta["class_names"]) != list(class_names):
        first = next((i for i, (a, b) in enumerate(zip(meta["class_names"], class_names)) if a != b),
                     min(len(meta["class_names"]), len(class_names)))
        raise UsageError(f"the scores in {where} were made for other classes ({len(meta['class_names'])} classes, "
                         f"here {len(class_names)}; they differ from class {first + 1} on): run spml-vl-scores on "
                         "this data")
    if preset is not None and meta["preset"] != preset:
        raise UsageError(f"the scores in {where} were made with another preset ({meta['preset']!r}, here "
                         f"{preset!r}): pass the scores of {preset!r}")
