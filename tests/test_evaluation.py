"""COCO / VOC metric wrappers and the conversion of fixed-size detections."""

import numpy as np
import pytest

from jaxdet.evaluation import coco as coco_lib
from jaxdet.evaluation import evaluator
from jaxdet.evaluation import voc as voc_lib


def _ground_truth():
  images = [dict(id=i, width=100, height=80, file_name=f'{i}.png') for i in (1, 2)]
  anns = [
      dict(id=1, image_id=1, category_id=3, bbox=[10, 10, 30, 20], area=600, iscrowd=0),
      dict(id=2, image_id=1, category_id=7, bbox=[50, 40, 40, 30], area=1200, iscrowd=0),
      dict(id=3, image_id=2, category_id=3, bbox=[0, 0, 60, 60], area=3600, iscrowd=0),
  ]
  cats = [dict(id=3, name='a'), dict(id=7, name='b')]
  return dict(images=images, annotations=anns, categories=cats)


def _as_result(ann, score=0.9, shift=0.0):
  x, y, w, h = ann['bbox']
  return dict(image_id=ann['image_id'], category_id=ann['category_id'],
              bbox=[x + shift, y, w, h], score=score)


def test_perfect_detections_score_one():
  gt = _ground_truth()
  m = coco_lib.coco_metrics(gt, [_as_result(a) for a in gt['annotations']])
  assert set(m) == set(coco_lib.METRIC_NAMES)
  for name in ('AP', *coco_lib.SINGLE_IOU_NAMES):
    assert m[name] == pytest.approx(1.0), name


def test_no_detections_is_zero_not_an_error():
  m = coco_lib.coco_metrics(_ground_truth(), [])
  assert m['AP'] == 0.0 and set(m) == set(coco_lib.METRIC_NAMES)


def test_shifted_box_fails_high_iou_thresholds_only():
  gt = _ground_truth()
  dets = [_as_result(a) for a in gt['annotations'][1:]]
  # IoU of a 30x20 box shifted by 4 px in x: 26*20 / (2*600 - 520) = 0.765.
  dets.append(_as_result(gt['annotations'][0], score=0.5, shift=4.0))
  m = coco_lib.coco_metrics(gt, dets)
  for name in ('AP50', 'AP55', 'AP60', 'AP65', 'AP70', 'AP75'):
    assert m[name] == pytest.approx(1.0), name
  # Category 3 finds one of its two objects at 0.8 and 0.9, with precision 1: on
  # COCO's 101 recall points that is 51/101; category 7 keeps AP 1.
  assert m['AP80'] == pytest.approx((51 / 101 + 1.0) / 2)
  for name in ('AP85', 'AP90', 'AP95'):
    assert m[name] == pytest.approx(m['AP80']), name
  # AP is the mean over the ten thresholds: 6 at 1, 4 at (51/101 + 1) / 2.
  assert m['AP'] == pytest.approx((6 + 4 * m['AP80']) / 10)


def test_to_coco_results_maps_back_to_original_pixels():
  dets = dict(boxes=np.array([[[20., 10., 60., 50.], [0, 0, 1, 1]]]),
              scores=np.array([[0.8, 0.0]]), classes=np.array([[1, -1]]),
              valid=np.array([[True, False]]))
  batch = dict(image_id=np.array([5]), scale=np.array([2.0]),
               orig_size=np.array([[20, 25]]), valid=np.array([True]))
  (r,) = evaluator.to_coco_results(dets, batch, [3, 7])
  assert r['image_id'] == 5 and r['category_id'] == 7
  # /2 then clipped to the 25x20 (w x h) original image.
  np.testing.assert_allclose(r['bbox'], [10, 5, 15, 15])
  assert r['score'] == pytest.approx(0.8)


def test_padding_rows_give_no_results():
  dets = dict(boxes=np.ones((1, 2, 4)), scores=np.ones((1, 2)),
              classes=np.zeros((1, 2), int), valid=np.ones((1, 2), bool))
  batch = dict(image_id=np.array([-1]), scale=np.array([1.0]),
               orig_size=np.array([[8, 8]]), valid=np.array([False]))
  assert evaluator.to_coco_results(dets, batch, [1]) == []


def test_voc07_ap_eleven_points():
  # Precision 1 up to recall 0.5, nothing after: 6 of the 11 points have precision 1.
  ap = voc_lib.voc07_ap(np.array([0.25, 0.5]), np.array([1.0, 1.0]))
  assert ap == pytest.approx(6 / 11)


def test_voc07_map_difficult_ignored_and_duplicates_false():
  gt = _ground_truth()
  gt['annotations'].append(
      dict(id=4, image_id=2, category_id=7, bbox=[70, 10, 20, 20], area=400, iscrowd=1))
  dets = [_as_result(a) for a in gt['annotations']]  # includes the difficult one
  assert voc_lib.voc07_map(gt, dets) == pytest.approx(1.0)
  # A duplicate of a matched box, ranked below every true positive: precision at full
  # recall stays 1, so AP is unchanged; ranked first it costs category 3 precision.
  dup = _as_result(gt['annotations'][0], score=0.95)
  m = voc_lib.voc07_map(gt, dets + [dup])
  # Category 3: ranks TP(dup .95 counts as the TP), FP(.9 same box), TP(.9 other image).
  # precision at recall 1 = 2/3 -> AP3 = (6 * 1 + 5 * 2/3) / 11.
  assert m == pytest.approx(((6 + 5 * 2 / 3) / 11 + 1.0) / 2)
