"""What makes the papers' layers fast: the depthwise convolution (a native CPU
kernel and pure-JAX forms, chosen by `depthwise_impl`) and batch norm fused with
its activation. Same functions and variables as the plain Flax layers; the models
in `mobilenet_jax.models` call them. Beside the models, only the config's
declarations (the implementations' names, defaults.py), the train step (the
depthwise implementation for a platform) and the benchmark name them."""
