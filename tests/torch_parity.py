"""What the parity tests and the script that made their fixtures (tests/fixtures/make_torch_fixtures.py) share:
torchvision's ResNet-50 state dict layout and the seeded NumPy draws of every weight and input, so that a test
redraws exactly what torch was given, and only torch's answers are stored."""

import numpy as np

NUM_CLASSES = 5
IMAGE_SIZE = 64
EVAL_BATCH = 2
TRAIN_BATCH = 4
ALPHA = 0.2  # EM's weight of the entropy term (the paper's VOC value)
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))


def resnet50_keys(num_classes=NUM_CLASSES):
    """(name, shape) of torchvision's resnet50 state dict (fc sized to num_classes), in its order."""
    entries = []

    def conv(name, out_channels, in_channels, kernel):
        entries.append((f"{name}.weight", (out_channels, in_channels, kernel, kernel)))

    def bn(name, channels):
        entries.extend([(f"{name}.weight", (channels,)), (f"{name}.bias", (channels,)),
                        (f"{name}.running_mean", (channels,)), (f"{name}.running_var", (channels,)),
                        (f"{name}.num_batches_tracked", ())])

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    channels = 64
    for stage, (width, blocks) in enumerate(STAGES, start=1):
        for block in range(blocks):
            name = f"layer{stage}.{block}"
            conv(f"{name}.conv1", width, channels, 1)
            bn(f"{name}.bn1", width)
            conv(f"{name}.conv2", width, width, 3)
            bn(f"{name}.bn2", width)
            conv(f"{name}.conv3", width * 4, width, 1)
            bn(f"{name}.bn3", width * 4)
            if block == 0:
                conv(f"{name}.downsample.0", width * 4, channels, 1)
                bn(f"{name}.downsample.1", width * 4)
            channels = width * 4
    entries += [("fc.weight", (num_classes, 2048)), ("fc.bias", (num_classes,))]
    return entries


def resnet50_state(seed=0, num_classes=NUM_CLASSES):
    """{name: array} for every entry of resnet50_keys: plausible trained-network values, from one seeded draw.

    Convolutions He-scaled; BatchNorm scales in [0.5, 1], the last of each
    residual branch's in [0.1, 0.3] (the residual stream stays tame through 16
    blocks in eval mode); shifts and running means small, running variances
    near 1, so that the logits still depend on the image.
    """
    rng = np.random.RandomState(seed)
    state = {}
    for name, shape in resnet50_keys(num_classes):
        kind = name.rsplit(".", 1)[1]
        last_bn = ".bn3." in name
        if kind == "num_batches_tracked":
            state[name] = np.array(0, np.int64)
        elif name.startswith("fc."):
            state[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = (np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)).astype(np.float32)
        elif kind == "weight":
            state[name] = rng.uniform(*((0.1, 0.3) if last_bn else (0.5, 1.0)), shape).astype(np.float32)
        elif kind in ("bias", "running_mean"):
            state[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        else:  # running_var
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return state


def images(seed, batch, size=IMAGE_SIZE):
    """uint8-valued float32 images [batch, size, size, 3] (NHWC, as Keras takes them)."""
    return np.random.RandomState(seed).randint(0, 256, (batch, size, size, 3)).astype(np.float32)


def observed_labels(seed=3, batch=TRAIN_BATCH, num_classes=NUM_CLASSES):
    """One annotated positive per row, everything else unannotated (0)."""
    labels = np.zeros((batch, num_classes), np.float32)
    labels[np.arange(batch), np.random.RandomState(seed).randint(num_classes, size=batch)] = 1.0
    return labels


def small_state_dict():
    """The tensors of the small .pth fixtures, with the dtypes a state dict holds (and a non-contiguous one)."""
    rng = np.random.RandomState(7)
    return {
        "conv.weight": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
        "conv.bias": rng.standard_normal(3).astype(np.float64),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "transposed": rng.standard_normal((5, 6)).astype(np.float32).T,  # saved as a strided view
        "half": rng.standard_normal(4).astype(np.float16),
        "mask": np.array([True, False, True]),
    }


def adam_gradients(seed=11, steps=8, size=64):
    """Gradients from 1e-9 to 1 in magnitude, of both signs, one row per step."""
    rng = np.random.RandomState(seed)
    magnitudes = 10.0 ** rng.uniform(-9, 0, (steps, size))
    return (magnitudes * rng.choice([-1.0, 1.0], (steps, size))).astype(np.float32)
