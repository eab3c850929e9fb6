"""Where a backbone's starting weights come from: `--weights=imagenet`, `none`, or a file.

For `--backbone=resnet50`, `imagenet` is torchvision's IMAGENET1K_V1 file
(`resnet50-0676ba61.pth`, what `torchvision.models.resnet50(pretrained=True)`
loads, 76.13% top-1): downloaded once with download.py (resumable; verified
by the SHA-256 prefix its name carries), converted once to a Keras weights
file beside it, and that file reused. `--weights=FILE` takes such a `.pth`
(a state dict as `torch.save(model.state_dict(), FILE)` writes it; read
without torch, see torch_weights.py) or a converted `.weights.h5`.
"""

import os
import warnings

from spml_tf.core import download, file_lock
from spml_tf.nets import resnet, torch_weights
from spml_tf.core.errors import DataError, reason

FETCH_WAIT_SECONDS = 3600  # 98 MB on a slow line; longer means the other process is stuck
TORCHVISION_RESNET50 = download.Archive("https://download.pytorch.org/models/resnet50-0676ba61.pth",
                                        sha256_prefix="0676ba61")


def cache_dir():
    """$SPML_TF_DATA/weights, else ~/.cache/spml_tf/weights (beside the datasets)."""
    root = os.environ.get("SPML_TF_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "spml_tf")
    return os.path.join(root, "weights")


def load_resnet50(backbone, weights, log=print):
    """Sets resnet.resnet50's weights from `weights` ("imagenet", "none" or a file); DataError if they do not fit."""
    if weights == "none":
        return
    path = imagenet_resnet50(log) if weights == "imagenet" else weights
    if path.endswith(".pth"):
        backbone.set_weights(torch_weights.read_backbone_arrays(backbone, path))
        return
    try:
        with warnings.catch_warnings():
            # Keras only warns when a file lacks some layers, and leaves them as initialised: never silently.
            warnings.simplefilter("error")
            backbone.load_weights(path)
    except (OSError, ValueError, KeyError, UserWarning) as error:
        raise DataError(f"--weights={path}: not a ResNet-50 weights file of this network ({reason(error)}); give a "
                        "torchvision .pth or a file this converted") from None


def imagenet_resnet50(log=print):
    """The converted torchvision ImageNet weights in the cache (downloading and converting them the first time)."""
    directory = cache_dir()
    converted = os.path.join(directory, TORCHVISION_RESNET50.filename.replace(".pth", ".weights.h5"))
    if os.path.exists(converted):
        return converted
    os.makedirs(directory, exist_ok=True)

    def wait(pid):
        log(f"Waiting for process {pid}, which is fetching the same weights into {directory} ...")

    try:
        lock = file_lock.acquire(os.path.join(directory, ".lock"), on_wait=wait, timeout=FETCH_WAIT_SECONDS)
    except file_lock.Busy as busy:
        raise DataError(f"gave up after {FETCH_WAIT_SECONDS:g} s waiting for process {busy.pid} to fetch the "
                        f"ImageNet weights into {directory}; if it is stuck, stop it and run again") from None
    with lock:
        if os.path.exists(converted):  # fetched by the process we waited for
            return converted
        log(f"Fetching torchvision's ImageNet weights for ResNet-50 into {directory} (once)")
        source = download.fetch(TORCHVISION_RESNET50, directory, log=log)
        backbone = resnet.resnet50(224)  # the weights do not depend on the input size
        backbone.set_weights(torch_weights.read_backbone_arrays(backbone, source))
        partial = converted.replace(".weights.h5", "-partial.weights.h5")
        backbone.save_weights(partial)
        os.replace(partial, converted)
        log(f"Converted {source} to {converted}")
    return converted
