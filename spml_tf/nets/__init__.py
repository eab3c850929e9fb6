"""The networks: torchvision's ResNet-50 in Keras (resnet), the small CNN, the heads (linear, BoostLU) and the
classifier a run trains (models), and the weights they start from (pretrained, torch_weights).

Imports spml_tf.core only.
"""
