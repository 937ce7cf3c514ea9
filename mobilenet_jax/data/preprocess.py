"""Per-example image preprocessing: the papers' training crops and evaluation.

Every function takes one example and, for training, a seed: augmentation is
a pure function of (config.seed, epoch, example), whichever process, worker
or thread runs it. TensorFlow does the image work (JPEG decoding, crops,
bilinear resizes) in compiled graphs: `Preprocess` runs one graph per batch,
mapping the per-example function over its images (tf.map_fn).

A JPEG is decoded only inside its crop window (`tf.image.decode_and_crop_jpeg`):
the Inception crop keeps 8-100% of the area, evaluation's central crop 77%.
docs/performance.md gives the measured gain.
"""

import threading

import numpy as np
import tensorflow as tf

CROP_FRACTION = 0.875  # evaluation central crop (Inception / TF-slim)


def single_threaded_ops():
  """Runs each TensorFlow op on one thread: the pipeline already runs
  examples in parallel (map_fn iterations, Grain threads or workers), and
  ops splitting themselves as well cost ~40% of the images/s on 2 cores
  (docs/input.md). Only possible before TensorFlow first runs an op; a
  no-op after."""
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:
    pass


def example_seed(seed: int, epoch: int, example: int) -> np.ndarray:
  """The stateless seed of one example's augmentation in one epoch."""
  return np.array([seed * 1_000_003 + epoch, example], np.int64)


def normalize(image):
  """[0, 255] -> float32 [-1, 1], the MobileNet (Inception) convention."""
  return tf.clip_by_value(image, 0, 255) / 127.5 - 1.0


def to_rgb(image):
  return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def resize(image, size: int):
  """Bilinear, not antialiased: TF-slim's inception_preprocessing (the
  papers' training code) resizes so, and an antialiased downscale of a
  large crop costs more than decoding the JPEG (docs/input.md)."""
  return tf.image.resize(image, (size, size))


def maybe_flip(image, seed, flip: bool):
  return tf.image.stateless_random_flip_left_right(image, seed + 1) if flip else image


def inception_window(shape, seed):
  """Random crop window (8%..100% of the area, aspect 3/4..4/3), as
  [y, x, height, width]: Inception's and TF-slim's training crop."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([0, 0, 4], tf.float32), seed=seed,
      area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0.1, max_attempts=10, use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def center_window(shape):
  """Central square of 0.875 of the shorter side, as [y, x, height, width]."""
  h, w = shape[0], shape[1]
  crop = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * CROP_FRACTION, tf.int32)
  return tf.stack([(h - crop) // 2, (w - crop) // 2, crop, crop])


def crop(image, window):
  """`image` (uint8 pixels, or encoded bytes: a JPEG then decodes only the
  window) cropped to `window` = [y, x, height, width], as float32 RGB."""
  if image.dtype == tf.string:
    image = tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.image.decode_and_crop_jpeg(image, window, channels=3),
        lambda: tf.image.crop_to_bounding_box(decode(image), *tf.unstack(window)))
  else:
    image = tf.image.crop_to_bounding_box(to_rgb(image), *tf.unstack(window))
  return tf.cast(image, tf.float32)


def shape_of(image):
  """[height, width, channels] of pixels, or of encoded bytes (a JPEG's is
  read from its header, nothing decoded)."""
  if image.dtype == tf.string:
    return tf.cond(tf.io.is_jpeg(image), lambda: tf.image.extract_jpeg_shape(image),
                   lambda: tf.shape(decode(image)))
  return tf.shape(image)


def decode(image):
  """Any stored image (encoded bytes, or pixels) -> uint8 RGB pixels."""
  if image.dtype == tf.string:
    return tf.io.decode_image(image, channels=3, expand_animations=False)
  return to_rgb(image)


def inception_crop(image, size: int, seed, flip: bool):
  """Random resized crop + flip (Inception); JPEGs decode only the crop."""
  image = crop(image, inception_window(shape_of(image), seed))
  return maybe_flip(resize(image, size), seed, flip)


def small_image_crop(image, size: int, seed, flip: bool):
  """CIFAR recipe: resize, pad size/8 per side (reflected), random crop
  back to size, flip."""
  image = resize(tf.cast(decode(image), tf.float32), size)
  pad = size // 8
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  image = tf.image.stateless_random_crop(image, (size, size, 3), seed)
  return maybe_flip(image, seed, flip)


def center_crop(image, size: int):
  """Evaluation: the central crop, resized; JPEGs decode only the crop."""
  return resize(crop(image, center_window(shape_of(image))), size)


def plain_resize(image, size: int):
  return resize(tf.cast(decode(image), tf.float32), size)


TRAIN = {"inception": inception_crop, "small": small_image_crop,
         "none": lambda image, size, seed, flip: plain_resize(image, size)}
EVAL = {"center_crop": center_crop, "resize": plain_resize}


class Preprocess:
  """A batch's preprocessing for one recipe, as one compiled TF graph per
  kind of stored image (encoded bytes, or pixels with 1 or 3 channels) that
  maps over the examples in parallel inside TensorFlow (a graph call per
  example costs ~0.5 ms, more than an 8x8 digit's whole recipe). Picklable,
  so Grain's worker processes get it; each process compiles its own graphs."""

  def __init__(self, recipe: str, size: int, flip: bool = False, train: bool = True,
               decode_window: bool = True):
    """decode_window=False decodes whole JPEGs first (to measure the gain)."""
    self.recipe, self.size, self.flip, self.train = recipe, size, flip, train
    self.decode_window = decode_window
    self._graphs, self._lock = {}, threading.Lock()

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_graphs", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state, _graphs={}, _lock=threading.Lock())

  def _example_fn(self):
    size, flip = self.size, self.flip
    stored = (lambda image: image) if self.decode_window else decode
    if self.train:
      fn = TRAIN[self.recipe]
      return lambda args: normalize(fn(stored(args[0]), size, args[1], flip))
    fn = EVAL[self.recipe]
    return lambda args: normalize(fn(stored(args[0]), size))

  def _graph(self, kind):
    with self._lock:  # threads share one graph per kind
      if kind not in self._graphs:
        self._graphs[kind] = self._compile(kind)
      return self._graphs[kind]

  def _compile(self, kind):
    example_fn = self._example_fn()
    out = tf.TensorSpec([self.size, self.size, 3], tf.float32)

    def graph(images, seeds):
      return tf.map_fn(example_fn, (images, seeds), fn_output_signature=out)

    image_spec = (tf.TensorSpec([None], tf.string) if kind == "bytes"
                  else tf.TensorSpec([None, None, None, kind], tf.uint8))
    return tf.function(graph, autograph=False, input_signature=[
        image_spec, tf.TensorSpec([None, 2], tf.int64)])

  def __call__(self, images, seeds=None) -> np.ndarray:
    """`images`: a list of encoded bytes, or uint8 pixels (B, H, W, C);
    `seeds` (B, 2) for training. Returns float32 (B, size, size, 3) in [-1, 1]."""
    if isinstance(images, (list, tuple)) or images.dtype == object:
      images, kind = tf.constant(list(images), tf.string), "bytes"
    else:
      kind = images.shape[-1]
    seeds = np.zeros((len(images), 2), np.int64) if seeds is None else seeds
    return self._graph(kind)(images, seeds).numpy()
