"""A PyTorch MobileNet of the same architecture, as the peer.

On CPU: torchvision's layer plan written here (V1 and V2; batch norm epsilon
1e-3 and momentum 0.01; ReLU6; widths rounded as Keras rounds them),
channels_last, eager, fp32 (bf16 autocast with --amp): the settings of the
peer measurements in docs/design.md ("Peers at the start"). On a GPU: timm's
`mobilenetv2_100` / `mobilenetv1_100` in channels_last with bf16 autocast,
eager and torch.compile, the better of the two reported. Both: RMSprop(lr
0.01, alpha 0.9, momentum 0.9), cross-entropy, one random batch held on the
device.
"""

import torch
import torch.nn as nn

from mobilenet_jax.peers import emit, parse_args
from mobilenet_jax.timing import summarize, time_steps


def make_divisible(v, divisor=8):
  n = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return n + divisor if n < 0.9 * v else n


def conv_bn(i, o, k=3, s=1, groups=1, act=True):
  layers = [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(o, eps=1e-3, momentum=0.01)]
  return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
  def __init__(self, i, o, s, t):
    super().__init__()
    hidden = i * t
    self.residual = s == 1 and i == o
    self.f = nn.Sequential(*([conv_bn(i, hidden, 1)] if t != 1 else []),
                           conv_bn(hidden, hidden, 3, s, hidden),
                           conv_bn(hidden, o, 1, act=False))

  def forward(self, x):
    return x + self.f(x) if self.residual else self.f(x)


def mobilenet_v2(alpha=1.0, classes=1000):
  c = make_divisible(32 * alpha)
  layers = [conv_bn(3, c, 3, 2)]
  for t, ch, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
    for k in range(n):
      out = make_divisible(ch * alpha)
      layers.append(InvertedResidual(c, out, s if k == 0 else 1, t))
      c = out
  last = make_divisible(1280 * max(1.0, alpha))
  layers.append(conv_bn(c, last, 1))
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(last, classes))


def mobilenet_v1(alpha=1.0, classes=1000):
  c = int(32 * alpha)
  layers = [conv_bn(3, c, 3, 2)]
  for ch, s in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + \
      [(512, 1)] * 5 + [(1024, 2), (1024, 1)]:
    out = int(ch * alpha)
    layers += [conv_bn(c, c, 3, s, c), conv_bn(c, out, 1)]
    c = out
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(c, classes))


def build(name, alpha, gpu):
  if gpu:
    import timm
    timm_name = {"mobilenet_v2": "mobilenetv2", "mobilenet_v1": "mobilenetv1"}[name]
    return timm.create_model(f"{timm_name}_{round(alpha * 100):03d}",
                             num_classes=1000), f"timm {timm.__version__}"
  return (mobilenet_v2 if name == "mobilenet_v2" else mobilenet_v1)(alpha), "hand-written"


def measure(model, args, device, amp, compiled):
  x = torch.rand(args.batch_size, 3, args.image_size, args.image_size,
                 device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (args.batch_size,), device=device)
  opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, momentum=0.9)
  loss_fn = nn.CrossEntropyLoss()
  net = torch.compile(model) if compiled else model
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=amp)

  def train():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    sync()

  def infer():
    with torch.inference_mode(), autocast():
      net(x)
    sync()

  out = {}
  if args.mode in ("train", "both"):
    model.train()
    out["train"] = summarize(time_steps(train, args.warmup, args.steps), args.batch_size)
  if args.mode in ("infer", "both"):
    model.eval()
    out["infer"] = summarize(time_steps(infer, args.warmup, args.steps), args.batch_size)
  return out


def main():
  args = parse_args([(("--amp",), {"action": "store_true",
                                   "help": "bf16 autocast (default on a GPU)"})])
  gpu = torch.cuda.is_available()
  device = "cuda" if gpu else "cpu"
  model, source = build(args.model, args.alpha, gpu)
  model = model.to(device).to(memory_format=torch.channels_last)
  amp = args.amp or gpu
  result = {"peer": "torch", "framework": f"torch {torch.__version__} ({source})",
            "params": sum(p.numel() for p in model.parameters()), "amp_bf16": amp}
  variants = {"eager": measure(model, args, device, amp, compiled=False)}
  if gpu:  # torch.compile is the fast path on a GPU; on CPU it is not faster
    variants["compile"] = measure(model, args, device, amp, compiled=True)
  for mode in ("train", "infer"):
    best = max((v for v in variants.values() if mode in v),
               key=lambda v: v[mode]["img_per_s"], default=None)
    if best is not None:
      result[mode] = best[mode]
      result[f"{mode}_variant"] = next(k for k, v in variants.items() if v is best)
  emit(result)


if __name__ == "__main__":
  main()
