"""Data, in the order it flows: each release's reader (datasets/), the observation process and split (labels),
the conversion (convert) to TFRecord shards (shard_writer, records), image limits, and the tf.data input
pipeline the trainer reads (pipeline).

Imports spml_tf.core only.
"""
