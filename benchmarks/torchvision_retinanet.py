"""Times torchvision's RetinaNet R50-FPN, as a reference for jaxdet's step time.

Not part of jaxdet and not a dependency: run it with a separate torch environment,
  /work/torchenv/bin/python benchmarks/torchvision_retinanet.py [--size 512] [--inference]
It prints one JSON line: {"framework": "torchvision", "images_per_s": ..., "step_s": ...}.

Train mode times the whole step: forward with targets -> loss -> backward -> SGD step.
Images are height x size (height defaults to size), with the transform's min_size and
max_size set so that it keeps their size (it still normalizes and batches them, as in
real training). On a GPU (--device cuda) --bf16 runs the step under bfloat16 autocast,
torch's mixed precision, the counterpart of jaxdet's model.dtype=bfloat16.

--match_jaxdet builds the network jaxdet's default config describes instead of the
torchvision builder's untrained default (trainable BatchNorm, whole backbone trained,
P6 from P5): FrozenBatchNorm, stem + layer1 frozen (jaxdet freeze_at=1), P6 from C5.
"""

import argparse
import json
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import retinanet as tv_retinanet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def build_model(args):
  """torchvision RetinaNet R50-FPN, untrained."""
  height = args.height or args.size
  common = dict(num_classes=args.num_classes, min_size=min(height, args.size),
                max_size=max(height, args.size))
  if not args.match_jaxdet:
    return tv_retinanet.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, **common)
  backbone = resnet_fpn_backbone(
      backbone_name='resnet50', weights=None, norm_layer=misc_ops.FrozenBatchNorm2d,
      trainable_layers=3, returned_layers=[2, 3, 4],
      extra_blocks=LastLevelP6P7(2048, 256))
  return tv_retinanet.RetinaNet(backbone, **common)


def make_batch(args, generator):
  """`batch` random images [3,H,W] in [0,1] and targets with a few random boxes each."""
  height = args.height or args.size
  hw = torch.tensor([args.size, height], dtype=torch.float32)
  images, targets = [], []
  for _ in range(args.batch):
    images.append(torch.rand(3, height, args.size, generator=generator).to(args.device))
    xy = torch.rand(args.boxes, 2, generator=generator) * hw * 0.7
    wh = (torch.rand(args.boxes, 2, generator=generator) * 0.25 + 0.05) * hw
    boxes = torch.cat([xy, torch.minimum(xy + wh, hw)], dim=1)
    labels = torch.randint(1, args.num_classes, (args.boxes,), generator=generator)
    targets.append(dict(boxes=boxes.to(args.device), labels=labels.to(args.device)))
  return images, targets


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', type=int, default=512, help='image width (px)')
  parser.add_argument('--height', type=int, default=0, help='image height; 0: --size')
  parser.add_argument('--device', default='cpu', help='cpu | cuda')
  parser.add_argument('--bf16', action='store_true', help='bfloat16 autocast (GPU)')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--num_classes', type=int, default=91)
  parser.add_argument('--boxes', type=int, default=5, help='objects per image')
  parser.add_argument('--inference', action='store_true', help='time eval forward')
  parser.add_argument('--match_jaxdet', action='store_true')
  args = parser.parse_args()

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = build_model(args).to(args.device)
  images, targets = make_batch(args, torch.Generator().manual_seed(0))

  autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
  sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)

  if args.inference:
    model.eval()

    def step():
      with torch.inference_mode(), autocast:
        model(images)
      sync()
  else:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
      with autocast:
        losses = model(images, targets)
        loss = sum(losses.values())
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      sync()

  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)

  step_s = statistics.mean(times)
  print(json.dumps(dict(
      framework='torchvision', mode='inference' if args.inference else 'train',
      match_jaxdet=args.match_jaxdet, size=args.size, height=args.height or args.size,
      batch=args.batch, device=args.device, bf16=args.bf16,
      threads=args.threads, steps=args.steps,
      images_per_s=round(args.batch / step_s, 4), step_s=round(step_s, 4),
      step_s_min=round(min(times), 4), step_s_median=round(statistics.median(times), 4),
      torch=torch.__version__, torchvision=torchvision.__version__)))


if __name__ == '__main__':
  main()
