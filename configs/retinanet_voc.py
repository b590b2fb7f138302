"""RetinaNet R50-FPN on PASCAL VOC 07+12 trainval, evaluated on VOC 2007 test.

Image scale [600, 1000] as in the IoU-aware paper's VOC experiments
(papers/iou_aware_single_stage.md, Sec. 4.1 and Table 5), other settings mmdetection's
defaults (retinanet_r50_fpn_1x_voc0712): 4 epochs over 07+12 repeated 3 times, i.e. 12
epochs here with the lr drop after 9, lr 0.01 for 16 images per batch.

  python train.py --config=configs/retinanet_voc.py --workdir=DIR
"""

from jaxdet import config_base


def get_config(arg: str | None = None):
  c = config_base.retinanet_config()
  c.data.source = 'tfds_voc'
  c.data.num_classes = 20
  c.data.short_side, c.data.max_size = 600, 1000
  c.data.image_size = (1024, 1024)
  c.data.max_boxes = 64
  c.train.epochs = 12.0
  c.train.lr_drop_epochs = (9.0,)
  if arg == 'smoke':
    config_base.make_smoke(c)
  return c
