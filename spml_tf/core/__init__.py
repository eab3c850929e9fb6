"""The small shared helpers every layer may use: the errors a user can act on, atomic writes on any filesystem,
file locks, declared JSON shapes (schema), signal handling, progress lines, resumable downloads.

Imports nothing else of spml_tf.
"""
