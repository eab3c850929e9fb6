"""spml-vl-scores: a frozen CLIP's scores of the training images (whole and in tiles), stored per example index,
resumable, refusing what is not its own; read() and check_matches() for the trainer. A tiny random CLIP saved as a
KerasHub preset (tests/clip_fixtures.py) stands in for a real one and loads through the same from_preset."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("keras_hub")  # a safety net: CI installs requirements-clip.txt

import tensorflow as tf  # noqa: E402

import clip_fixtures  # noqa: E402
from spml_tf.core.errors import DataError, UsageError  # noqa: E402
from spml_tf.data import pipeline, records  # noqa: E402
from spml_tf.nets import clip  # noqa: E402
from spml_tf.training import vl_scores  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "person", "pottedplant_x")
# (height, width) of the shuffled split's images: tiles with remainders, an image under the grid's size, a square.
SIZES = [(13, 21), (24, 24), (9, 30), (40, 17), (3, 11), (16, 16), (21, 13), (30, 9), (17, 40)]
COMMAND_FLAGS = ["--chunk_size=8", "--batch_size=24"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return clip_fixtures.save_tiny_clip(str(tmp_path_factory.mktemp("presets") / "tiny_clip"))


@pytest.fixture(scope="session")
def model(tiny_clip_dir):
    return clip.load(tiny_clip_dir)


@pytest.fixture(scope="session")
def shuffled_split(tmp_path_factory):
    """A train split of PNGs of several sizes in two shards whose example indices are not in file order:
    (manifest, {example index: uint8 image})."""
    directory = str(tmp_path_factory.mktemp("shuffled") / "train")
    os.makedirs(directory)
    rng = np.random.RandomState(3)
    order = rng.permutation(len(SIZES))  # the example index of the i-th record
    images, shards = {}, []
    for k, part in enumerate(np.array_split(np.arange(len(SIZES)), 2)):
        path = os.path.join(directory, records.shard_name("train", k, 2))
        with tf.io.TFRecordWriter(path) as writer:
            for position in part:
                image = rng.randint(0, 256, size=(*SIZES[position], 3)).astype(np.uint8)
                index = int(order[position])
                images[index] = image
                label = np.eye(len(CLASSES))[index % len(CLASSES)]
                writer.write(records.serialize_example(tf.io.encode_png(image).numpy(), f"image{index}", label,
                                                       label, index))
        shards.append(records.Shard(os.path.basename(path), len(part), os.path.getsize(path), records.sha256(path)))
    manifest = records.Manifest(dataset="toy", split="train", num_examples=len(SIZES), num_classes=len(CLASSES),
                                class_names=CLASSES, shards=tuple(shards), fingerprint="f1ngerprint",
                                directory=directory)
    manifest.write()
    assert list(order) != sorted(order)
    return records.read_manifest(directory), images


def _settings(manifest, preset, grid=4, temperature=0.01, template=vl_scores.DEFAULT_TEMPLATE):
    prompts = vl_scores.prompts_for(manifest.class_names, template)
    return vl_scores.settings_of(manifest, "custom", preset, template, prompts, grid, temperature)


@pytest.fixture(scope="session")
def shuffled_scores(tmp_path_factory, shuffled_split, tiny_clip_dir):
    manifest, _ = shuffled_split
    out_dir = str(tmp_path_factory.mktemp("scores") / "out")
    vl_scores.score(manifest, out_dir, _settings(manifest, tiny_clip_dir), batch_size=7, chunk_size=4,
                    log=lambda line: None, stream=io.StringIO())
    return out_dir


def _resized(model, image):
    resized = tf.image.resize(tf.cast(image, tf.float32), [model.image_size] * 2, method=model.interpolation,
                              antialias=model.antialias)
    return np.clip(resized.numpy(), 0, 255)


def test_prompts_underscores_and_wordings(tmp_path):
    assert vl_scores.prompts_for(["potted_plant", "tv"]) == ["a photo of a potted plant.", "a photo of a tv."]
    assert vl_scores.prompts_for(["a_b"], "{name}!", ["my_words"]) == ["my_words!"]
    (tmp_path / "words.txt").write_text("first one\n\nsecond\n")
    assert vl_scores.read_wordings(str(tmp_path / "words.txt")) == ["first one", "second"]
    assert vl_scores.read_wordings("x, y ,z") == ["x", "y", "z"]
    with pytest.raises(UsageError, match="has no {name}"):
        vl_scores.prompts_for(["a"], "a photo")
    with pytest.raises(UsageError, match="gives 1 wordings for the 2 classes"):
        vl_scores.prompts_for(["a", "b"], wordings=["x"])
    assert vl_scores.slug("kaggle://keras/clip/keras/clip_vit_base_patch16/3") == \
        "kaggle-keras-clip-keras-clip_vit_base_patch16-3"
    assert vl_scores.slug("/some/where/my_preset/") == "my_preset"
    assert vl_scores.default_out_dir("voc", "/d/voc", "clip_b16") == "/d/voc/vl_scores/clip_b16"
    assert vl_scores.default_out_dir("digits", "/d/digits", "clip_b16") == "/d/digits/vl_scores/clip_b16"
    assert (vl_scores.default_grid("cub"), vl_scores.default_tile_temperature("cub")) == (5, 0.1)


def test_model_embeddings_are_unit_length_and_the_presets_own(model, tiny_clip_dir):
    import keras_hub

    images = np.random.RandomState(0).randint(0, 256, size=(3, model.image_size, model.image_size, 3))
    embeddings, texts = model.embed_images(images.astype(np.uint8)), model.embed_texts(["a photo of a cat.", "x"])
    assert embeddings.shape == (3, 8) and texts.shape == (2, 8) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    # The same as KerasHub's own preprocessor and backbone, loaded apart.
    preprocessor = keras_hub.models.CLIPPreprocessor.from_preset(tiny_clip_dir)
    backbone = keras_hub.models.CLIPBackbone.from_preset(tiny_clip_dir)
    inputs = preprocessor({"images": images.astype(np.float32), "prompts": ["a photo of a cat.", "x"]})
    direct = backbone.get_vision_embeddings(inputs["images"]).numpy()
    np.testing.assert_allclose(embeddings, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-5)
    direct = backbone.get_text_embeddings(inputs["token_ids"]).numpy()
    np.testing.assert_allclose(texts, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-5)
    assert (model.family, model.image_size) == ("clip", clip_fixtures.IMAGE_SIZE)


def test_global_cosine_is_the_whole_image_against_each_prompt(shuffled_split, shuffled_scores, model):
    _, images = shuffled_split
    arrays, meta = vl_scores.read(shuffled_scores)
    texts = model.embed_texts(meta["prompts"])
    for index in (0, 4, len(SIZES) - 1):
        image = model.embed_images(_resized(model, images[index])[None])
        np.testing.assert_allclose(arrays["global_cosine"][index], (image @ texts.T)[0], atol=2e-5)


def test_grid_0_scores_the_whole_image_only(shuffled_split, shuffled_scores, tiny_clip_dir, tmp_path):
    """VLPL's rule reads the global cosine only: --grid=0 gives the same one with no tiles (zeros), which AEVLP's
    rule refuses."""
    import dataclasses

    from spml_tf import config as config_lib
    from spml_tf.core.errors import UsageError
    from spml_tf.training import vl_positives

    manifest, _ = shuffled_split
    out_dir = str(tmp_path / "global")
    vl_scores.score(manifest, out_dir, _settings(manifest, tiny_clip_dir, grid=0), batch_size=7, chunk_size=4,
                    log=lambda line: None, stream=io.StringIO())
    arrays, meta = vl_scores.read(out_dir)
    tiled, _ = vl_scores.read(shuffled_scores)
    np.testing.assert_allclose(arrays["global_cosine"], tiled["global_cosine"], atol=1e-6)
    assert meta["grid"] == 0 and not arrays["tile_max"].any() and not arrays["tile_min"].any()
    config = dataclasses.replace(config_lib.PRESETS["voc"], loss="aevlp")
    observed = np.zeros_like(arrays["global_cosine"])
    with pytest.raises(UsageError, match=r"AEVLP's rule reads the tiles .* \(--grid=0\): score again with --grid=4"):
        vl_positives.positives_from_scores(config, "aevlp", arrays, meta, observed)
    assert vl_positives.positives_from_scores(config, "vlpl", arrays, meta, observed).shape == observed.shape


@pytest.mark.parametrize("index_of_size", [(13, 21), (3, 11)])
def test_tile_max_and_min_follow_the_rule(shuffled_split, shuffled_scores, model, index_of_size):
    """G x G tiles of floor(H/G) x floor(W/G) from the top-left (an image under G pixels: 1-pixel tiles, the last
    ones at its edge), each resized; softmax over classes of cosine / T; max and min over tiles."""
    _, images = shuffled_split
    index = next(i for i, image in images.items() if image.shape[:2] == index_of_size)
    arrays, meta = vl_scores.read(shuffled_scores)
    image, grid, temperature = images[index], meta["grid"], meta["tile_temperature"]
    height, width = image.shape[:2]
    tile_h, tile_w = max(height // grid, 1), max(width // grid, 1)
    tiles = [image[min(r * tile_h, height - tile_h):][:tile_h, min(c * tile_w, width - tile_w):][:, :tile_w]
             for r in range(grid) for c in range(grid)]
    assert all(tile.shape == (tile_h, tile_w, 3) for tile in tiles)
    embeddings = model.embed_images(np.stack([_resized(model, tile) for tile in tiles]))
    logits = (embeddings @ model.embed_texts(meta["prompts"]).T).astype(np.float64) / temperature
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(arrays["tile_max"][index], softmax.max(axis=0), atol=1e-4)
    np.testing.assert_allclose(arrays["tile_min"][index], softmax.min(axis=0), atol=1e-4)


def test_meta_and_same_settings_again_is_nothing_to_do(shuffled_split, shuffled_scores, tiny_clip_dir):
    manifest, _ = shuffled_split
    arrays, meta = vl_scores.read(os.path.join(shuffled_scores, vl_scores.META))
    assert sorted(os.listdir(shuffled_scores)) == ["scores.json", "scores.npz"]
    assert dict(meta) == {**_settings(manifest, tiny_clip_dir), "image_size": clip_fixtures.IMAGE_SIZE}
    assert meta["prompts"][3] == "a photo of a pottedplant x." and meta["fingerprint"] == "f1ngerprint"
    assert {name: (a.shape, a.dtype) for name, a in arrays.items()} == {
        name: ((len(SIZES), len(CLASSES)), np.float32) for name in vl_scores.ARRAYS}
    lines = []
    assert vl_scores.score(manifest, shuffled_scores, _settings(manifest, tiny_clip_dir), log=lines.append) is False
    assert lines == [f"{shuffled_scores} already holds these scores (9 images, preset {tiny_clip_dir}): nothing to do"]
    with pytest.raises(UsageError, match=r"holds scores made with other settings \(template 'a photo of a \{name\}.' "
                                         r"\(now '\{name\}'\), other prompts, grid 4 \(now 3\)\): pass another "
                                         r"--out_dir or remove it"):
        vl_scores.score(manifest, shuffled_scores, _settings(manifest, tiny_clip_dir, grid=3, template="{name}"))


def test_a_directory_of_other_files_is_refused_untouched(tmp_path, shuffled_split, tiny_clip_dir):
    manifest, _ = shuffled_split
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds files spml-vl-scores did not write \(notes.txt\)"):
        vl_scores.score(manifest, str(tmp_path), _settings(manifest, tiny_clip_dir))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_read_and_check_matches_refuse_other_data_classes_preset(shuffled_scores, tmp_path, tiny_clip_dir):
    arrays, meta = vl_scores.read(shuffled_scores)
    vl_scores.check_matches(meta, "custom", CLASSES, len(SIZES), "f1ngerprint", preset=tiny_clip_dir)
    for args, words in (((meta, "voc", CLASSES, len(SIZES), "f1ngerprint"), "other data"),
                        ((meta, "custom", CLASSES, 10, "f1ngerprint"), "other data"),
                        ((meta, "custom", CLASSES, len(SIZES), "another"), "other data"),
                        ((meta, "custom", CLASSES[:3], len(SIZES), "f1ngerprint"), "other classes"),
                        ((meta, "custom", ("a", *CLASSES[1:]), len(SIZES), "f1ngerprint"), "other classes")):
        with pytest.raises(UsageError, match=f"the scores in {shuffled_scores} were made for {words}"):
            vl_scores.check_matches(*args)
    with pytest.raises(UsageError, match="were made with another preset"):
        vl_scores.check_matches(meta, "custom", CLASSES, len(SIZES), "f1ngerprint", preset="clip_vit_base_patch16")
    # Damage: each a DataError of one line.
    copy = tmp_path / "copy"
    copy.mkdir()
    data = open(os.path.join(shuffled_scores, vl_scores.SCORES), "rb").read()
    (copy / vl_scores.META).write_text(json.dumps(dict(meta)))
    for damaged, words in ((data[: len(data) // 2], "not a .npz archive"), (b"", "not a .npz archive")):
        (copy / vl_scores.SCORES).write_bytes(damaged)
        with pytest.raises(DataError, match=words):
            vl_scores.read(str(copy))
    (copy / vl_scores.SCORES).write_bytes(data)
    (copy / vl_scores.META).write_text(json.dumps({**meta, "train_examples": 10}))
    with pytest.raises(DataError, match=r"global_cosine: it holds an array of shape \(9, 4\), not \(10, 4\)"):
        vl_scores.read(str(copy))
    (copy / vl_scores.META).write_text(json.dumps({**meta, "grid": "4"}))
    with pytest.raises(DataError, match="scores.json.grid: '4' is not a whole number"):
        vl_scores.read(str(copy))
    bad = dict(arrays, tile_min=arrays["tile_max"] + 0.5)
    vl_scores.save_arrays(str(copy / vl_scores.SCORES), bad)
    (copy / vl_scores.META).write_text(json.dumps(dict(meta)))
    with pytest.raises(DataError, match="not softmax scores"):
        vl_scores.read(str(copy))
    with pytest.raises(DataError, match="its scores were never made"):
        vl_scores.read(str(tmp_path / "nowhere"))
    for error in DataError, UsageError:
        assert "\n" not in str(error("x"))


def test_siglip_loads_with_its_own_tokenizer_and_converter(tmp_path, shuffled_split):
    """A SigLIP preset: its SentencePiece tokenizer, its converter's interpolation and antialias; scores as CLIP's."""
    model = clip.load(clip_fixtures.save_tiny_siglip(str(tmp_path / "siglip")))
    assert (model.family, model.image_size, model.interpolation, model.antialias) == ("siglip", 16, "bicubic", True)
    texts = model.embed_texts(["a photo of a cat.", "a photo of a dog.", "zebra"])
    images = model.embed_images(np.zeros((2, 16, 16, 3), np.uint8))
    assert texts.shape == (3, 16) and images.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    manifest, _ = shuffled_split
    out_dir = str(tmp_path / "out")
    vl_scores.score(manifest, out_dir, _settings(manifest, str(tmp_path / "siglip"), grid=2), log=lambda line: None,
                    stream=io.StringIO())
    arrays, meta = vl_scores.read(out_dir)
    assert meta["grid"] == 2 and arrays["tile_max"].shape == (len(SIZES), len(CLASSES))


def test_a_preset_that_does_not_load_is_one_line(tmp_path):
    path = clip_fixtures.save_vision_encoder_only(str(tmp_path / "vision_only"))
    with pytest.raises(UsageError, match=f"^the preset '{path}' holds a CLIPVisionEncoder, not a CLIP or SigLIP "
                                         "model$"):
        clip.load(path)
    with pytest.raises(UsageError, match="^cannot load the preset '/no/such/preset': no such directory"):
        clip.load("/no/such/preset")
    with pytest.raises(UsageError, match="did you mean 'clip_vit_base_patch16'"):
        clip.load("clip_vit_base_patch61")


# --- The command ---------------------------------------------------------------------------------------------------


def _command(*args, code=None, timeout=300):
    program = [sys.executable, "-m", "spml_tf.vl_scores"] if code is None else [sys.executable, "-c", code]
    return subprocess.run([*program, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": ROOT})


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def digits_scores(tiny_digits_dir, tiny_clip_dir, tmp_path_factory):
    """The command run uninterrupted on the tiny digits build: (out_dir, stdout, stderr)."""
    out_dir = str(tmp_path_factory.mktemp("digits_scores") / "out")
    result = _command("--dataset=digits", f"--data_dir={tiny_digits_dir}", f"--preset={tiny_clip_dir}",
                      f"--out_dir={out_dir}", *COMMAND_FLAGS)
    assert result.returncode == 0, result.stderr
    return out_dir, result.stdout, result.stderr


@pytest.mark.slow
def test_the_command_scores_the_train_split(digits_scores, tiny_digits_dir, tiny_clip_dir):
    out_dir, stdout, stderr = digits_scores
    manifest = records.read_manifest(os.path.join(tiny_digits_dir, "train"))
    arrays, meta = vl_scores.read(out_dir)
    assert sorted(os.listdir(out_dir)) == ["scores.json", "scores.npz"]
    assert meta["prompts"] == [f"a photo of a {digit}." for digit in range(10)]
    assert (meta["dataset"], meta["train_examples"], meta["fingerprint"], meta["grid"], meta["tile_temperature"],
            meta["image_size"], meta["preset"]) == ("digits", 160, manifest.fingerprint, 4, 0.01, 16, tiny_clip_dir)
    assert all(array.shape == (160, 10) for array in arrays.values())
    vl_scores.check_matches(meta, "digits", manifest.class_names, manifest.num_examples, manifest.fingerprint)
    assert stdout.splitlines() == [f"wrote the scores of 160 images and 10 classes to {out_dir}/scores.npz"]
    assert "images/s" in stderr and "Traceback" not in stderr
    again = _command("--dataset=digits", f"--data_dir={tiny_digits_dir}", f"--preset={tiny_clip_dir}",
                     f"--out_dir={out_dir}", *COMMAND_FLAGS)
    assert again.returncode == 0 and again.stdout.endswith("nothing to do\n") and not _error_lines(again.stderr)
    other = _command("--dataset=digits", f"--data_dir={tiny_digits_dir}", f"--preset={tiny_clip_dir}",
                     f"--out_dir={out_dir}", "--tile_temperature=0.5")
    assert other.returncode == 2 and _error_lines(other.stderr) == [
        f"vl_scores: error: {out_dir} holds scores made with other settings (tile_temperature 0.01 (now 0.5)): "
        "pass another --out_dir or remove it"]


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(digits_scores, tiny_digits_dir, tiny_clip_dir, tmp_path):
    reference, _, _ = digits_scores
    out_dir = str(tmp_path / "out")
    args = ["--dataset=digits", f"--data_dir={tiny_digits_dir}", f"--preset={tiny_clip_dir}", f"--out_dir={out_dir}",
            *COMMAND_FLAGS]
    process = subprocess.Popen([sys.executable, "-m", "spml_tf.vl_scores", *args], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
    first_chunk = os.path.join(out_dir, "partial", "chunk-00000.npz")
    deadline = time.monotonic() + 240
    while not os.path.exists(first_chunk) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert _error_lines(stderr)[-1] == ("vl_scores: stopped by SIGTERM; what was saved stays: run the same command "
                                        "to continue")
    left = sorted(os.listdir(os.path.join(out_dir, "partial")))
    assert "plan.json" in left and "chunk-00000.npz" in left and len(left) < 21 and not os.path.exists(
        os.path.join(out_dir, "scores.json"))
    # Other settings are refused with the unfinished run left as it was.
    manifest = records.read_manifest(os.path.join(tiny_digits_dir, "train"))
    prompts = vl_scores.prompts_for(manifest.class_names)
    other = vl_scores.settings_of(manifest, "digits", tiny_clip_dir, vl_scores.DEFAULT_TEMPLATE, prompts, 5, 0.01)
    with pytest.raises(UsageError, match=r"holds an unfinished run with other settings \(grid 4 \(now 5\)\)"):
        vl_scores.score(manifest, out_dir, other)
    assert sorted(os.listdir(os.path.join(out_dir, "partial"))) == left
    resumed = _command(*args, "--batch_size=5")  # the run keeps the batch size it started with
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"continuing the unfinished scores in {out_dir}: ")
    assert sorted(os.listdir(out_dir)) == ["scores.json", "scores.npz"]
    (expected, expected_meta), (got, got_meta) = vl_scores.read(reference), vl_scores.read(out_dir)
    assert dict(got_meta) == dict(expected_meta)
    for name in vl_scores.ARRAYS:
        assert np.array_equal(got[name], expected[name]), name


def test_a_preset_directory_that_does_not_exist_is_one_line(tiny_digits_dir, tmp_path):
    result = _command("--dataset=digits", f"--data_dir={tiny_digits_dir}", f"--preset={tmp_path}/missing",
                      f"--out_dir={tmp_path}/out")
    assert result.returncode == 2 and _error_lines(result.stderr) == [
        f"vl_scores: error: cannot load the preset '{tmp_path}/missing': no such directory, and not a name KerasHub "
        "knows (clip_vit_base_patch16, siglip_base_patch16_224, ...)"]
    assert not os.path.exists(tmp_path / "out")


def test_without_keras_hub_one_line_says_how_to_install_it(tiny_digits_dir, tiny_clip_dir, tmp_path):
    code = ("import sys; sys.modules['keras_hub'] = None; sys.argv[0] = 'vl_scores'; "
            "from spml_tf import vl_scores; vl_scores.main()")
    result = _command("--dataset=digits", f"--data_dir={tiny_digits_dir}", f"--preset={tiny_clip_dir}",
                      f"--out_dir={tmp_path}/out", code=code)
    assert result.returncode == 2 and _error_lines(result.stderr) == [f"vl_scores: error: {clip.INSTALL_HINT}"]


def test_rows_are_example_indices_not_file_order(shuffled_split, shuffled_scores, model):
    """The split's records are not in index order: each row still holds its own image's scores."""
    manifest, images = shuffled_split
    order = pipeline.read_labels(manifest).order
    assert not np.array_equal(order, np.arange(len(order)))
    arrays, meta = vl_scores.read(shuffled_scores)
    texts = model.embed_texts(meta["prompts"])
    whole = model.embed_images(np.stack([_resized(model, images[i]) for i in range(len(SIZES))]))
    np.testing.assert_allclose(arrays["global_cosine"], whole @ texts.T, atol=2e-5)
