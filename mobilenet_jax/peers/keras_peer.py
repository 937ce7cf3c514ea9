"""Keras Applications MobileNet / MobileNetV2 on this machine, as the peer.

The model is `keras.applications.MobileNet` or `MobileNetV2` with
`weights=None`, 1000 classes and the given alpha and input size. Training:
RMSprop(learning_rate 0.01, rho 0.9, momentum 0.9), sparse cross-entropy, one
random batch held as a tf.constant, the train and inference steps each under
`tf.function` (XLA off unless --xla, so TensorFlow's oneDNN kernels run).
These are the settings of the peer measurements in docs/design.md ("Peers at
the start"). Prints one JSON line with train and infer figures.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mobilenet_jax.peers import emit, parse_args  # noqa: E402
from mobilenet_jax.timing import summarize, time_steps  # noqa: E402


def main():
  args = parse_args([(("--xla",), {"action": "store_true"})])
  ctor = (keras.applications.MobileNetV2 if args.model == "mobilenet_v2"
          else keras.applications.MobileNet)
  size, batch = args.image_size, args.batch_size
  model = ctor(input_shape=(size, size, 3), alpha=args.alpha, weights=None,
               classes=1000)
  opt = keras.optimizers.RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9)
  loss_fn = keras.losses.SparseCategoricalCrossentropy()
  x = tf.constant(np.random.rand(batch, size, size, 3).astype("float32"))
  y = tf.constant(np.random.randint(0, 1000, size=(batch,)))

  @tf.function(jit_compile=args.xla)
  def train_step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function(jit_compile=args.xla)
  def infer(x):
    return model(x, training=False)

  result = {"peer": "keras", "framework": f"keras {keras.__version__} / "
            f"tensorflow {tf.__version__}", "params": model.count_params()}
  if args.mode in ("train", "both"):
    times = time_steps(lambda: train_step(x, y).numpy(), args.warmup, args.steps)
    result["train"] = summarize(times, batch)
  if args.mode in ("infer", "both"):
    times = time_steps(lambda: infer(x).numpy(), args.warmup, args.steps)
    result["infer"] = summarize(times, batch)
  emit(result)


if __name__ == "__main__":
  main()
