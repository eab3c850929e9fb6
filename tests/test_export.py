"""SavedModel export for TF Serving, loaded where spml_tf is not importable, and the predict command."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import raw_fixtures
from spml_tf import config as config_lib
from spml_tf import report
from spml_tf.serving import export
from spml_tf.training import trainer as train
from spml_tf.data import datasets, pipeline
from spml_tf.serving import classifier
from spml_tf.core.errors import DataError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tiny_digits_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run"))
    config = config_lib.from_overrides("digits", data_dir=tiny_digits_dir, model_dir=model_dir, loss="em",
                                       epochs=1, batch_size=32)
    train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    return model_dir


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving") / "digits")
    return base, export.export_run(run_dir, base, threshold=0.3)


def _test_images(tiny_digits_dir, count=5):
    """Encoded PNG bytes of the first test images, as stored in the shards."""
    manifest = datasets.load("digits", tiny_digits_dir).test
    from spml_tf.data import records

    dataset = tf.data.TFRecordDataset(manifest.shard_paths).take(count)
    return [records.parse_examples(s, manifest.num_classes)["image/encoded"].numpy() for s in dataset]


def test_versions_follow_tf_serving_layout(run_dir, exported):
    base, version_dir = exported
    assert version_dir == os.path.join(base, "1") and os.path.exists(os.path.join(version_dir, "saved_model.pb"))
    assert export.export_run(run_dir, base) == os.path.join(base, "2")


def test_loads_and_matches_keras_without_our_package(tiny_digits_dir, run_dir, exported, tmp_path):
    """A process that cannot import spml_tf serves the same probabilities as the Keras model (1e-5)."""
    import keras

    images = _test_images(tiny_digits_dir)
    np.save(tmp_path / "images.npy", np.array(images, dtype=object), allow_pickle=True)
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        import tensorflow as tf
        assert importlib.util.find_spec("spml_tf") is None, "spml_tf must not be importable here"
        loaded = tf.saved_model.load({exported[1]!r})
        images = list(np.load({str(tmp_path / "images.npy")!r}, allow_pickle=True))
        out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        np.save({str(tmp_path / "probabilities.npy")!r}, out["probabilities"].numpy())
        np.save({str(tmp_path / "labels.npy")!r}, out["labels"].numpy().astype(str))
        meta = loaded.signatures["metadata"]()
        print([n.decode() for n in meta["class_names"].numpy()], float(meta["threshold"]))
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] 0.30" in result.stdout

    served = np.load(tmp_path / "probabilities.npy")
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"), safe_mode=True)
    decoded = np.stack([pipeline.decode_and_resize(encoded, 24).numpy() for encoded in images])
    expected = 1.0 / (1.0 + np.exp(-np.asarray(model(decoded), dtype=np.float64)))
    np.testing.assert_allclose(served, expected, atol=1e-5)

    labels = np.load(tmp_path / "labels.npy")
    for row, probabilities in zip(labels, served):
        order = np.argsort(-probabilities, kind="stable")
        wanted = [str(c) for c in order if probabilities[c] >= 0.3]
        assert list(row[: len(wanted)]) == wanted and all(name == "" for name in row[len(wanted):])


def test_serve_images_signature_equals_serving_default(tiny_digits_dir, exported):
    loaded = tf.saved_model.load(exported[1])
    images = _test_images(tiny_digits_dir, 3)
    from_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["probabilities"]
    decoded = tf.stack([pipeline.decode_and_resize(encoded, 24) for encoded in images])
    from_images = loaded.signatures["serve_images"](images=decoded)["probabilities"]
    np.testing.assert_allclose(from_bytes.numpy(), from_images.numpy(), atol=1e-6)


def test_any_image_size_and_jpeg(exported):
    loaded = tf.saved_model.load(exported[1])
    image = np.random.RandomState(0).randint(0, 256, size=(75, 50, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(image).numpy()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([jpeg, jpeg]))
    assert out["probabilities"].shape == (2, 10) and out["labels"].shape == (2, 10)


def test_malformed_image_is_an_invalid_argument_error(tiny_digits_dir, exported):
    loaded = tf.saved_model.load(exported[1])
    good = _test_images(tiny_digits_dir, 1)[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)image"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([good, b"this is not a jpeg"]))
    # The model still serves the next request.
    assert loaded.signatures["serving_default"](image_bytes=tf.constant([good]))["probabilities"].shape == (1, 10)


def test_saved_model_cli_lists_both_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", exported[1], "--all"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    for signature in ("serving_default", "serve_images", "metadata"):
        assert f"signature_def['{signature}']" in text
    default = text.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert re.search(r"inputs\['image_bytes'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)", default)
    assert re.search(r"outputs\['probabilities'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)", default)
    assert re.search(r"outputs\['labels'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1, 10\)", default)
    images = text.split("signature_def['serve_images']")[1].split("signature_def[")[0]
    assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 24, 24, 3\)", images)


def test_readme_rest_request_matches_the_signature(tiny_digits_dir, exported):
    """The README's :predict body names the signature's one input (or uses the single-input b64 form)."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    bodies = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.S) if "instances" in block]
    assert bodies, "README shows no REST request body"
    signature = tf.saved_model.load(exported[1]).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["image_bytes"] and inputs["image_bytes"].dtype == tf.string
    for body in bodies:
        for instance in body["instances"]:
            encoded = instance["b64"] if "b64" in instance else instance["image_bytes"]["b64"]
            if "b64" not in instance:
                assert set(instance) == set(inputs)
            # What TF Serving would hand the signature: the base64-decoded bytes.
            payload = base64.b64decode(encoded) if encoded != "<base64 JPEG>" else _test_images(tiny_digits_dir, 1)[0]
            assert signature(image_bytes=tf.constant([payload]))["probabilities"].shape == (1, 10)


