"""spml-tf: single positive multi-label learning (EM loss + APL) in TensorFlow / Keras 3."""

__version__ = "0.2.0"
