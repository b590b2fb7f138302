"""COCO box AP with pycocotools, plus AP at each single IoU threshold 0.5-0.95."""

import contextlib
import io
import logging

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCO's ten IoU thresholds; AP at each one is reported as AP50 ... AP95.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
SINGLE_IOU_NAMES = tuple(f'AP{round(t * 100)}' for t in IOU_THRESHOLDS)
# The summary's six first (AP50 and AP75 are also single-threshold APs), then the rest of
# the single thresholds: AP60-AP90 in their historical order, then AP55, AP65, AP85, AP95.
METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AP60', 'AP70', 'AP80', 'AP90',
                'AP55', 'AP65', 'AP85', 'AP95')


def coco_api(ground_truth: dict) -> COCO:
  """A pycocotools COCO object from a COCO-format dict, without its prints."""
  coco = COCO()
  coco.dataset = ground_truth
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _ap_at_iou(coco_eval: COCOeval, iou: float) -> float:
  """AP over all areas, 100 detections, at one IoU threshold (-1 where undefined)."""
  t = int(np.argmin(np.abs(coco_eval.params.iouThrs - iou)))
  precision = coco_eval.eval['precision'][t, :, :, 0, -1]
  precision = precision[precision > -1]
  return float(precision.mean()) if precision.size else -1.0


def coco_metrics(ground_truth: dict, detections: list[dict], image_ids=None) -> dict:
  """pycocotools bbox evaluation.

  Args:
    ground_truth: COCO-format dict (images, annotations, categories).
    detections: COCO result dicts {image_id, category_id, bbox [x, y, w, h], score}
      in original-image pixels.
    image_ids: images to evaluate (default: every image of `ground_truth`).
  Returns:
    {name: value} for METRIC_NAMES, values in [0, 1] (AP of 0 with no detections).
  """
  coco_gt = coco_api(ground_truth)
  if not detections:
    logging.warning('No detections: every AP is 0.')
    return {name: 0.0 for name in METRIC_NAMES}
  with contextlib.redirect_stdout(io.StringIO()):
    coco_dt = coco_gt.loadRes(detections)
  coco_eval = COCOeval(coco_gt, coco_dt, 'bbox')
  if image_ids is not None:
    coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
  summary = io.StringIO()
  with contextlib.redirect_stdout(summary):
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  logging.info('COCO evaluation:\n%s', summary.getvalue())
  stats = coco_eval.stats
  metrics = dict(zip(METRIC_NAMES[:6], (float(s) for s in stats[:6])))
  for iou, name in zip(IOU_THRESHOLDS, SINGLE_IOU_NAMES):
    metrics.setdefault(name, _ap_at_iou(coco_eval, iou))
  return metrics
