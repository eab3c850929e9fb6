"""The networks: torchvision's ResNet-50 in Keras (resnet), the small CNN, the heads (linear, BoostLU) and the
classifier a run trains (models), the weights they start from (pretrained, torch_weights), and a frozen CLIP or
SigLIP loaded through KerasHub for the vision-language scores (clip; KerasHub is imported only there).

Imports spml_tf.core only.
"""
