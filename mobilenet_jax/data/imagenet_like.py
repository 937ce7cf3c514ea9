"""An ImageNet-like dataset generated offline, for tests and benchmarks.

N JPEG images with the size and byte distribution of ILSVRC-2012 (about
400x350 pixels, about 110 KB each, photographic texture rather than flat
colour) and 1,000 uniformly drawn labels, generated locally from a seed: no
download, no network. The features mirror `imagenet2012`'s (`image` JPEG
bytes, `label` ClassLabel(1000), `file_name`), with `train` and `validation`
splits, so a pipeline written for ImageNet reads it unchanged, and the JPEG
decode + random-resized-crop cost per example is realistic.

Each image is a pure function of (seed, split, index):

* a colour field of random-phase sinusoid gratings at every spatial frequency
  with 1/f^alpha amplitude falloff (pink noise, as in natural images),
  anisotropic per image, in a luminance / opponent-colour basis (chroma
  smoother and weaker than luminance, as in photographs);
* 4-11 objects on top of it, large to small: soft-edged ellipses and straight
  edges (half planes) with their own colour and texture, windowed gratings;
* fine, sharp-edged detail (foliage, fur, gravel) under a smooth "in focus"
  mask, per-image colour balance (channel gains), contrast and sensor noise;

stored as a baseline 4:2:0 JPEG at quality 90. Sizes are drawn uniformly,
width 300..500 and height 250..450 (mean 400x350); the texture knobs below
(LUMA_ALPHA ... FOCUS_BIAS) are tuned so that the files average about 110 KB
(measured over 200 train images: mean 108 KB, median 106 KB, 59..180 KB;
about 6.2 bits per pixel). The bytes are identical for a given numpy and
Pillow (libjpeg) install.

The number of examples is the builder config:

    tfds.builder("imagenet_like/n2000", data_dir=...)        # 2000 + 80
    tfds.builder("imagenet_like/n40", data_dir=...)          # 40 + 10 (tests)
    tfds.builder("imagenet_like/n123_v7_s5", data_dir=...)   # 123 + 7, seed 5

`n<N>` gives N training images and max(10, N // 25) validation images
(ImageNet's 1,281,167 : 50,000 ratio) with seed 0; `_v<M>` sets the validation
count and `_s<S>` the seed. Any such name works, listed or not; `builder()` and
`prepare()` below build the name for you. Each config is cached under its own
directory of the data_dir, in whichever file format it was prepared:

    b = tfds.builder("imagenet_like/n2000", data_dir=d)
    b.download_and_prepare(file_format="array_record")   # or "tfrecord"
    source = tfds.data_source("imagenet_like/n2000", data_dir=d, split="train")
    source[17]  # {"image": uint8 HxWx3, "label": int, "file_name": bytes}

or `prepare(2000, data_dir=d, file_format="array_record")`, which also adds
the format to a set already prepared in the other one.

Generation runs in one process at about 30 images per second (numpy + Pillow,
~28 ms to draw and ~1 ms to encode an image): n2000 prepares in about 70 s,
n50000 in about half an hour; the prepared set takes about N x 105 KB on disk
per file format.
"""

import io
import re
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from mobilenet_jax.data import file_formats

NUM_CLASSES = 1000
WIDTH_RANGE = (300, 500)    # inclusive; mean 400
HEIGHT_RANGE = (250, 450)   # inclusive; mean 350
JPEG_QUALITY = 90
VALIDATION_RATIO = 25       # ImageNet: 1,281,167 train / 50,000 validation
MIN_VALIDATION = 10
# Generator knobs, tuned for ImageNet's bytes per pixel at JPEG_QUALITY:
LUMA_ALPHA = (0.5, 0.8)    # amplitude ~ 1/f^alpha, luminance
CHROMA_ALPHA = (0.9, 1.2)   # colour is smoother
CONTRAST = (45.0, 60.0)     # background texture std, grey levels
NOISE = (6.0, 9.0)          # sensor noise std, grey levels
DETAIL_ALPHA = (0.3, 0.6)   # fine detail (foliage, fur, grain) ...
DETAIL = (45.0, 70.0)       # ... its std where it is, grey levels
DETAIL_SHARPNESS = (2.0, 4.0)  # tanh gain: speckle with sharp edges
FOCUS_BIAS = (0.0, 3.0)     # sigmoid bias of the in-focus mask
OBJECTS = (4, 12)           # objects per image, [lo, hi)
_SPLIT_IDS = {"train": 0, "validation": 1}
_NAME_RE = re.compile(r"^n(\d+)(?:_v(\d+))?(?:_s(\d+))?$")