def test_predict_command(tiny_digits_dir, exported, tmp_path):
    images = _test_images(tiny_digits_dir, 2)
    paths = []
    for i, encoded in enumerate(images):
        paths.append(str(tmp_path / f"image{i}.png"))
        open(paths[-1], "wb").write(encoded)
    broken = str(tmp_path / "broken.jpg")
    open(broken, "wb").write(b"not an image")
    command = [sys.executable, "-m", "spml_tf.predict", f"--saved_model={exported[0]}", "--top_k=3"]
    result = subprocess.run(command + paths, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 2
    probabilities = [float(p) for p in re.findall(r" (\d\.\d{3})", lines[0])]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)

    result = subprocess.run(command + [paths[0], broken], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "broken.jpg is not a decodable" in result.stderr
    assert "Traceback" not in result.stderr and paths[0] in result.stdout


def test_predict_reports_each_bad_input_and_predicts_the_rest(tiny_digits_dir, exported, tmp_path):
    """a.png DIR missing.png huge.png b.png: both images predicted, one line per bad input, exit 1 at the end."""
    good = []
    for i, encoded in enumerate(_test_images(tiny_digits_dir, 2)):
        good.append(str(tmp_path / f"{'ab'[i]}.png"))
        open(good[-1], "wb").write(encoded)
    folder, missing, huge = str(tmp_path / "folder"), str(tmp_path / "missing.png"), str(tmp_path / "huge.png")
    os.mkdir(folder)
    open(huge, "wb").write(raw_fixtures.png_header_only(23000, 23000))
    result = subprocess.run([sys.executable, "-m", "spml_tf.predict", f"--saved_model={exported[0]}",
                             good[0], folder, missing, huge, good[1]],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith(str(tmp_path))] == good
    errors = [line for line in result.stderr.splitlines() if line.startswith("predict:")]
    assert errors == [f"predict: error: {folder} is a directory, not an image file",
                      f"predict: error: {missing} does not exist",
                      f"predict: error: {huge} declares 23000 x 23000 pixels (529 megapixels), above the limit of "
                      "100 megapixels (--max_image_pixels)",
                      "predict: 3 of 5 input(s) failed"]


def test_the_saved_model_refuses_an_image_above_its_pixel_limit(tiny_digits_dir, run_dir, tmp_path):
    version = export.export_run(run_dir, str(tmp_path / "serving"), max_pixels=1000)
    loaded = tf.saved_model.load(version)
    assert int(loaded.signatures["metadata"]()["max_image_pixels"]) == 1000
    small = _test_images(tiny_digits_dir, 1)[0]  # 24 x 24 = 576 pixels
    assert loaded.signatures["serving_default"](image_bytes=tf.constant([small]))["probabilities"].shape == (1, 10)
    large = tf.io.encode_png(np.zeros((40, 30, 3), np.uint8)).numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image declares\] \[30\] \[x\] \[40\] \[pixels, above "
                                                             r"the limit of 1,000\]"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([small, large]))
    bomb = raw_fixtures.png_header_only(23000, 23000)  # refused from its header: never decoded
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([bomb]))
    assert loaded.signatures["serving_default"](image_bytes=tf.constant([small]))["probabilities"].shape == (1, 10)


def test_model_keras_loads_with_plain_keras_as_the_readme_says(tiny_digits_dir, run_dir, tmp_path):
    """The README's sentence, run where spml_tf cannot be imported."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "`keras.saving.load_model(\"model.keras\", safe_mode=True)`" in readme
    image = _test_images(tiny_digits_dir, 1)[0]
    open(tmp_path / "image.png", "wb").write(image)
    shutil.copy(os.path.join(run_dir, "model.keras"), tmp_path / "model.keras")
    script = textwrap.dedent("""
        import importlib.util
        import keras, numpy as np, tensorflow as tf
        assert importlib.util.find_spec("spml_tf") is None, "spml_tf must not be importable here"
        model = keras.saving.load_model("model.keras", safe_mode=True)
        image = tf.io.decode_png(open("image.png", "rb").read(), channels=3)
        print(np.asarray(model(tf.cast(image, tf.float32)[None])).tolist())
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import keras

    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"), safe_mode=True)
    expected = np.asarray(model(pipeline.decode_and_resize(image, 24)[None]))
    np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]), expected, atol=1e-5)


