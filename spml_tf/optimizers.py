"""Adam as torch.optim.Adam computes it, which the original code trains with.

Keras's Adam folds both bias corrections into the step size and adds epsilon
to sqrt(v) before correcting it, so its effective epsilon is
1 / sqrt(1 - beta_2^t) times torch's: about 32x at the first step. With the
small gradients of SPML losses that moves the first updates by up to 0.9
learning rates. Here epsilon (torch's 1e-8) is added after the bias
correction, as in torch:

    m <- m + (1 - beta_1) (g - m)          v <- v + (1 - beta_2) (g^2 - v)
    p <- p - lr * (m / (1 - beta_1^t)) / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)
"""

import keras
from keras import ops

TORCH_EPSILON = 1e-8


@keras.saving.register_keras_serializable(package="spml_tf")
class TorchAdam(keras.optimizers.Adam):
    """Adam with torch's epsilon placement and default (1e-8); the same slots as Keras's Adam."""

    def __init__(self, learning_rate=0.001, epsilon=TORCH_EPSILON, name="adam", **kwargs):
        super().__init__(learning_rate=learning_rate, epsilon=epsilon, name=name, **kwargs)
        if self.amsgrad:
            raise ValueError("TorchAdam does not implement amsgrad")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        bias_correction_1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step)
        bias_correction_2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_correction_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / bias_correction_1), denominator))
