"""PASCAL VOC2007 mAP at IoU 0.5 with the 11-point interpolated AP of the VOC07 devkit."""

import collections

import numpy as np


def _iou_one_to_many(box, boxes):
  """IoU of box [4] with boxes [N, 4], xyxy continuous coordinates."""
  lt = np.maximum(box[:2], boxes[:, :2])
  rb = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
  """11-point interpolated AP: mean over r in {0, 0.1, ..., 1} of max precision at >= r."""
  ap = 0.0
  for t in np.arange(0.0, 1.1, 0.1):
    p = precision[recall >= t]
    ap += (p.max() if p.size else 0.0) / 11.0
  return float(ap)


def voc07_map(ground_truth: dict, detections: list[dict], iou_threshold: float = 0.5) -> float:
  """Mean over categories of VOC07 AP.

  Args:
    ground_truth: COCO-format dict; annotations with iscrowd=1 are VOC "difficult"
      objects: matching them is neither a true nor a false positive.
    detections: COCO result dicts (bbox [x, y, w, h]).
  Returns:
    mAP in [0, 1] over the categories that have at least one non-difficult object.
  """
  xyxy = lambda b: np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], np.float64)
  gts = collections.defaultdict(list)  # (image, category) -> [(box, difficult)]
  for a in ground_truth['annotations']:
    gts[a['image_id'], a['category_id']].append((xyxy(a['bbox']), bool(a.get('iscrowd', 0))))
  aps = []
  for cat in sorted(c['id'] for c in ground_truth['categories']):
    num_pos = sum(not d for (img, c), objs in gts.items() if c == cat for _, d in objs)
    if num_pos == 0:
      continue
    dets = sorted((d for d in detections if d['category_id'] == cat),
                  key=lambda d: -d['score'])
    used = {}
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for i, d in enumerate(dets):
      objs = gts.get((d['image_id'], cat), [])
      if not objs:
        fp[i] = 1
        continue
      ious = _iou_one_to_many(xyxy(d['bbox']), np.stack([b for b, _ in objs]))
      j = int(np.argmax(ious))
      flags = used.setdefault((d['image_id'], cat), np.zeros(len(objs), bool))
      if ious[j] < iou_threshold:
        fp[i] = 1
      elif objs[j][1]:
        continue  # difficult: ignored
      elif not flags[j]:
        tp[i], flags[j] = 1, True
      else:
        fp[i] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_pos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    aps.append(voc07_ap(recall, precision))
  return float(np.mean(aps)) if aps else 0.0