def test_export_command_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spml_tf.export", f"--model_dir={tmp_path}",
                             f"--export_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 2 and "finished training run" in result.stderr and "Traceback" not in result.stderr


def test_a_finished_run_predicts_from_python_as_the_exported_model_does(tiny_digits_dir, run_dir, exported, tmp_path):
    """Classifier.from_run (the library's way) gives the SavedModel's probabilities and labels for the same files."""
    paths = []
    for i, encoded in enumerate(_test_images(tiny_digits_dir, 3)):
        paths.append(str(tmp_path / f"image{i}.png"))
        open(paths[-1], "wb").write(encoded)
    model = classifier.Classifier.from_run(run_dir, threshold=0.3)
    probabilities = model.predict_files(paths)
    served = tf.saved_model.load(exported[1]).signatures["serving_default"](
        image_bytes=tf.constant([open(path, "rb").read() for path in paths]))
    np.testing.assert_allclose(probabilities, served["probabilities"].numpy(), atol=1e-5)
    expected = [[name.decode() for name in row if name] for row in served["labels"].numpy()]
    assert model.labels(probabilities) == expected
    assert model.class_names == json.load(open(os.path.join(run_dir, "results.json")))["class_names"]

    broken = str(tmp_path / "broken.png")
    open(broken, "wb").write(b"not an image")
    with pytest.raises(DataError, match="broken.png is not a decodable"):
        model.predict_files([paths[0], broken])


def test_report_charts_a_finished_run(run_dir, tmp_path):
    written = report.render(run_dir, str(tmp_path))
    # An `em` run: no APL rounds, so no APL chart.
    assert sorted(os.path.basename(path) for path in written) == sorted([report.TRAINING, report.PER_CLASS])
    assert all(open(path, "rb").read(4) == b"\x89PNG" for path in written)


def _tiny_model():
    """A model of the shape export wants (images -> one logit per class), built in no time."""
    import keras

    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))


def test_an_export_under_a_file_is_one_usage_error_naming_the_directory(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    base = str(tmp_path / "a_file" / "serving")
    with pytest.raises(UsageError, match=rf"^--export_dir={re.escape(base)}: cannot write the SavedModel there "
                                         r"\(.*a_file is not a directory\)$"):
        export.export_saved_model(_tiny_model(), ["a", "b"], 8, base)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_an_export_into_a_read_only_directory_is_one_usage_error_naming_it(tmp_path):
    base = tmp_path / "serving"
    base.mkdir(mode=0o500)
    try:
        with pytest.raises(UsageError, match=rf"^--export_dir={re.escape(str(base))}: cannot write the SavedModel "
                                             r"there \(.*Permission denied\)$"):
            export.export_saved_model(_tiny_model(), ["a", "b"], 8, str(base))
    finally:
        base.chmod(0o700)


def test_the_export_command_says_in_one_line_that_it_cannot_write(tmp_path):
    _tiny_model().save(str(tmp_path / "model.keras"))
    results = {"config": {"image_size": 8, "threshold": 0.75, "loss": "em", "val_set_variant": "clean"},
               "class_names": ["a", "b"], "history": [{"epoch": 1, "val_map": 50.0}], "best_epoch": 1,
               "val": {"map": 50.0}, "test": None, "per_class_ap": {"val": {"a": 50.0, "b": 50.0}, "test": None}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "a_file").write_text("not a directory")
    result = subprocess.run([sys.executable, "-m", "spml_tf.export", f"--model_dir={tmp_path}",
                             f"--export_dir={tmp_path / 'a_file' / 'serving'}"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("export: error:")]
    assert len(lines) == 1 and "cannot write the SavedModel there" in lines[0] and "a_file" in lines[0], lines


@pytest.mark.parametrize("edit, detail", [
    (lambda r: r["config"].pop("threshold"), "results.config: no 'threshold'"),
    (lambda r: r["config"].update(image_size="big"), "results.config.image_size: 'big' is not a whole number"),
    (lambda r: r.update(class_names=[f"c{k}" for k in range(50)]),
     "are of different runs (the model takes 24 px images to 10 classes, the results name 50 classes at 24 px)"),
])
def test_classifier_from_run_refuses_results_that_do_not_fit_in_one_line(run_dir, tmp_path, edit, detail):
    """Issue 21: KeyError, ValueError, and 50 class names for 10 outputs loaded in silence."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    results = json.load(open(copy / "results.json"))
    edit(results)
    json.dump(results, open(copy / "results.json", "w"))
    with pytest.raises(DataError) as error:
        classifier.Classifier.from_run(str(copy))
    assert detail in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_an_export_appears_whole_and_a_killed_ones_leftover_is_replaced(run_dir, tmp_path):
    """The SavedModel is written under `.partial-<version>`, which TF Serving ignores, then renamed."""
    base = tmp_path / "serving"
    (base / ".partial-1").mkdir(parents=True)
    (base / ".partial-1" / "half_written").write_text("")  # an export killed mid-write
    version_dir = export.export_run(run_dir, str(base))
    assert version_dir == str(base / "1") and os.listdir(base) == ["1"]
    assert os.path.isfile(base / "1" / "saved_model.pb")
