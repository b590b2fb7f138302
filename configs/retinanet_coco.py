"""RetinaNet R50-FPN 1x on COCO 2017.

The baseline of the IoU-aware paper (papers/iou_aware_single_stage.md, Sec. 4.1 and the
RetinaNet rows of Table 1): 1333x800, 16 images per batch, lr 0.01, 12 epochs with drops
at 8 and 11, focal loss (alpha 0.25, gamma 2), Smooth L1 (beta 0.11).

  python train.py --config=configs/retinanet_coco.py --workdir=DIR
  python train.py --config=configs/retinanet_coco.py:smoke --workdir=DIR   # tiny, CPU
"""

from jaxdet import config_base


def get_config(arg: str | None = None):
  c = config_base.retinanet_config()
  c.data.source = 'tfds_coco'
  c.data.num_classes = 80
  c.data.short_side, c.data.max_size = 800, 1333
  # Static canvas: either orientation of a 1333x800 image fits.
  c.data.image_size = (1344, 1344)
  c.data.max_boxes = 100
  if arg == 'smoke':
    config_base.make_smoke(c)
  return c
