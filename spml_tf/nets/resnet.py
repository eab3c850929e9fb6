"""torchvision's ResNet-50 as a Keras model: the function the paper trained, layer for layer.

`torchvision.models.resnet50` is ResNet v1.5: the stride-2 of a down-sampling
block sits in its 3x3 convolution (v1, keras.applications' ResNet50, puts it
in the first 1x1). Convolutions have no bias (BatchNorm follows), padding is
explicit and symmetric (torch's `padding=1` / `padding=3`, where TensorFlow's
"SAME" pads more on the bottom-right at stride 2), and BatchNorm uses
epsilon 1e-5 and momentum 0.1 (0.9 in Keras's terms). Layers carry the names
of torchvision's modules (`layer1.0.conv1`, `layer1.0.downsample.0`, ...), so
its state dict maps onto them one to one (torch_weights.py).

In training, `BatchNorm` normalises with the statistics of the GLOBAL batch,
summed over every replica and worker (torch's SyncBatchNorm; with one device
it is torch's BatchNorm2d), and updates the running variance with the
unbiased batch variance, as torch does. At inference it is Keras's own
BatchNormalization, which is what the saved model holds (see `for_saving`).
"""

import keras
import numpy as np
import tensorflow as tf

# torchvision's ImageNet normalisation, applied to images in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras's weight of the old value; torch's momentum=0.1 is the weight of the batch
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride of the first block)
EXPANSION = 4
NUM_FEATURES = 2048


def imagenet_normalization(name="normalize"):
    """Images in [0, 255] -> (x / 255 - mean) / std, as torchvision's ToTensor + Normalize: a built-in layer."""
    return keras.layers.Normalization(mean=[255.0 * m for m in IMAGENET_MEAN],
                                      variance=[(255.0 * s) ** 2 for s in IMAGENET_STD], name=name)


@keras.saving.register_keras_serializable(package="spml_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """torch's BatchNorm2d / SyncBatchNorm in training; Keras's BatchNormalization at inference."""

    def __init__(self, **kwargs):
        kwargs.setdefault("epsilon", BN_EPSILON)
        kwargs.setdefault("momentum", BN_MOMENTUM)
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras's BatchNormalization: float32 also under mixed precision
        context = tf.distribute.get_replica_context()
        if (context is None or context.num_replicas_in_sync == 1) and x.shape.rank == 4 and self.axis in (-1, 3):
            # One replica: TensorFlow's fused kernel (and its fused gradient), faster than the ops
            # below. It normalises with the biased batch variance and returns the unbiased one: torch's pair.
            outputs, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
        else:
            mean, variance, count = global_moments(x, self._reduction_axes)
            # torch's running variance takes the unbiased batch variance; normalisation uses the biased one.
            unbiased = variance * (count / tf.maximum(count - 1.0, 1.0))
            outputs = tf.nn.batch_normalization(x, mean, variance, offset=self.beta, scale=self.gamma,
                                                variance_epsilon=self.epsilon)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + unbiased * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


def global_moments(x, axes):
    """(mean, biased variance, number of values) per channel over `axes` of the global batch.

    Under a distribution strategy, sums are all-reduced over every replica
    (and worker); two passes (the mean, then the squared deviations from it),
    as torch computes them, not E[x^2] - E[x]^2, which loses the variance of
    large activations to cancellation.
    """
    context = tf.distribute.get_replica_context()
    synchronized = context is not None and context.num_replicas_in_sync > 1

    def total(value):
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value) if synchronized else value

    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
    count = total(count)
    mean = total(tf.reduce_sum(x, axis=axes)) / count
    variance = total(tf.reduce_sum(tf.math.squared_difference(x, mean), axis=axes)) / count
    return mean, variance, count


def _conv(x, filters, kernel_size, strides, name):
    """torch's Conv2d(bias=False, padding=kernel_size // 2): explicit symmetric zero padding, then "valid"."""
    padding = kernel_size // 2
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}.pad")(x)
    # torchvision's initialisation: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    initializer = keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="valid", use_bias=False,
                               kernel_initializer=initializer, name=name)(x)


def _bottleneck(x, width, strides, name):
    shortcut = x
    y = keras.layers.ReLU(name=f"{name}.relu1")(BatchNorm(name=f"{name}.bn1")(_conv(x, width, 1, 1, f"{name}.conv1")))
    y = keras.layers.ReLU(name=f"{name}.relu2")(BatchNorm(name=f"{name}.bn2")(
        _conv(y, width, 3, strides, f"{name}.conv2")))  # v1.5: the stride is here
    y = BatchNorm(name=f"{name}.bn3")(_conv(y, width * EXPANSION, 1, 1, f"{name}.conv3"))
    if strides != 1 or x.shape[-1] != width * EXPANSION:
        shortcut = BatchNorm(name=f"{name}.downsample.1")(
            _conv(x, width * EXPANSION, 1, strides, f"{name}.downsample.0"))
    return keras.layers.ReLU(name=f"{name}.relu3")(keras.layers.Add(name=f"{name}.add")([y, shortcut]))


def resnet50(image_size, name="resnet50", pooling=True):
    """Normalised images [S, S, 3] -> 2048 features (global average pool): torchvision's resnet50 without `fc`;
    with pooling=False the last feature map [S/32, S/32, 2048] (what the BoostLU head reads)."""
    inputs = keras.Input((image_size, image_size, 3), name="normalized_image")
    x = keras.layers.ReLU(name="relu")(BatchNorm(name="bn1")(_conv(inputs, 64, 7, 2, "conv1")))
    # torch pads the max-pool with -inf; after a ReLU zeros are the same.
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(
        keras.layers.ZeroPadding2D(1, name="maxpool.pad")(x))
    for stage, (width, blocks, strides) in enumerate(STAGES, start=1):
        for block in range(blocks):
            x = _bottleneck(x, width, strides if block == 0 else 1, f"layer{stage}.{block}")
    features = keras.layers.GlobalAveragePooling2D(name="avgpool")(x) if pooling else x
    return keras.Model(inputs, features, name=name)


def linear_head_initializers(fan_in=NUM_FEATURES):
    """torch.nn.Linear's default initialisation: weight and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound), keras.initializers.RandomUniform(-bound, bound)
