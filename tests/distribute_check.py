"""Distribution checks that need the CPU split into 2 logical devices, which must happen before TensorFlow
starts: tests/test_distribute.py runs this file in a subprocess and reads the JSON it prints last.

    python tests/distribute_check.py step            mirrored step == one-device step, per loss
    python tests/distribute_check.py resnet_step     the same for ResNet-50 with (synchronised) BatchNorm
    python tests/distribute_check.py hub_step PRESET the same for --backbone=hub:PRESET (a KerasHub preset
                                                     directory; its BatchNorm synchronised by nets/hub.py)
    python tests/distribute_check.py train DATA DIR  a short em_apl training under MirroredStrategy
    python tests/distribute_check.py uneven_batch    the global batch must split over the replicas
    python tests/distribute_check.py uneven N        every loss: an epoch of N examples in global batches of 12
                                                     whose last one splits unevenly, mirrored == one device
    python tests/distribute_check.py epoch N         every loss's weights after that epoch on this process's
                                                     strategy (multi_worker from TF_CONFIG, else one device)

SPML_CHECK_DEVICES (default 2) is the number of logical CPU devices.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * int(os.environ.get("SPML_CHECK_DEVICES", "2")))

import keras  # noqa: E402

from spml_tf import methods as losses
from spml_tf.training import distribute, optimizers  # noqa: E402
from spml_tf.core.errors import UsageError  # noqa: E402
from spml_tf.training.label_bank import LabelBank  # noqa: E402

N, C, BATCH = 32, 5, 8


def _data():
    rng = np.random.RandomState(0)
    images = rng.rand(N, 4, 4, 3).astype(np.float32)
    observed = np.zeros((N, C), np.float32)
    observed[rng.rand(N, C) < 0.25] = -0.3  # APL pseudo-negatives with soft targets
    observed[np.arange(N), rng.randint(C, size=N)] = 1.0
    return images, observed


def _train(strategy, loss_name, steps):
    """Loss and weights after `steps` Adam steps on global batches of BATCH, with our loss over a label bank."""
    images, observed = _data()
    keras.utils.set_random_seed(0)
    hyper = {"em": {"alpha": 0.2}, "em_apl": {"alpha": 0.2, "beta": 0.02}, "gr_apl": {"beta": 0.02}}.get(loss_name, {})
    if loss_name.startswith("ll_"):
        hyper = {"ll_delta": 10.0}  # k = 20% of the global batch's 40 entries in epoch 3: 8, not 4 per replica
    loss = losses.get(loss_name, **hyper)
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(3, 10)
    if loss_name.startswith("ll_"):  # no pseudo-negatives in LL's labels
        observed = np.where(observed < 0, 0.0, observed).astype(np.float32)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(C, name="logits")])
        bank = LabelBank(observed)
        loss.attach(bank)
        # The trainer's Adam, the head at 10x: the multiplier holds on every replica.
        model.compile(optimizer=optimizers.TorchAdam(0.01, head_lr_mult=10.0), loss=losses.LabelBankLoss(loss, bank))
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(N))).batch(BATCH).repeat()
    seen = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[count])
    corrections = None
    if getattr(loss, "corrections", None) is not None:  # LL-Cp: the entries each replica marked, summed
        corrections = loss.corrections.read_value().numpy().tolist()
    return history.history["loss"][0], model.get_weights(), len(seen), corrections


def step():
    mirrored = distribute.make_strategy("mirrored", BATCH).strategy
    assert mirrored.num_replicas_in_sync == 2
    out = {}
    for name in ("an", "em", "em_apl", "ll_r", "ll_ct", "ll_cp", "gr", "gr_apl"):
        loss_one, weights_one, _, corrections_one = _train(tf.distribute.get_strategy(), name, 3)
        loss_two, weights_two, _, corrections_two = _train(mirrored, name, 3)
        out[name] = {"loss_one_device": loss_one, "loss_mirrored": loss_two,
                     "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(weights_one, weights_two)),
                     "corrections_equal": corrections_one == corrections_two,
                     "corrections": None if corrections_one is None else int(np.sum(corrections_one))}
    return out


def resnet_step():
    """ResNet-50 (no weights, 32 px, global batch 8, em_apl, the trainer's Adam), one step: two replicas compute
    the one-device step, BatchNorm's moving statistics included, because BatchNorm takes the global batch's
    statistics. The same network with Keras's own BatchNormalization (each replica normalising its half) as a
    control."""
    from spml_tf import config as config_lib
    from spml_tf.training import trainer as train_lib
    from spml_tf.nets import models

    config = config_lib.from_overrides("voc", weights="none", image_size=32, batch_size=8, loss="em_apl")
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    observed = np.zeros((8, 20), np.float32)
    observed[rng.rand(8, 20) < 0.2] = -0.3
    observed[np.arange(8), rng.randint(20, size=8)] = 1.0

    def run(strategy, plain_batch_norm):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = models.build_model(config, 20)
            if plain_batch_norm:
                model = models.for_saving(model)
            bank = LabelBank(observed)
            model.compile(optimizer=train_lib.make_optimizer(config),
                          loss=losses.LabelBankLoss(losses.get("em_apl", alpha=0.2, beta=0.02), bank))
        dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(8))).batch(8)
        loss = model.fit(dataset, epochs=1, verbose=0).history["loss"][0]
        moving = [np.asarray(v) for v in model.get_layer("resnet50").non_trainable_weights]
        return loss, moving

    out = {}
    mirrored = distribute.make_strategy("mirrored", 8).strategy  # one: two in a process share collective keys
    for name, plain in (("ours", False), ("keras_batch_norm", True)):
        loss_one, moving_one = run(tf.distribute.get_strategy(), plain)
        loss_two, moving_two = run(mirrored, plain)
        out[name] = {
            "loss_one_device": loss_one, "loss_mirrored": loss_two,
            # Per BatchNorm statistic, its largest difference relative to its largest value.
            "max_moving_statistic_relative_difference": max(float(np.abs(a - b).max() / np.abs(a).max())
                                                            for a, b in zip(moving_one, moving_two)),
        }
    return out


def hub_step(preset):
    """--backbone=hub:PRESET (a tiny KerasHub ResNet: BatchNorm), 32 px, global batch 8, em_apl, the trainer's SGD
    (torch's, momentum 0.9) with the head at 10x, 3 steps: two replicas end with the weights of one device,
    BatchNorm's moving statistics included, as hub.load synchronises every BatchNormalization of the backbone. The
    same with each replica's own statistics (synchronized=False) as a control.

    SGD, not Adam: a random tiny ResNet has dead channels whose gradient is 0 but for rounding (1e-10), and Adam's
    first step, lr g / (|g| + 1e-8), turns the rounding of a different summation order into 6e-5 of a weight."""
    from spml_tf import config as config_lib
    from spml_tf.training import trainer as train_lib
    from spml_tf.nets import models

    config = config_lib.from_overrides("voc", backbone=f"hub:{preset}", image_size=32, batch_size=8, loss="em_apl",
                                       optimizer="sgd", learning_rate=0.01, momentum=0.9, head_lr_mult=10.0)
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    observed = np.zeros((24, 20), np.float32)
    observed[rng.rand(24, 20) < 0.2] = -0.3
    observed[np.arange(24), rng.randint(20, size=24)] = 1.0

    def run(strategy, synchronized):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = models.build_model(config, 20)
            batch_norms = [layer for layer in model._flatten_layers()
                           if isinstance(layer, keras.layers.BatchNormalization)]
            for layer in batch_norms:
                layer.synchronized = layer.synchronized and synchronized
            bank = LabelBank(observed)
            model.compile(optimizer=train_lib.make_optimizer(config),
                          loss=losses.LabelBankLoss(losses.get("em_apl", alpha=0.2, beta=0.02), bank))
        dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(24))).batch(8)
        loss = model.fit(dataset, epochs=1, verbose=0).history["loss"][0]
        moving = [np.asarray(v) for layer in batch_norms for v in (layer.moving_mean, layer.moving_variance)]
        return loss, model.get_weights(), moving, all(layer.synchronized for layer in batch_norms)

    out = {}
    mirrored = distribute.make_strategy("mirrored", 8).strategy  # one: two in a process share collective keys
    for name, synchronized in (("hub", True), ("unsynchronized", False)):
        loss_one, weights_one, moving_one, _ = run(tf.distribute.get_strategy(), synchronized)
        loss_two, weights_two, moving_two, all_synchronized = run(mirrored, synchronized)
        out[name] = {
            "loss_one_device": loss_one, "loss_mirrored": loss_two, "batch_norms": len(moving_one) // 2,
            "synchronized": all_synchronized,
            "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(weights_one, weights_two)),
            "max_moving_statistic_relative_difference": max(float(np.abs(a - b).max() / np.abs(a).max())
                                                            for a, b in zip(moving_one, moving_two)),
        }
    return out


def train(data_dir, model_dir):
    from spml_tf import config as config_lib
    from spml_tf.training import trainer as train_lib

    config = config_lib.from_overrides("digits", data_dir=data_dir, model_dir=model_dir, epochs=3, warmup_epochs=1,
                                       patience=10, image_size=16, batch_size=32, strategy="mirrored")
    results = train_lib.train_and_evaluate(config, log=lambda line: None, verbose=0)
    return {"apl_rounds": results["apl_rounds"], "test_map": results["test"]["map"],
            "history": results["history"]}


UNEVEN_BATCH = 12


def _epoch(strategy, loss_name, num_examples):
    """(reported loss, weights) after one epoch of `num_examples` in global batches of UNEVEN_BATCH, for any loss
    of the registry with its digits hyper-parameters (ROLE with its label estimator, reading the index)."""
    from spml_tf import config as config_lib
    from spml_tf.nets import models

    config = config_lib.from_overrides("digits", loss=loss_name, ll_delta=10.0)
    rng = np.random.RandomState(1)
    images = rng.rand(num_examples, 4, 4, 3).astype(np.float32)
    observed = np.zeros((num_examples, C), np.float32)
    if "apl" in loss_name:
        observed[rng.rand(num_examples, C) < 0.25] = -0.3
    observed[np.arange(num_examples), rng.randint(C, size=num_examples)] = 1.0
    keras.utils.set_random_seed(0)
    loss = losses.for_config(config)
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(3, 10)  # LL's k and GR's schedule of a later epoch
    with strategy.scope():
        classifier = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                                       keras.layers.Dense(C, name="logits")])
        bank = LabelBank(observed)
        loss.attach(bank)
        model = loss.training_model(classifier, observed, config.seed)
        model.compile(optimizer=optimizers.TorchAdam(0.01, head_lr_mult=10.0), loss=losses.LabelBankLoss(loss, bank))
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(num_examples))).batch(UNEVEN_BATCH)
    if loss.needs_example_index():
        dataset = dataset.map(lambda image, index: ((image, index), index))
    history = model.fit(dataset, epochs=1, verbose=0)
    return history.history["loss"][0], model.get_weights()


def uneven(num_examples):
    strategy = distribute.make_strategy("mirrored", UNEVEN_BATCH).strategy
    out = {"replicas": strategy.num_replicas_in_sync}
    for name in losses.LOSSES:
        loss_one, weights_one = _epoch(tf.distribute.get_strategy(), name, num_examples)
        loss_mirrored, weights_mirrored = _epoch(strategy, name, num_examples)
        out[name] = {"loss_one_device": loss_one, "loss_mirrored": loss_mirrored,
                     "max_weight_difference": max(float(np.abs(a - b).max())
                                                  for a, b in zip(weights_one, weights_mirrored))}
    return out


def epoch(num_examples):
    name = "multi_worker" if "TF_CONFIG" in os.environ else "one_device"
    strategy = distribute.make_strategy(name, UNEVEN_BATCH).strategy
    out = {"replicas": strategy.num_replicas_in_sync}
    for loss_name in losses.LOSSES:
        loss, weights = _epoch(strategy, loss_name, num_examples)
        out[loss_name] = {"loss": loss, "weights": [w.tolist() for w in weights]}
    return out


def uneven_batch():
    try:
        distribute.make_strategy("mirrored", 7)
    except UsageError as error:
        return {"error": str(error)}
    return {"error": None}


if __name__ == "__main__":
    mode = sys.argv[1]
    result = {"step": step, "resnet_step": resnet_step,
              "hub_step": lambda: hub_step(sys.argv[2]), "uneven_batch": uneven_batch,
              "uneven": lambda: uneven(int(sys.argv[2])), "epoch": lambda: epoch(int(sys.argv[2])),
              "train": lambda: train(sys.argv[2], sys.argv[3])}[mode]()
    print(json.dumps(result))
