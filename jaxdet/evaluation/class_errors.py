"""Which class a detector gives each object: the top-scoring detection on each ground
truth box, and the confusion matrix of those classes.

COCO AP mixes localization and classification. On an object the detector does find,
this asks one question: is the highest-scoring detection that overlaps it (IoU >=
0.5, any class) of the right class? Pure NumPy over COCO-format inputs (detections as
COCO results with `bbox` [x, y, w, h] px, ground truth as a COCO dict), as
`jaxdet.evaluation.evaluator` writes them; crowd boxes are left out.
"""

import collections

import numpy as np

from jaxdet.evaluation.score_iou import box_iou, xywh_to_xyxy

MISSED = -1  # top_classes entry of an object no detection overlaps enough


def top_detection_classes(detections: list[dict], ground_truth: dict,
                          iou_threshold: float = 0.5) -> tuple[np.ndarray, ...]:
  """For every non-crowd ground-truth box, the class and score of the highest-scoring
  detection of any class whose IoU with it is >= `iou_threshold`.

  Returns:
    (gt_classes [N], top_classes [N], top_scores [N]): category ids, `MISSED` and 0.0
    where no detection overlaps enough. N = non-crowd boxes, in annotation order.
  """
  objects = [a for a in ground_truth['annotations'] if not a.get('iscrowd', 0)]
  gt_classes = np.array([a['category_id'] for a in objects], np.int64)
  top_classes = np.full(len(objects), MISSED, np.int64)
  top_scores = np.zeros(len(objects), np.float64)
  dets_of = collections.defaultdict(list)
  for d in detections:
    dets_of[d['image_id']].append(d)
  objects_of = collections.defaultdict(list)
  for k, a in enumerate(objects):
    objects_of[a['image_id']].append(k)
  for image_id, index in objects_of.items():
    dets = dets_of.get(image_id)
    if not dets:
      continue
    # One IoU matrix per image: [objects, detections].
    iou = box_iou(xywh_to_xyxy([objects[k]['bbox'] for k in index]),
                  xywh_to_xyxy([d['bbox'] for d in dets]))
    scores = np.array([d['score'] for d in dets], np.float64)
    overlapping = np.where(iou >= iou_threshold, scores[None], 0.0)
    best = np.argmax(overlapping, axis=1)
    for k, j, found in zip(index, best, overlapping.max(axis=1) > 0):
      if found:
        top_classes[k], top_scores[k] = dets[j]['category_id'], scores[j]
  return gt_classes, top_classes, top_scores


def confusion_matrix(gt_classes: np.ndarray, top_classes: np.ndarray,
                     category_ids: list[int]) -> np.ndarray:
  """[C, C + 1] counts: row = ground-truth class, column = class of the top detection
  (in `category_ids` order), last column = missed."""
  index = {c: i for i, c in enumerate(category_ids)}
  c = len(category_ids)
  matrix = np.zeros((c, c + 1), np.int64)
  for g, t in zip(gt_classes, top_classes):
    matrix[index[int(g)], c if t == MISSED else index[int(t)]] += 1
  return matrix


def summary(matrix: np.ndarray, names: list[str]) -> dict:
  """Accuracy of the top detection's class over all objects and per class (missed
  objects count as wrong), the found fraction, and the most frequent confusions."""
  c = len(names)
  totals = matrix.sum(1)
  correct = np.diag(matrix[:, :c])
  pairs = [(int(matrix[i, j]), names[i], names[j])
           for i in range(c) for j in range(c) if i != j and matrix[i, j]]
  return dict(
      num_objects=int(totals.sum()),
      accuracy=float(correct.sum() / max(totals.sum(), 1)),
      found=float(matrix[:, :c].sum() / max(totals.sum(), 1)),
      per_class={n: float(correct[i] / max(totals[i], 1)) for i, n in enumerate(names)},
      top_confusions=[dict(truth=t, called=p, count=k)
                      for k, t, p in sorted(pairs)[::-1][:10]])
