"""RetinaNet on the built-in `shapes` dataset: the CPU default of the quick start.

Not a paper setting: a small ResNet-18-FPN with GroupNorm (trained from scratch, so no
frozen BN) sized to train and evaluate in a few minutes on 2 CPU cores. The detector
logic (anchors, assignment, focal loss, decoding) is the paper's.

  python train.py --config=configs/retinanet_shapes.py --workdir=workdirs/retinanet_shapes
  python train.py --config=configs/retinanet_shapes.py:smoke --workdir=/tmp/smoke
"""

from jaxdet import config_base


def get_config(arg: str | None = None):
  c = config_base.retinanet_config()
  shapes_retinanet(c)
  if arg == 'smoke':
    config_base.make_smoke(c)
  return c


def shapes_retinanet(c):
  """Sizes and schedule for `shapes` (shared by the other *_shapes configs)."""
  c.data.source = 'shapes'
  c.data.shapes.update(num_train=3000, num_val=300, image_size=128, seed=0)
  c.data.short_side, c.data.max_size = 128, 128
  c.data.image_size = (128, 128)
  c.data.max_boxes = 16
  c.model.backbone.update(depth=18, width=32, norm='gn', freeze_at=0)
  c.model.fpn.channels = 64
  c.model.head.update(channels=64, num_convs=4, norm='gn')
  c.model.anchors.octave_base_scale = 2.0
  # AdamW: from scratch and in a few thousand steps it gets much further than SGD.
  c.train.update(optimizer='adamw', batch_size=8, base_batch_size=8, base_lr=0.002,
                 weight_decay=1e-4, epochs=6.0, lr_drop_epochs=(4.5, 5.5),
                 warmup_steps=200, log_every=50, checkpoint_every=500)
  c.eval.update(batch_size=20)
  return c
