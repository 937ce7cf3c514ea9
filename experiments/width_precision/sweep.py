"""Width x precision: MobileNetV2 at alpha 0.35 / 0.5 / 1.0 as float and as
int8 after post-training quantization, per-tensor and per-channel weights:
thin depthwise layers are where per-tensor scales are expected to hurt
(Krishnamoorthi 2018)."""

from experiments import sweeps


def get_sweep():
  variants = {f"alpha_{alpha}": {"model.alpha": alpha, "ptq_eval": sweeps.PTQ}
              for alpha in (0.35, 0.5, 1.0)}
  return dict(
      name="width_precision",
      question="Do thinner MobileNetV2s lose more top-1 to int8 post-training "
               "quantization with per-tensor weights?",
      base=sweeps.base_config(), variants=variants, precision=dict(qat={}),
      compare_to="alpha_1.0", notes=sweeps.QUANTIZATION_NOTES[:1] + sweeps.NOTES,
      seeds=sweeps.V2_SEEDS, plot="precision")
