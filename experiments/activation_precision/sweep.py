"""ReLU6 vs ReLU after the expansion and depthwise layers (and the stem and
head), as float, int8 PTQ and int8 QAT: the MobileNetV2 paper's reason for
ReLU6, "its robustness when used with low-precision computation"."""

from experiments import sweeps


def get_sweep():
  variants, precision = sweeps.with_precisions(
      {act: {"model.activation": act} for act in ("relu6", "relu")})
  return dict(
      name="activation_precision",
      question="Is ReLU6 more robust than ReLU at low precision (the MobileNetV2 "
               "paper's reason for it)?",
      base=sweeps.base_config(), variants=variants, precision=precision,
      compare_to="relu6", notes=sweeps.QUANTIZATION_NOTES + sweeps.NOTES,
      seeds=sweeps.V2_SEEDS, plot="precision")
