"""Experiments that are more than a sweep of config knobs, each a command:
manifold.py (the V2 paper's ReLU-on-a-manifold illustration, Fig. 1) and
keras_digits.py (Keras's MobileNetV2 trained on this project's batches and
recipe) and kernel_ranges.py (how spread the folded depthwise kernels'
channels are: what per-tensor int8 weights lose). Their reports are in experiments/<name>/."""
