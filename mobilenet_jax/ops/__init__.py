"""What makes the papers' layers fast: the depthwise convolution (a native CPU
kernel and pure-JAX forms, chosen by `depthwise_impl`) and batch norm fused with
its activation. Same functions and variables as the plain Flax layers; the models
in `mobilenet_jax.models` call them and nothing else knows they exist."""
