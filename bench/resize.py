"""How close our decode + resize is to the original code's (PIL's `Image.open(...).convert("RGB")` then
torchvision's `Resize((448, 448))`, which is PIL's bilinear resize, filtering when it shrinks).

    python bench/resize.py [--images=60] [--size=448] [--output=bench/results/resize.json]

On photo-like JPEGs (smooth colour fields plus grain, quality 90) of VOC's
usual sizes (500 on the long side, portrait and landscape, and squares),
compares PIL's uint8 result with TensorFlow's for each variant: the JPEG
decode (TensorFlow's default DCT, or libjpeg's accurate integer DCT, which
PIL uses), `tf.image.resize` bilinear with and without `antialias`, and the
result rounded to integers (as PIL's is) or not. Prints the largest and mean
absolute difference in [0, 255] units; pipeline.decode_and_resize uses the
closest.
"""

import io
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

flags.DEFINE_integer("images", 60, "Photo-like JPEGs to compare on.")
flags.DEFINE_integer("size", 448, "Side of the resized square (the paper's 448).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "resize.json"),
                    "Where the JSON results go.")

VOC_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (500, 500), (281, 500))  # (height, width)


def photo(height, width, rng):
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.rand(3) * 6.28
    base = 127 + 100 * np.sin(x[..., None] / (20 + 30 * rng.rand()) + y[..., None] / 40.0 + phase)
    return np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)


def main(argv):
    del argv
    import tensorflow as tf
    from PIL import Image

    from spml_tf.data import pipeline

    FLAGS = flags.FLAGS
    rng = np.random.RandomState(0)
    differences = {}
    for i in range(FLAGS.images):
        height, width = VOC_SIZES[i % len(VOC_SIZES)]
        jpeg = tf.io.encode_jpeg(photo(height, width, rng), quality=90).numpy()
        with Image.open(io.BytesIO(jpeg)) as image:
            reference = np.asarray(image.convert("RGB").resize((FLAGS.size, FLAGS.size), Image.BILINEAR), np.float64)
        for dct in ("", "INTEGER_ACCURATE"):
            decoded = tf.io.decode_jpeg(jpeg, channels=3, dct_method=dct)
            for antialias in (False, True):
                resized = tf.image.resize(decoded, [FLAGS.size, FLAGS.size], antialias=antialias).numpy()
                for rounded in (False, True):
                    ours = np.round(resized) if rounded else resized
                    key = (f"decode {dct or 'TensorFlow default'}, antialias={antialias}, "
                           f"{'rounded' if rounded else 'not rounded'}")
                    differences.setdefault(key, []).append(np.abs(ours - reference))
        ours = pipeline.decode_and_resize(jpeg, FLAGS.size).numpy()
        differences.setdefault("spml_tf pipeline.decode_and_resize", []).append(np.abs(ours - reference))
    rows = {key: {"max_abs_difference": float(max(d.max() for d in values)),
                  "mean_abs_difference": float(np.mean([d.mean() for d in values]))}
            for key, values in differences.items()}
    print(f"{FLAGS.images} photo-like JPEGs of VOC sizes -> {FLAGS.size}x{FLAGS.size}, against PIL (0..255 units):")
    print(f"{'variant':<70}{'max':>8}{'mean':>10}")
    for key, row in rows.items():
        print(f"{key:<70}{row['max_abs_difference']:>8.2f}{row['mean_abs_difference']:>10.4f}")
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump({"rows": rows, "images": FLAGS.images, "size": FLAGS.size,
                   "machine": {"python": platform.python_version(), "tensorflow": tf.__version__,
                               "pillow": Image.__version__}}, f, indent=2)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
