"""Trains a single-positive multi-label classifier: `python train_main.py --dataset=digits`.

The same command as the installed `spml-train` and `python -m spml_tf.train` (spml_tf/train.py).
"""

from spml_tf import train

if __name__ == "__main__":
    train.main("train_main.py")
