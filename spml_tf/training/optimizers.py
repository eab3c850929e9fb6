"""Adam and SGD as torch.optim computes them, which the original codes train with, with a learning-rate multiplier
for the classifier's head (the `lr_mult` of the LL, BoostLU and GR authors' code: a second parameter group).

Keras's Adam folds both bias corrections into the step size and adds epsilon
to sqrt(v) before correcting it, so its effective epsilon is
1 / sqrt(1 - beta_2^t) times torch's: about 32x at the first step. With the
small gradients of SPML losses that moves the first updates by up to 0.9
learning rates. Here epsilon (torch's 1e-8) is added after the bias
correction, as in torch:

    m <- m + (1 - beta_1) (g - m)          v <- v + (1 - beta_2) (g^2 - v)
    p <- p - lr * (m / (1 - beta_1^t)) / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)

Keras's SGD decays weights apart from the gradient (decoupled); torch adds
weight_decay * p to the gradient before the momentum, which TorchSGD does:

    g <- g + weight_decay p        b <- momentum b + g        p <- p - lr b

The head's variables (those of the layer named `logits`) step with
lr * head_lr_mult. The multiplier is a Python number chosen per variable when
the optimizer is built, so it holds on every replica under any strategy, and a
resumed run, which builds the same optimizer from the same config, keeps it.
"""

import keras
from keras import ops

TORCH_EPSILON = 1e-8
HEAD = "logits"  # the name of the head layer (models.build_model)


class _HeadMultiplier:
    """Mixin: the learning rate of a variable, times head_lr_mult for the head's."""

    def _record_multipliers(self, var_list):
        # A variable of the head has the head layer in its path: logits/kernel, or <model>/logits/kernel.
        self._multipliers = [self.head_lr_mult if HEAD in v.path.split("/")[:-1] else 1.0 for v in var_list]

    def _learning_rate_of(self, variable, learning_rate):
        multiplier = self._multipliers[self._get_variable_index(variable)]
        return ops.cast(learning_rate, variable.dtype) * multiplier


@keras.saving.register_keras_serializable(package="spml_tf")
class TorchAdam(_HeadMultiplier, keras.optimizers.Adam):
    """Adam with torch's epsilon placement and default (1e-8); the same slots as Keras's Adam."""

    def __init__(self, learning_rate=0.001, epsilon=TORCH_EPSILON, head_lr_mult=1.0, name="adam", **kwargs):
        super().__init__(learning_rate=learning_rate, epsilon=epsilon, name=name, **kwargs)
        if self.amsgrad:
            raise ValueError("TorchAdam does not implement amsgrad")
        self.head_lr_mult = float(head_lr_mult)

    def build(self, var_list):
        super().build(var_list)
        self._record_multipliers(var_list)

    def update_step(self, gradient, variable, learning_rate):
        lr = self._learning_rate_of(variable, learning_rate)
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

    def get_config(self):
        return {**super().get_config(), "head_lr_mult": self.head_lr_mult}


@keras.saving.register_keras_serializable(package="spml_tf")
class TorchSGD(_HeadMultiplier, keras.optimizers.Optimizer):
    """SGD with momentum (no dampening, no Nesterov) and weight decay added to the gradient, as torch.optim.SGD."""

    def __init__(self, learning_rate=0.01, momentum=0.9, torch_weight_decay=0.0, head_lr_mult=1.0, name="sgd",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.torch_weight_decay = float(torch_weight_decay)
        self.head_lr_mult = float(head_lr_mult)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._buffers = [self.add_variable_from_reference(v, "momentum") for v in var_list]
        self._record_multipliers(var_list)

    def update_step(self, gradient, variable, learning_rate):
        lr = self._learning_rate_of(variable, learning_rate)
        gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(variable, self.torch_weight_decay))
        buffer = self._buffers[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
        self.assign_sub(variable, ops.multiply(buffer, lr))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "torch_weight_decay": self.torch_weight_decay,
                "head_lr_mult": self.head_lr_mult}
