"""How well a detection score predicts localization: score vs IoU with the ground truth.

The IoU-aware paper's premise (Sec. 1) is that a single-stage detector's classification
score correlates poorly with its boxes' IoU. These pure NumPy functions measure that
correlation on final detections: each detection's IoU with its best-matching ground
truth box of the same class and image, then Pearson and Spearman correlation between
the scores and those IoUs over all detections.

Boxes here are in original-image pixels: detections as COCO results (`bbox` [x, y, w,
h]) and ground truth as a COCO dict, as `jaxdet.evaluation.evaluator` produces them.
"""

import collections

import numpy as np
from scipy import stats


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise IoU of `a [N, 4]` and `b [M, 4]` ([x1, y1, x2, y2] px) -> `[N, M]`.

  Pairs involving a zero-area box have IoU 0.
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)[:, None]
  b = np.asarray(b, np.float64).reshape(-1, 4)[None]
  w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
  h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
  inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
  area = lambda x: (np.maximum(x[..., 2] - x[..., 0], 0.0)
                    * np.maximum(x[..., 3] - x[..., 1], 0.0))
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def best_match_ious(det_boxes: np.ndarray, det_classes: np.ndarray,
                    gt_boxes: np.ndarray, gt_classes: np.ndarray) -> np.ndarray:
  """Each detection's IoU with its best-overlapping ground truth of the same class.

  Args:
    det_boxes: [N, 4] detections of one image, [x1, y1, x2, y2] px.
    det_classes: [N] their classes (any comparable ids).
    gt_boxes: [M, 4] ground truth of the same image.
    gt_classes: [M].
  Returns:
    [N] float64 IoUs; 0 where the image has no ground truth of that class.
  """
  det_classes, gt_classes = np.asarray(det_classes), np.asarray(gt_classes)
  if len(det_classes) == 0 or len(gt_classes) == 0:
    return np.zeros(len(det_classes))
  iou = box_iou(det_boxes, gt_boxes)
  same_class = det_classes[:, None] == gt_classes[None, :]
  return np.max(np.where(same_class, iou, 0.0), axis=1)


def xywh_to_xyxy(boxes) -> np.ndarray:
  """COCO [x, y, w, h] boxes (any [..., 4] nesting) -> [N, 4] [x1, y1, x2, y2] float64."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def detection_ious(results: list[dict], ground_truth: dict,
                   include_crowd: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Scores and best-match IoUs of COCO-format detections.

  Args:
    results: COCO result dicts (image_id, category_id, bbox [x, y, w, h], score).
    ground_truth: COCO dict with 'annotations' (image_id, category_id, bbox, iscrowd).
    include_crowd: also match crowd regions (and VOC difficult objects, which jaxdet's
      ground truth marks as crowd). Off by default: they are not objects a detection
      is scored against.
  Returns:
    (scores [N], ious [N]) float64, in the order of `results`.
  """
  gt = collections.defaultdict(lambda: ([], []))
  for ann in ground_truth['annotations']:
    if include_crowd or not ann.get('iscrowd', 0):
      boxes, classes = gt[ann['image_id']]
      boxes.append(ann['bbox'])
      classes.append(ann['category_id'])
  by_image = collections.defaultdict(list)
  for i, det in enumerate(results):
    by_image[det['image_id']].append(i)
  scores = np.array([det['score'] for det in results], np.float64)
  ious = np.zeros(len(results))
  for image_id, index in by_image.items():
    boxes, classes = gt[image_id] if image_id in gt else ([], [])
    ious[index] = best_match_ious(
        xywh_to_xyxy([results[i]['bbox'] for i in index]),
        [results[i]['category_id'] for i in index], xywh_to_xyxy(boxes), classes)
  return scores, ious


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two [N] arrays; NaN if N < 2 or either is constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2:
    return float('nan')
  dx, dy = x - x.mean(), y - y.mean()
  norm = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
  return float(np.sum(dx * dy) / norm) if norm > 0 else float('nan')


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation: Pearson of the ranks (ties share their mean rank)."""
  return pearson(stats.rankdata(x), stats.rankdata(y))


def correlation_summary(scores: np.ndarray, ious: np.ndarray) -> dict:
  """{'pearson', 'spearman', 'num_detections', 'mean_iou'} of scores vs IoUs.

  Correlations are None (JSON null) where undefined (fewer than 2 detections or a
  constant input).
  """
  finite = lambda v: v if np.isfinite(v) else None
  return dict(pearson=finite(pearson(scores, ious)),
              spearman=finite(spearman(scores, ious)),
              num_detections=int(len(scores)),
              mean_iou=float(np.mean(ious)) if len(ious) else None)
