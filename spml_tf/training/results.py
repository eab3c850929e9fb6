"""A finished run's results.json: what it holds, and the one reader that checks it before anyone uses it.

train.py writes it; spml-report, spml-export and `Classifier.from_run` read it
back through `read`, which refuses with one line a file that is missing,
not a file, not JSON, nested beyond reason, or whose fields have the wrong
type, size or range (a hand edit, a damaged disk), naming the field.
"""

from spml_tf.core import schema
from spml_tf.training import run_dir
from spml_tf.core.errors import DataError, UsageError

MAX_CLASSES = 100_000  # far above any dataset here (CUB: 312), and what a chart or a table can still show
_RETRAIN = "; train the run again (the same command resumes and rewrites it)"

_PERCENT = schema.Number(0, 100)
_COUNT = schema.Integer(0)
_RECORD = schema.Record({"epoch": schema.Integer(1), "val_map": _PERCENT}, others=schema.Number())
_ROUND = schema.Record({"epoch": schema.Integer(1), "new_pseudo_negatives": _COUNT, "total_pseudo_negatives": _COUNT},
                       optional={"precision": _PERCENT, "total_precision": _PERCENT})
_METRICS = schema.MapOf(schema.Number(), max_size=100)
_PER_CLASS = schema.MapOf(_PERCENT, max_size=MAX_CLASSES)
SCHEMA = schema.Record(
    {
        "config": schema.Record({"image_size": schema.Integer(8, 10_000), "threshold": schema.Number(0, 1),
                                 "loss": schema.Text(max_length=100),
                                 "val_set_variant": schema.Text(("observed", "clean"))},
                                others=schema.Anything()),
        "class_names": schema.ListOf(schema.Text(max_length=1_000), min_length=1, max_length=MAX_CLASSES),
        "history": schema.ListOf(_RECORD, min_length=1, max_length=10_000),
        "best_epoch": schema.Integer(1),
        "val": _METRICS,
        "test": schema.Nullable(_METRICS),
        "per_class_ap": schema.Record({"val": _PER_CLASS, "test": schema.Nullable(_PER_CLASS)}),
    },
    optional={"apl_rounds": schema.ListOf(_ROUND, max_length=10_000)},
    others=schema.Anything(),  # what a method's callbacks add
)


def read(model_dir):
    """The results dict of the finished run in `model_dir`; UsageError if there is none, DataError if it is
    damaged."""
    import tensorflow as tf

    from spml_tf.core import files

    path = files.join(model_dir, run_dir.RESULTS)
    if not tf.io.gfile.exists(path):
        raise UsageError(f"{path} not found: --model_dir must be the directory of a finished training run")
    if tf.io.gfile.isdir(path):
        raise DataError(f"{path} is a directory, not the results file of a training run")
    try:
        results = schema.check(files.read_json(path), SCHEMA, "results")
    except ValueError as error:  # not JSON, or a SchemaError naming the field
        raise DataError(f"{path} is damaged ({error}){_RETRAIN}") from None
    epochs = [record["epoch"] for record in results["history"]]
    if results["best_epoch"] not in epochs:
        raise DataError(f"{path} is damaged (results.best_epoch {results['best_epoch']} is not an epoch of its "
                        f"history){_RETRAIN}")
    return results
