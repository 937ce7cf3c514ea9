"""Bottleneck activation x precision: linear / ReLU6 / ReLU after the
projection (MobileNetV2 Fig. 6a), as float, int8 PTQ and int8 QAT."""

from experiments import sweeps


def get_sweep():
  variants, precision = sweeps.with_precisions(
      {act: {"model.bottleneck_activation": act} for act in ("linear", "relu6", "relu")})
  return dict(
      name="bottleneck_precision",
      question="Does the linear bottleneck's lead (MobileNetV2 Fig. 6a) hold in int8, "
               "after post-training quantization and after quantization-aware training?",
      base=sweeps.base_config(), variants=variants, precision=precision,
      compare_to="linear", notes=sweeps.QUANTIZATION_NOTES + sweeps.NOTES,
      seeds=sweeps.V2_SEEDS, plot="precision")
