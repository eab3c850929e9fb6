"""The original code's training step, in PyTorch, for bench/train_step.py and bench/profile_step.py to time beside
ours (each in a process of its own: torch and TensorFlow in one process can crash on import).

It is the step of Correr-Zhou/SPML-AckTheUnknown: torchvision's resnet50 (no weights) with a new classifier, in
train mode; its EM loss (losses.py's loss_em: -log(p + 1e-5) on positives, -alpha H(p) on unannotated labels, mean
over B x C); torch.optim.Adam; the loss read every step (`.item()`), as its loop does. torch is imported when a step
is built and is never a dependency of this project.
"""

import time

ALPHA = 0.2


def versions():
    """"torch X, torchvision Y"; ImportError when either cannot be imported."""
    import torch
    import torchvision

    return f"torch {torch.__version__}, torchvision {torchvision.__version__}"


class OriginalStep:
    """One batch of random images, fixed labels; `run()` is one training step, `phases` (when given) adds the
    seconds of its forward-and-loss, backward and optimizer parts (torch on a CPU runs each synchronously)."""

    def __init__(self, batch_size, image_size, labels, intra_op_threads, inter_op_threads, seed=0):
        import torch
        import torchvision

        torch.set_num_threads(intra_op_threads)
        torch.set_num_interop_threads(inter_op_threads)
        torch.manual_seed(seed)
        self.torch = torch
        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = torch.nn.Linear(self.model.fc.in_features, labels.shape[1])
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-5)
        self.images = torch.rand(batch_size, 3, image_size, image_size)
        self.labels = torch.from_numpy(labels)

    def loss(self, logits):  # the original losses.py's loss_em, restated
        torch, label_vec = self.torch, self.labels
        preds = torch.sigmoid(logits)
        loss_mtx = torch.zeros_like(preds)
        loss_mtx[label_vec == 1] = -torch.log(preds[label_vec == 1] + 1e-5)
        entropy = -(preds * torch.log(preds + 1e-5) + (1 - preds) * torch.log(1 - preds + 1e-5))
        loss_mtx[label_vec == 0] = -ALPHA * entropy[label_vec == 0]
        return loss_mtx.mean()

    def run(self, phases=None):
        started = time.perf_counter()
        self.optimizer.zero_grad()
        loss = self.loss(self.model(self.images))
        value = loss.item()
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        self.optimizer.step()
        if phases is not None:
            done = time.perf_counter()
            for name, seconds in (("forward and loss", forward - started), ("backward", backward - forward),
                                  ("optimizer", done - backward)):
                phases[name] = phases.get(name, 0.0) + seconds
        return value

    def params(self):
        total = sum(p.numel() for p in self.model.parameters())
        return total, total - sum(p.numel() for p in self.model.fc.parameters())

    def threads(self):
        return {"intra_op": self.torch.get_num_threads(), "inter_op": self.torch.get_num_interop_threads()}
