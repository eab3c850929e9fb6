"""spml-tf: single positive multi-label learning (EM loss + APL, and the methods before and after it) in
TensorFlow / Keras 3.

The folders follow the data's way, and imports run one way, down this list (a test checks it):

    commands   spml_tf/train.py, convert.py, export.py, predict.py, report.py, vl_scores.py: the command lines
               (spml-train, ...), with config.py (the typed Config and the presets), choices.py (the names a run
               chooses from, known without TensorFlow) and cli.py (one error line, exit codes, --help)
    serving/   a finished run in use: the SavedModel export, predict, Classifier
    training/  a run: the trainer's steps, label bank, optimizers, distribution, metrics, checkpoints, results
    methods/   the losses and what they need during training, one module per family (cole, em, ll, gr, vl)
    nets/      ResNet-50, the small CNN, the heads, pretrained weights, KerasHub's CLIP
    data/      releases -> observed labels and split -> TFRecord shards -> the tf.data pipeline
    core/      the small shared helpers (errors, atomic files, locks, schema, signals, progress, downloads, the
               filter of TensorFlow's log)

methods, nets and data do not import one another. `spml_tf.losses` and `spml_tf.classifier` keep the names the
README shows (the methods' registry, and serving's Classifier).
"""

__version__ = "0.2.0"
