"""The 8x8 handwritten digits that scikit-learn ships, as a TFDS dataset.

1,797 real images (UCI optical digits), 10 classes, bundled inside the
scikit-learn wheel: a real dataset that builds with no network. The split is
fixed: every fifth example (index % 5 == 0) is "test" (360), the rest "train"
(1,437). Pixels 0..16 are scaled to 0..255.
"""

import numpy as np
import tensorflow_datasets as tfds


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's load_digits() with a fixed train/test split."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "The same examples; prepared in ArrayRecord (read by index)."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples(test=False),
            "test": self._generate_examples(test=True)}

  def _generate_examples(self, test: bool):
    from sklearn.datasets import load_digits  # only needed to build
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    for i, (image, label) in enumerate(zip(images, digits.target)):
      if (i % 5 == 0) == test:
        yield i, {"image": image, "label": int(label)}
