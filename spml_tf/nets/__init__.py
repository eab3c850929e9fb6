"""The networks: torchvision's ResNet-50 in Keras (resnet), the small CNN, the heads (linear, BoostLU) and the
classifier a run trains (models), the weights they start from (pretrained, torch_weights), any KerasHub image
backbone as `--backbone=hub:<preset>` (hub), and a frozen CLIP or SigLIP loaded through KerasHub for the
vision-language scores (clip). KerasHub is imported only by hub and clip, when a preset is loaded.

Imports spml_tf.core only.
"""