def default_num_validation(num_train: int) -> int:
  return max(MIN_VALIDATION, num_train // VALIDATION_RATIO)


def config_name(num_train: int, num_validation: Optional[int] = None,
                seed: int = 0) -> str:
  """The config name for these sizes: "n2000", "n123_v7_s5"."""
  name = f"n{int(num_train)}"
  if (num_validation is not None
      and int(num_validation) != default_num_validation(num_train)):
    name += f"_v{int(num_validation)}"
  if seed:
    name += f"_s{int(seed)}"
  return name


# ---------------------------------------------------------------------------
# The images.

# Luminance / opponent-colour basis -> RGB (columns: L, red-green, yellow-blue).
_OPPONENT = np.array([[1.0, 0.6, 0.35],
                      [1.0, -0.5, 0.35],
                      [1.0, 0.0, -0.7]], np.float32)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _pink_fields(rng, h: int, w: int) -> np.ndarray:
  """(4, h, w) float32 fields, unit std: random-phase gratings at every
  frequency, amplitude 1/f^alpha (channel 0 luminance, 1-2 chroma, smoother,
  3 fine detail, nearly white)."""
  fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
  f = np.sqrt(fx * fx + fy * fy)
  f[0, 0] = 1.0
  theta0 = rng.uniform(0, np.pi)
  aniso = rng.uniform(0.0, 0.6)
  orient = 1.0 + aniso * np.cos(2.0 * (np.arctan2(fy, fx) - theta0))
  logf = np.log(f)
  alphas = np.array([rng.uniform(*LUMA_ALPHA), rng.uniform(*CHROMA_ALPHA),
                     rng.uniform(*CHROMA_ALPHA), rng.uniform(*DETAIL_ALPHA)],
                    np.float32)
  amp = np.exp(-alphas[:, None, None] * logf[None]) * orient[None]
  amp[:, 0, 0] = 0.0
  shape = amp.shape
  spec = (rng.standard_normal(shape, dtype=np.float32)
          + 1j * rng.standard_normal(shape, dtype=np.float32)) * amp
  fields = np.fft.irfft2(spec.astype(np.complex64), s=(h, w)).astype(np.float32)
  fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-8
  return fields


def _texture(rng, fields, scale, rows=slice(None), cols=slice(None)):
  """RGB texture from the fields, shifted and flipped (a new-looking patch),
  at image rows / cols (slices)."""
  _, h, w = fields.shape
  r = np.arange(h)[rows]
  c = np.arange(w)[cols]
  if rng.random() < 0.5:
    r = h - 1 - r
  if rng.random() < 0.5:
    c = w - 1 - c
  r = (r + int(rng.integers(h))) % h
  c = (c + int(rng.integers(w))) % w
  t = fields[:3][:, r[:, None], c[None, :]]
  mix = _OPPONENT * np.array([1.0, rng.uniform(0.2, 0.6),
                              rng.uniform(0.2, 0.6)], np.float32)
  return np.einsum("ck,khw->chw", (mix * scale).astype(np.float32), t)


def generate_array(seed: int, split: str, index: int) -> Tuple[np.ndarray, int]:
  """The (H, W, 3) uint8 image and the label of example `index` of `split`."""
  rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
  label = int(rng.integers(NUM_CLASSES))
  w = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
  h = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
  y = np.arange(h, dtype=np.float32)[:, None]
  x = np.arange(w, dtype=np.float32)[None, :]
  size = min(h, w)

  fields = _pink_fields(rng, h, w)
  mean = rng.uniform(70, 170, size=(3, 1, 1)).astype(np.float32)
  img = mean + _texture(rng, fields, rng.uniform(*CONTRAST))

  # Objects, large to small (clutter): soft-edged ellipses with their own
  # colour and texture, straight edges (half planes) and windowed gratings.
  num = int(rng.integers(*OBJECTS))
  for k in range(num):
    kind = rng.random()
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    width = rng.uniform(0.5, 4.0)  # edge blur, pixels
    a = rng.uniform(0, np.pi)
    c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
    scale = 0.35 * (0.15 / 0.35) ** (k / max(1, num - 1))  # 0.35 -> 0.15
    if kind < 0.15 and k < 3:  # edge: half plane, whole image
      rows = cols = slice(None)
      mask = _sigmoid(((x - cx) * c + (y - cy) * s) / width)
    elif kind < 0.85:  # ellipse, in its bounding box
      rx, ry = (float(r) * size * scale for r in rng.uniform(0.3, 1.0, size=2))
      m = max(rx, ry) + 4 * width
      rows = slice(max(0, int(cy - m)), min(h, int(cy + m) + 1))
      cols = slice(max(0, int(cx - m)), min(w, int(cx + m) + 1))
      xx, yy = x[:, cols] - cx, y[rows] - cy
      u = (xx * c + yy * s) / rx
      v = (yy * c - xx * s) / ry
      d = (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)
      mask = _sigmoid(-d / width)
    else:  # grating in a soft window
      freq = rng.uniform(0.03, 0.25)  # cycles / pixel
      r = rng.uniform(0.3, 1.0) * size * scale
      rows = slice(max(0, int(cy - 3 * r)), min(h, int(cy + 3 * r) + 1))
      cols = slice(max(0, int(cx - 3 * r)), min(w, int(cx + 3 * r) + 1))
      xx, yy = x[:, cols] - cx, y[rows] - cy
      window = np.exp(-(xx * xx + yy * yy) / (2 * r * r))
      grating = np.cos(2 * np.pi * freq * (xx * c + yy * s)
                       + rng.uniform(0, 2 * np.pi))
      colour = rng.uniform(-50, 50, size=(3, 1, 1)).astype(np.float32)
      img[:, rows, cols] += colour * (window * grating)[None]
      continue
    fill = (rng.uniform(20, 235, size=(3, 1, 1)).astype(np.float32)
            + _texture(rng, fields,
                       rng.uniform(*CONTRAST) * rng.uniform(0.4, 1.0),
                       rows, cols))
    patch = img[:, rows, cols]
    patch += mask[None] * (fill - patch)

  # Fine detail where the scene is in focus: a nearly white texture under a
  # smooth mask (from the red-green field), the same in every channel.
  focus = _sigmoid(2.0 * fields[1] + rng.uniform(*FOCUS_BIAS))
  detail = np.tanh(rng.uniform(*DETAIL_SHARPNESS) * fields[3])
  img += (rng.uniform(*DETAIL) * focus * detail)[None]

  # Colour balance, contrast about the mean, sensor noise.
  gains = rng.uniform(0.8, 1.2, size=(3, 1, 1)).astype(np.float32)
  m = img.mean(axis=(1, 2), keepdims=True)
  img = (m + (img - m) * rng.uniform(0.8, 1.2)) * gains
  img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(*NOISE)
  img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
  return np.ascontiguousarray(img.transpose(1, 2, 0)), label


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  from PIL import Image  # pillow: a matplotlib dependency
  buf = io.BytesIO()
  Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def file_name(split: str, index: int, label: int) -> str:
  """ImageNet-style names: "n00000417_12.JPEG" (train),
  "ILSVRC2012_val_00000013.JPEG" (validation)."""
  if split == "train":
    return f"n{label:08d}_{index}.JPEG"
  return f"ILSVRC2012_val_{index + 1:08d}.JPEG"


def generate_example(seed: int, split: str, index: int) -> Dict[str, object]:
  """Example `index` of `split`: {"image": JPEG bytes, "label", "file_name"}."""
  image, label = generate_array(seed, split, index)
  return {"image": encode_jpeg(image), "label": label,
          "file_name": file_name(split, index, label)}


# ---------------------------------------------------------------------------
# The TFDS builder.


class ImagenetLikeConfig(tfds.core.BuilderConfig):
  """num_train / num_validation images generated from `seed`."""

  def __init__(self, *, num_train: int, num_validation: Optional[int] = None,
               seed: int = 0, **kwargs):
    if num_validation is None:
      num_validation = default_num_validation(num_train)
    kwargs.setdefault("name", config_name(num_train, num_validation, seed))
    kwargs.setdefault(
        "description",
        f"{num_train} train / {num_validation} validation images, seed {seed}.")
    super().__init__(**kwargs)
    self.num_train = int(num_train)
    self.num_validation = int(num_validation)
    self.seed = int(seed)


def config_from_name(name: str) -> Optional[ImagenetLikeConfig]:
  m = _NAME_RE.match(name)
  if not m:
    return None
  n, v, s = m.groups()
  return ImagenetLikeConfig(num_train=int(n),
                            num_validation=None if v is None else int(v),
                            seed=int(s or 0))


class ImagenetLike(tfds.core.GeneratorBasedBuilder):
  """ImageNet-sized synthetic JPEGs, 1000 classes, N chosen by the config."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ImagenetLikeConfig(num_train=n) for n in (40, 1000, 2000, 10000, 50000)]
  DEFAULT_BUILDER_CONFIG_NAME = "n2000"
  _dynamic_configs: Dict[str, ImagenetLikeConfig] = {}

  @classmethod
  def get_builder_config(cls, name, version=None):
    """Listed configs, or any "n<N>[_v<M>][_s<S>]" name made on demand (one
    object per name: TFDS compares configs by identity)."""
    config = super().get_builder_config(name, version)
    if config is None and version in (None, str(cls.VERSION), cls.VERSION):
      config = cls._dynamic_configs.get(name)
      if config is None:
        config = config_from_name(name)
        if config is not None and config.name == name:  # canonical names only
          cls._dynamic_configs[name] = config
        else:
          config = None
    return config

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.image-net.org/",  # what it imitates
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "validation": self._generate_examples("validation",
                                                  c.num_validation)}

  def _generate_examples(self, split: str, num: int):
    seed = self.builder_config.seed
    for i in range(num):
      example = generate_example(seed, split, i)
      yield example["file_name"], example


def builder(num_train: int, num_validation: Optional[int] = None,
            seed: int = 0, data_dir: Optional[str] = None):
  """The (unprepared) builder for these sizes:
  tfds.builder("imagenet_like/n...")."""
  return tfds.builder(
      f"imagenet_like/{config_name(num_train, num_validation, seed)}",
      data_dir=data_dir)


def prepare(num_train: int, num_validation: Optional[int] = None,
            seed: int = 0, data_dir: Optional[str] = None,
            file_format: str = "tfrecord"):
  """Generates the set into data_dir (once: cached) and returns its builder.
  file_format: "tfrecord" (tf.data, builder.as_dataset) or "array_record"
  (random access, tfds.data_source / builder.as_data_source, Grain). A set
  already prepared in the other format gets this one added (download_and_prepare
  alone would silently reuse the other)."""
  b = builder(num_train, num_validation, seed, data_dir)
  b.download_and_prepare(file_format=file_format)
  file_formats.sync_file_formats(b)
  if (tfds.core.FileFormat.from_value(file_format)
      not in b.info.available_file_formats()):
    file_formats.add_file_format(b, file_format)
  return b
