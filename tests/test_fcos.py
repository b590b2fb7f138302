"""FCOS (the MMMC baseline): points, ltrb coder, assignment (hand-built and against a
NumPy port of mmdetection's target code), centerness and GIoU quality targets, losses,
head and FPN, score fusion, configs, and an end-to-end smoke run through train.py."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from jaxdet import config_base
from jaxdet.assign import fcos as fcos_assign
from jaxdet.detectors import build_detector
from jaxdet.detectors import fcos as fcos_detector
from jaxdet.models import fcos as fcos_model
from jaxdet.models import fcos_head
from jaxdet.models import fpn as fpn_lib
from jaxdet.models import retina_head
from jaxdet.models import retinanet as retinanet_model
from jaxdet.ops import anchors as anchors_lib
from jaxdet.ops import boxes as box_ops

from tests import cli
from tests.test_train_e2e import logged

SHAPES_RANGES = ((-1, 32), (32, 64), (64, 128), (128, 256), (256, 1e8))


def _config(**loss):
  c = config_base.make_smoke(config_base.use_shapes(config_base.fcos_config()))
  c.assign.regress_ranges = SHAPES_RANGES
  c.loss.update(loss)
  return c


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _giou(a, b):
  """Aligned GIoU of [..., 4] float64 boxes."""
  iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
  ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  union = area(a) + area(b) - iw * ih
  cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
  ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
  return iw * ih / union - (cw * ch - union) / (cw * ch)


# ------------------------------------------------------------------ points and coder

def test_points_are_cell_centres_in_anchor_order():
  points, strides = anchors_lib.generate_points((40, 24), (8, 16))
  # P3: 5 x 3 cells, P4: 3 x 2 (ceil), row-major per level, levels ascending.
  assert points.shape == (15 + 6, 2) and points.dtype == np.float32
  np.testing.assert_array_equal(points[:4], [[4, 4], [12, 4], [20, 4], [4, 12]])
  np.testing.assert_array_equal(points[14], [20, 36])
  np.testing.assert_array_equal(points[15:], [[8, 8], [24, 8], [8, 24], [24, 24],
                                              [8, 40], [24, 40]])
  np.testing.assert_array_equal(strides, [8] * 15 + [16] * 6)
  # One point per anchor location: the centres of single-anchor RetinaNet anchors.
  anchors = anchors_lib.generate_anchors((40, 24), (8, 16), 1.0, 1, (1.0,), 0.5)
  np.testing.assert_allclose((anchors[:, :2] + anchors[:, 2:]) / 2, points)


def test_ltrb_round_trip_and_inside_sign():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 100, (50, 2, 2))
  boxes = np.concatenate([xy.min(1), xy.max(1)], -1).astype(np.float32)
  points = rng.uniform(0, 100, (50, 2)).astype(np.float32)
  ltrb = box_ops.encode_ltrb(jnp.asarray(boxes), jnp.asarray(points))
  want = np.stack([points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1],
                   boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]], -1)
  np.testing.assert_allclose(ltrb, want, atol=1e-5)
  np.testing.assert_allclose(box_ops.decode_ltrb(ltrb, jnp.asarray(points)), boxes,
                             atol=1e-4)
  inside = ((points[:, 0] > boxes[:, 0]) & (points[:, 0] < boxes[:, 2])
            & (points[:, 1] > boxes[:, 1]) & (points[:, 1] < boxes[:, 3]))
  assert 0 < inside.sum() < 50
  np.testing.assert_array_equal(np.all(np.asarray(ltrb) > 0, -1), inside)


# --------------------------------------------------------------------- assignment

def _assign(points, strides, ranges, boxes, mask, **kw):
  assign = jax.jit(functools.partial(fcos_assign.fcos_assign, **kw))
  out = assign(jnp.asarray(points, jnp.float32), jnp.asarray(strides, jnp.float32),
               jnp.asarray(ranges, jnp.float32), jnp.asarray(boxes, jnp.float32),
               jnp.asarray(mask))
  return {k: np.asarray(v) for k, v in out.items()}


def test_assign_inside_box_and_center_sampling_radius():
  box = [[[0, 0, 100, 100]]]
  # Stride 8, radius 1.5: the centre region is [38, 62]^2 (strict inside).
  points = [[50, 50], [38.5, 50], [37.9, 50], [50, 61.9], [50, 62], [99, 99], [100, 50],
            [-1, 50]]
  strides = [8] * 8
  ranges = [[-1, 1e8]] * 8
  got = _assign(points, strides, ranges, box, [[True]], center_sampling=True)
  np.testing.assert_array_equal(got['assign'], [[1, 1, 0, 1, 0, 0, 0, 0]])
  got = _assign(points, strides, ranges, box, [[True]], center_sampling=False)
  np.testing.assert_array_equal(got['assign'], [[1, 1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_allclose(got['ltrb'][0, 1], [38.5, 50, 61.5, 50])
  np.testing.assert_array_equal(got['ltrb'][0, 6:], 0.0)  # negatives: zero targets
  # The radius is in strides of the point's level: at stride 16 the region is [26, 74].
  got = _assign([[30, 50], [30, 50]], [8, 16], [[-1, 1e8]] * 2, box, [[True]],
                center_sampling=True)
  np.testing.assert_array_equal(got['assign'], [[0, 1]])
  got = _assign([[30, 50]], [16], [[-1, 1e8]], box, [[True]], center_radius=1.0)
  np.testing.assert_array_equal(got['assign'], [[0]])  # [34, 66] at radius 1


def test_assign_center_region_is_clipped_to_the_box():
  # A 10 x 6 box is smaller than the 24 x 24 region of stride 8: the box itself.
  box = [[[10, 10, 20, 16]]]
  points = [[19.5, 15.5], [20.5, 13], [15, 9.5], [11, 11]]
  got = _assign(points, [8] * 4, [[-1, 1e8]] * 4, box, [[True]])
  np.testing.assert_array_equal(got['assign'], [[1, 0, 0, 1]])
  np.testing.assert_allclose(got['ltrb'][0, 0], [9.5, 5.5, 0.5, 0.5])


def test_assign_level_by_regression_range():
  # The same location on three levels; the box's largest distance from it is 40 px.
  box = [[[10, 30, 90, 70]]]  # centre (50, 50): l = r = 40, t = b = 20
  points = [[50, 50]] * 3
  strides = [8, 16, 32]
  for ranges, want in [([[-1, 32], [32, 64], [64, 1e8]], [0, 1, 0]),
                       ([[-1, 40], [40, 64], [64, 1e8]], [1, 1, 0]),  # inclusive ends
                       ([[-1, 39.9], [40.1, 64], [64, 1e8]], [0, 0, 0])]:
    got = _assign(points, strides, ranges, box, [[True]])
    np.testing.assert_array_equal(got['assign'], [want])


def test_assign_smallest_area_padding_and_empty_images():
  points = [[50, 50], [20, 20], [80, 80]]
  strides, ranges = [8] * 3, [[-1, 1e8]] * 3
  boxes = [[[0, 0, 100, 100],     # big: contains all three points
            [40, 40, 60, 60],     # small: contains point 0
            [10, 10, 30, 30],     # contains point 1, area 400
            [12, 12, 32, 32],     # contains point 1, area 400 too: tie -> index 2
            [78, 78, 82, 82]],    # padding (mask False) around point 2, smaller
           [[0, 0, 100, 100]] * 5]
  mask = [[True, True, True, True, False], [False] * 5]
  got = _assign(points, strides, ranges, boxes, mask, center_sampling=False)
  np.testing.assert_array_equal(got['assign'], [[1, 1, 1], [0, 0, 0]])
  np.testing.assert_array_equal(got['matched_gt'], [[1, 2, 0], [0, 0, 0]])
  np.testing.assert_allclose(got['ltrb'][0], [[10, 10, 10, 10], [10, 10, 10, 10],
                                              [80, 80, 20, 20]])
  np.testing.assert_array_equal(got['ltrb'][1], 0.0)
  got = _assign(points, strides, ranges, np.zeros((2, 0, 4)), np.zeros((2, 0), bool))
  assert got['assign'].shape == (2, 3) and not got['assign'].any()


def _mmdet_targets(gt_bboxes, points, regress_ranges, num_points_per_lvl, strides,
                   center_sampling, radius):
  """NumPy port of mmdetection 2.x FCOSHead._get_target_single (one image, valid GT
  only). Returns (matched GT index or -1 [P], bbox_targets [P, 4])."""
  num_points, num_gts = points.shape[0], gt_bboxes.shape[0]
  if num_gts == 0:
    return np.full(num_points, -1), np.zeros((num_points, 4), np.float32)
  inf = np.float32(1e8)
  areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
  areas = np.repeat(areas[None], num_points, 0)
  regress_ranges = np.broadcast_to(regress_ranges[:, None, :], (num_points, num_gts, 2))
  gt = np.broadcast_to(gt_bboxes[None], (num_points, num_gts, 4))
  xs = np.broadcast_to(points[:, 0, None], (num_points, num_gts))
  ys = np.broadcast_to(points[:, 1, None], (num_points, num_gts))
  left, right = xs - gt[..., 0], gt[..., 2] - xs
  top, bottom = ys - gt[..., 1], gt[..., 3] - ys
  bbox_targets = np.stack((left, top, right, bottom), -1)
  if center_sampling:
    center_xs = (gt[..., 0] + gt[..., 2]) / 2
    center_ys = (gt[..., 1] + gt[..., 3]) / 2
    center_gts = np.zeros_like(gt)
    stride = np.zeros_like(center_xs)
    lvl_begin = 0
    for lvl_idx, num_points_lvl in enumerate(num_points_per_lvl):
      lvl_end = lvl_begin + num_points_lvl
      stride[lvl_begin:lvl_end] = strides[lvl_idx] * radius
      lvl_begin = lvl_end
    x_mins, y_mins = center_xs - stride, center_ys - stride
    x_maxs, y_maxs = center_xs + stride, center_ys + stride
    center_gts[..., 0] = np.where(x_mins > gt[..., 0], x_mins, gt[..., 0])
    center_gts[..., 1] = np.where(y_mins > gt[..., 1], y_mins, gt[..., 1])
    center_gts[..., 2] = np.where(x_maxs > gt[..., 2], gt[..., 2], x_maxs)
    center_gts[..., 3] = np.where(y_maxs > gt[..., 3], gt[..., 3], y_maxs)
    center_bbox = np.stack((xs - center_gts[..., 0], ys - center_gts[..., 1],
                            center_gts[..., 2] - xs, center_gts[..., 3] - ys), -1)
    inside_gt_bbox_mask = center_bbox.min(-1) > 0
  else:
    inside_gt_bbox_mask = bbox_targets.min(-1) > 0
  max_regress_distance = bbox_targets.max(-1)
  inside_regress_range = ((max_regress_distance >= regress_ranges[..., 0])
                          & (max_regress_distance <= regress_ranges[..., 1]))
  areas[inside_gt_bbox_mask == 0] = inf
  areas[inside_regress_range == 0] = inf
  min_area, min_area_inds = areas.min(1), areas.argmin(1)
  matched = np.where(min_area == inf, -1, min_area_inds)
  return matched, bbox_targets[np.arange(num_points), min_area_inds]


@pytest.mark.parametrize('center_sampling', [True, False])
def test_assign_matches_mmdetection_reference(center_sampling):
  rng = np.random.default_rng(1)
  image_size, strides = (128, 96), (8, 16, 32, 64, 128)
  points, point_strides = anchors_lib.generate_points(image_size, strides)
  per_level = anchors_lib.num_anchors_per_level(image_size, strides, 1)
  for regress_ranges in (SHAPES_RANGES, fcos_assign.COCO_REGRESS_RANGES):
    ranges = fcos_assign.point_ranges(regress_ranges, per_level)
    batch, num_gt = 4, 12
    size = np.exp(rng.uniform(np.log(4), np.log(120), (batch, num_gt, 2)))
    x1 = rng.uniform(-10, 96, (batch, num_gt))
    y1 = rng.uniform(-10, 128, (batch, num_gt))
    boxes = np.stack([x1, y1, x1 + size[..., 0], y1 + size[..., 1]], -1).astype(np.float32)
    mask = rng.uniform(size=(batch, num_gt)) < 0.8
    mask[-1] = False  # an image without ground truth
    got = _assign(points, point_strides, ranges, boxes, mask,
                  center_sampling=center_sampling, center_radius=1.5)
    for b in range(batch):
      valid = np.flatnonzero(mask[b])
      want_gt, want_ltrb = _mmdet_targets(boxes[b, valid], points, ranges, per_level,
                                          strides, center_sampling, 1.5)
      positive = want_gt >= 0
      np.testing.assert_array_equal(got['assign'][b], positive.astype(np.int32))
      np.testing.assert_array_equal(got['matched_gt'][b][positive],
                                    valid[want_gt[positive]])
      np.testing.assert_allclose(got['ltrb'][b][positive], want_ltrb[positive],
                                 atol=1e-4)
    assert got['assign'][:-1].sum() > 20  # a real test: many positives


def test_point_ranges_config_errors():
  np.testing.assert_array_equal(fcos_assign.point_ranges(((-1, 8), (8, 1e8)), [2, 1]),
                                [[-1, 8], [-1, 8], [8, 1e8]])
  for bad in (((-1, 8),), ((-1, 8), (8, 4)), ((0, 1, 2), (2, 3, 4))):
    with pytest.raises(ValueError, match='config.assign.regress_ranges'):
      fcos_assign.point_ranges(bad, [2, 1])


# ------------------------------------------------------------------ quality targets

def test_centerness_target_formula():
  ltrb = jnp.asarray([[10, 20, 30, 40], [5, 5, 5, 5], [1, 9, 9, 1], [0, 3, 4, 5],
                      [-1, 3, 4, 5], [0, 0, 0, 0]], jnp.float32)
  want = [np.sqrt(10 / 30 * 20 / 40), 1.0, np.sqrt(1 / 9 * 1 / 9), 0.0, 0.0, 0.0]
  np.testing.assert_allclose(fcos_assign.centerness_targets(ltrb), want, rtol=1e-6)


def test_giou_quality_target():
  pred = np.array([[0, 0, 10, 10],     # half overlap: IoU 1/3, no enclosure gap
                   [0, 0, 10, 10],     # disjoint: GIoU -1/3
                   [2, 2, 8, 8]], np.float32)  # inside: IoU 0.36
  gt = np.array([[5, 0, 15, 10], [20, 0, 30, 10], [0, 0, 10, 10]], np.float32)
  centerness = jnp.asarray([0.1, 0.2, 0.3])
  giou = [1 / 3, -1 / 3, 0.36]
  args = (jnp.asarray(pred), jnp.asarray(gt), centerness)
  np.testing.assert_allclose(fcos_detector.quality_targets('giou', *args, 'clamp'),
                             [1 / 3, 0.0, 0.36], rtol=1e-6)
  np.testing.assert_allclose(fcos_detector.quality_targets('giou', *args, 'rescale'),
                             (np.array(giou) + 1) / 2, rtol=1e-6)
  np.testing.assert_array_equal(fcos_detector.quality_targets('centerness', *args),
                                centerness)
  for stop in (True, False):
    grad = jax.grad(lambda p: fcos_detector.quality_targets(
        'giou', p, *args[1:], 'rescale', stop).sum())(args[0])
    assert np.all(grad == 0) == stop and np.all(np.isfinite(grad))


# ------------------------------------------------------------------------- losses

def _batch():
  boxes = np.array([[[10, 12, 60, 70], [70, 20, 120, 90], [0, 0, 0, 0]],
                    [[5, 50, 40, 120], [30, 30, 110, 110], [60, 60, 100, 90]]],
                   np.float32)
  return dict(boxes=jnp.asarray(boxes), labels=jnp.asarray([[0, 2, -1], [1, 1, 0]]),
              gt_mask=jnp.asarray([[True, True, False], [True, True, True]]))


@pytest.mark.parametrize('quality,weighting', [('giou', 'centerness'),
                                               ('centerness', 'none'),
                                               ('giou', 'quality')])
def test_loss_hand_computed(quality, weighting):
  c = _config(box_weighting=weighting, focal_alpha=0.25, focal_gamma=2.0,
              box_weight=1.5, quality_weight=0.7)
  c.model.head.quality = quality
  det = build_detector(c, num_classes=3)
  batch = _batch()
  num_points = det.points.shape[0]
  rng = np.random.default_rng(2)
  out = dict(cls_logits=jnp.asarray(rng.normal(-2, 2, (2, num_points, 3)), jnp.float32),
             box_pred=jnp.asarray(rng.normal(2, 1, (2, num_points, 4)), jnp.float32),
             quality_logits=jnp.asarray(rng.normal(size=(2, num_points)), jnp.float32))
  assigned = jax.jit(det.assign)(out, batch)
  total, metrics = jax.jit(det.loss_from_assignment)(out, batch, assigned)

  pos = np.asarray(assigned['assign']) == 1
  gt_idx = np.asarray(assigned['matched_gt'])
  num_pos = pos.sum()
  assert num_pos > 10
  boxes = np.asarray(batch['boxes'], np.float64)
  labels = np.asarray(batch['labels'])
  matched = np.stack([boxes[b][gt_idx[b]] for b in range(2)])
  target = np.zeros((2, num_points, 3))
  for b, i in zip(*np.nonzero(pos)):
    target[b, i, labels[b, gt_idx[b, i]]] = 1
  p = _sigmoid(out['cls_logits'])
  pt = np.where(target == 1, p, 1 - p)
  focal = (-np.log(pt) * (1 - pt) ** 2 * np.where(target == 1, 0.25, 0.75))
  np.testing.assert_allclose(metrics['cls_loss'], focal.sum() / num_pos, rtol=1e-4)

  points, strides = np.asarray(det.points, np.float64), np.asarray(det.point_strides)
  dist = np.maximum(np.asarray(out['box_pred'], np.float64), 0) * strides[:, None]
  pred = np.concatenate([points - dist[..., :2], points + dist[..., 2:]], -1)
  giou = _giou(pred, matched)
  ltrb = np.concatenate([points - matched[..., :2], matched[..., 2:] - points], -1)
  ltrb = np.where(pos[..., None], ltrb, 1.0)  # negatives' targets are never read
  ctr = np.sqrt(np.minimum(ltrb[..., 0], ltrb[..., 2]) / np.maximum(ltrb[..., 0], ltrb[..., 2])
                * np.minimum(ltrb[..., 1], ltrb[..., 3]) / np.maximum(ltrb[..., 1], ltrb[..., 3]))
  q_target = np.maximum(giou, 0) if quality == 'giou' else ctr
  w = dict(centerness=ctr, none=np.ones_like(ctr), quality=q_target)[weighting][pos]
  want_box = 1.5 * np.sum(w * (1 - giou[pos])) / w.sum()
  np.testing.assert_allclose(metrics['box_loss'], want_box, rtol=1e-4)
  x = np.asarray(out['quality_logits'], np.float64)[pos]
  t = q_target[pos]
  bce = t * np.logaddexp(0, -x) + (1 - t) * np.logaddexp(0, x)
  np.testing.assert_allclose(metrics['quality_loss'], 0.7 * bce.sum() / num_pos, rtol=1e-4)
  np.testing.assert_allclose(total, metrics['cls_loss'] + metrics['box_loss']
                             + metrics['quality_loss'], rtol=1e-6)
  np.testing.assert_allclose(metrics['pos_giou'], giou[pos].mean(), rtol=1e-4)
  assert metrics['num_pos_per_image'] == num_pos / 2


def test_quality_loss_gradient_to_boxes_follows_stop_gradient():
  batch = _batch()
  grads = {}
  for stop in (True, False):
    det = build_detector(_config(quality_stop_gradient=stop), num_classes=3)
    num_points = det.points.shape[0]
    rng = np.random.default_rng(3)
    out = dict(cls_logits=jnp.zeros((2, num_points, 3)),
               box_pred=jnp.asarray(rng.normal(2, 1, (2, num_points, 4)), jnp.float32),
               quality_logits=jnp.asarray(rng.normal(size=(2, num_points)), jnp.float32))
    assigned = det.assign(out, batch)

    def quality_loss(box_pred):
      return det.loss_from_assignment(dict(out, box_pred=box_pred), batch,
                                      assigned)[1]['quality_loss']
    grads[stop] = np.asarray(jax.grad(quality_loss)(out['box_pred']))
  assert np.all(grads[True] == 0)
  assert np.any(grads[False] != 0) and np.all(np.isfinite(grads[False]))


def test_box_distances_both_parameterizations():
  det = build_detector(_config(), num_classes=3)
  pred = np.zeros((1, det.points.shape[0], 4), np.float32)
  pred[0, 0] = [-1.0, 0.5, 2.0, 0.0]        # a P3 point (stride 8)
  pred[0, -1] = [0.25, 1.0, -3.0, 100.0]    # the P7 point (stride 128)
  got = np.asarray(det.box_distances(jnp.asarray(pred)))
  np.testing.assert_allclose(got[0, 0], [0, 4, 16, 0])
  np.testing.assert_allclose(got[0, -1], [32, 128, 0, 12800])
  c = _config()
  c.model.head.norm_on_bbox = False
  got = np.asarray(build_detector(c, 3).box_distances(jnp.asarray(pred)))
  np.testing.assert_allclose(got[0, 0], np.exp([-1.0, 0.5, 2.0, 0.0]), rtol=1e-6)
  assert np.all(np.isfinite(got)) and got[0, -1, 3] == pytest.approx(1e5, rel=1e-4)


# ----------------------------------------------------------------- head and network

def test_head_init_and_level_scales():
  head = fcos_head.FCOSHead(num_classes=3, num_levels=2, channels=8, num_convs=2)
  rng = np.random.default_rng(4)
  feats = [jnp.asarray(rng.normal(size=(1, 6, 6, 8)), jnp.float32),
           jnp.asarray(rng.normal(size=(1, 3, 3, 8)), jnp.float32)]
  variables = jax.jit(head.init)(jax.random.key(0, impl='rbg'), feats)
  params = variables['params']
  np.testing.assert_allclose(params['cls_logits']['bias'],
                             retina_head.prior_bias(0.01), rtol=1e-6)
  for name in ('box_pred', 'quality_logits'):
    np.testing.assert_array_equal(params[name]['bias'], 0.0)
  assert params['scale0'] == 1.0 and params['scale1'] == 1.0
  assert set(params['box_tower']) == {'conv0', 'conv1', 'norm0', 'norm1'}
  apply = jax.jit(head.apply)
  out = apply(variables, feats)
  params = dict(params, scale1=jnp.float32(-2.5))
  scaled = apply({'params': params}, feats)
  np.testing.assert_array_equal(scaled['box'][0], out['box'][0])
  np.testing.assert_allclose(scaled['box'][1], -2.5 * out['box'][1], rtol=1e-6)
  np.testing.assert_array_equal(scaled['quality'][1], out['quality'][1])


def test_model_outputs_follow_point_order():
  cfg = config_base.fcos_config().model
  cfg.backbone.update(depth=18, width=8, norm='gn', freeze_at=0)
  cfg.fpn.channels = 16
  cfg.head.update(channels=16, num_convs=1)
  model = fcos_model.FCOS(4, cfg)
  rng = np.random.default_rng(5)
  images = rng.normal(size=(2, 64, 48, 3)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  variables = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), shapes)
  out, inter = jax.jit(lambda v, x: model.apply(
      v, x, capture_intermediates=lambda mdl, _: mdl.name == 'head',
      mutable=['intermediates']))(variables, images)
  head = inter['intermediates']['head']['__call__'][0]
  strides = (8, 16, 32, 64, 128)
  points, _ = anchors_lib.generate_points((64, 48), strides)
  sizes = retinanet_model.feature_sizes((64, 48), 3, 7)
  assert out['cls_logits'].shape == (2, len(points), 4)
  assert out['box_pred'].shape == (2, len(points), 4)
  assert out['quality_logits'].shape == (2, len(points))
  box, quality = np.asarray(out['box_pred']), np.asarray(out['quality_logits'])
  assert len(np.unique(quality)) > 0.9 * quality.size  # distinguishable
  start = 0
  for level, ((h, w), s) in enumerate(zip(sizes, strides)):
    for b, y, x in [(0, 0, 0), (1, h - 1, w - 1), (1, h // 2, w // 3)]:
      a = start + y * w + x
      np.testing.assert_array_equal(points[a], [(x + 0.5) * s, (y + 0.5) * s])
      np.testing.assert_array_equal(box[b, a], head['box'][level][b, y, x])
      assert quality[b, a] == head['quality'][level][b, y, x, 0]
      np.testing.assert_array_equal(out['cls_logits'][b, a], head['cls'][level][b, y, x])
    start += h * w


def test_fpn_extra_levels_from_p5():
  rng = np.random.default_rng(6)
  feats = {f'C{l}': jnp.asarray(rng.normal(size=(1, 64 // 2**l, 64 // 2**l, 8)),
                                jnp.float32) for l in range(2, 6)}
  neck = fpn_lib.FPN(channels=8, min_level=3, max_level=7, extra_from='output')
  out, variables = jax.jit(neck.init_with_output)(jax.random.key(0, impl='rbg'), feats)
  variables = {'params': variables['params']}

  def conv_s2(x, p):
    y = jax.lax.conv_general_dilated(x, p['kernel'], (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + p['bias']
  p = variables['params']
  np.testing.assert_allclose(out[6], conv_s2(out[5], p['extra6']), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[7], conv_s2(jax.nn.relu(out[6]), p['extra7']),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='extra_from'):
    fpn_lib.FPN(channels=8, extra_from='maxpool').init(jax.random.key(0), feats)


# ------------------------------------------------------------------- score fusion

def test_score_fusion_and_threshold_on_classification():
  det = build_detector(_config(), num_classes=2)
  n = det.points.shape[0]
  cls = np.full((1, n, 2), -20.0, np.float32)
  quality = np.zeros((1, n), np.float32)

  def logit(p):
    return np.log(p / (1 - p))
  # Far apart points of P3 (stride 8), so NMS keeps all.
  cls[0, 0, 0], quality[0, 0] = logit(0.9), logit(0.5)     # p q = 0.45
  cls[0, 255, 1], quality[0, 255] = logit(0.1), logit(0.2)  # p q = 0.02 < 0.05 < p
  cls[0, 100, 0], quality[0, 100] = logit(0.04), logit(0.9)  # p < 0.05 < sqrt(p q)
  out = dict(cls_logits=jnp.asarray(cls), quality_logits=jnp.asarray(quality),
             box_pred=jnp.ones((1, n, 4), jnp.float32))
  p = np.asarray(jax.nn.sigmoid(out['cls_logits']))
  q = np.asarray(jax.nn.sigmoid(out['quality_logits']))[..., None]
  np.testing.assert_array_equal(det.detection_scores(out, 'fused'), p * q)
  np.testing.assert_array_equal(det.detection_scores(out, 'classification'), p)
  with pytest.raises(ValueError, match='unknown score'):
    det.detection_scores(out, 'centerness')

  def detections(det, score='fused'):
    d = jax.jit(det.detections_from_outputs, static_argnums=1)(out, score)
    valid = np.asarray(d['valid'][0])
    return np.asarray(d['scores'][0])[valid], np.asarray(d['classes'][0])[valid]
  scores, classes = detections(det)  # threshold on p, rank by p q
  np.testing.assert_allclose(scores, [0.45, 0.02], rtol=1e-5)
  np.testing.assert_array_equal(classes, [0, 1])
  scores, _ = detections(det, 'classification')
  np.testing.assert_allclose(scores, [0.9, 0.1], rtol=1e-5)

  c = _config()
  c.eval.quality_fusion = 'sqrt'
  det_sqrt = build_detector(c, num_classes=2)
  np.testing.assert_allclose(det_sqrt.detection_scores(out, 'fused'), np.sqrt(p * q),
                             rtol=1e-6)
  c.eval.score_threshold_on = 'fused'
  scores, classes = detections(build_detector(c, num_classes=2))
  np.testing.assert_allclose(scores, [np.sqrt(0.45), np.sqrt(0.036), np.sqrt(0.02)],
                             rtol=1e-5)
  np.testing.assert_array_equal(classes, [0, 0, 1])


# ------------------------------------------------------------------------- configs

def test_configs_and_command_line_switches(repo_root):
  for name in ('coco', 'shapes'):
    path = os.path.join(repo_root, f'configs/fcos_{name}.py')
    argv = ['prog', f'--config={path}:smoke', '--config.model.head.quality=centerness',
            '--config.model.head.rfa_position=2']
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    c = fv.config
    assert c.detector == 'fcos' and c.model.fpn.extra_from == 'output'
    assert (c.model.head.quality, c.model.head.rfa_position) == ('centerness', 2)
    assert c.assign.center_sampling and c.assign.center_radius == 1.5
    assert c.eval.nms_iou == 0.6 and c.model.head.norm_on_bbox
    want = SHAPES_RANGES if name == 'shapes' else fcos_assign.COCO_REGRESS_RANGES
    np.testing.assert_array_equal(c.assign.regress_ranges, want)
    build_detector(c, num_classes=3)
    json.dumps(c.to_dict())  # config.json of a run
  coco = config_base.load_config_file(os.path.join(repo_root, 'configs/fcos_coco.py'))
  assert coco.train.warmup_factor == pytest.approx(1 / 3)
  assert coco.model.head.quality == 'giou' and coco.model.head.first_conv == 'conv'

  for field, bad, error in [
      ('model.head.quality', 'iou', ValueError),
      ('model.head.first_conv', 'dcn', ValueError),
      ('model.head.rfa_position', 3, ValueError),  # smoke towers have 2 convs
      ('model.head.rfa_position', 0, ValueError),
      ('loss.box_weighting', 'giou', ValueError),
      ('loss.giou_target', 'relu', ValueError),
      ('eval.quality_fusion', 'mean', ValueError),
      ('eval.score_threshold_on', 'quality', ValueError),
      ('assign.regress_ranges', ((-1, 64), (64, 1e8)), ValueError),
      ('eval.nms', 'greedy', ValueError)]:
    c = _config()
    *section, key = field.split('.')
    node = c
    for s in section:
      node = node[s]
    node[key] = bad
    with pytest.raises(error, match=f'config.{field}'):
      build_detector(c, 3)


def test_deformable_tower_conv_plug_point():
  c = _config()
  c.model.head.first_conv = 'deform'
  try:
    from jaxdet.models import deform  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(NotImplementedError, match='config.model.head.first_conv'):
      build_detector(c, 3)
    return
  c.model.head.rfa_position = 2
  params = jax.eval_shape(build_detector(c, 3).init, jax.random.key(0))['params']['head']
  for tower in ('cls_tower', 'box_tower'):
    assert 'conv_offset' in params[tower]['conv1']
    assert set(params[tower]['conv0']) == {'kernel'}

  # DCN v1 starts with zero offsets: the same outputs as the plain head, same kernels.
  rng = np.random.default_rng(7)
  feats = [jnp.asarray(rng.normal(size=(1, 6, 5, 8)), jnp.float32),
           jnp.asarray(rng.normal(size=(1, 3, 3, 8)), jnp.float32)]
  kw = dict(num_classes=3, num_levels=2, channels=8, num_convs=2)
  rfa = fcos_head.FCOSHead(**kw, first_conv='deform', rfa_position=1)
  variables = jax.jit(rfa.init)(jax.random.key(0, impl='rbg'), feats)
  assert np.all(variables['params']['box_tower']['conv0']['conv_offset']['kernel'] == 0)
  plain = jax.tree.map(lambda x: x, variables['params'])
  for tower in ('cls_tower', 'box_tower'):
    plain[tower]['conv0'] = {'kernel': plain[tower]['conv0']['kernel']}
  want = jax.jit(fcos_head.FCOSHead(**kw).apply)({'params': plain}, feats)
  got = jax.jit(rfa.apply)(variables, feats)
  for key in ('cls', 'box', 'quality'):
    for level in range(2):
      np.testing.assert_allclose(got[key][level], want[key][level], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_train_and_eval_smoke(repo_root, shapes_cache, tmp_path):
  """train.py on configs/fcos_shapes.py:smoke: losses fall, evaluation runs."""
  workdir = str(tmp_path / 'run')
  log = cli.run_script(
      repo_root, shapes_cache, 'train.py', '--config=configs/fcos_shapes.py:smoke',
      f'--workdir={workdir}', f'--config.data.shapes.cache_dir={shapes_cache}',
      '--mode=train_and_eval', '--config.train.checkpoint_every=30',
      '--config.eval.num_images=8', timeout=400)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['detector'] == 'fcos' and config['model']['head']['quality'] == 'giou'
  loss, quality = logged(log, 'loss'), logged(log, 'quality_loss')
  assert sorted(loss) == sorted(quality) == [10, 20, 30], log[-3000:]
  assert loss[30] < loss[10], loss
  assert all(0 < v < 2 for v in logged(log, 'box_loss').values())
  assert all(v > 0 for v in logged(log, 'num_pos_per_image').values())
  with open(os.path.join(workdir, 'eval_metrics.jsonl')) as f:
    (metrics,) = [json.loads(line) for line in f]
  assert metrics['step'] == 30 and metrics['num_images'] == 8
  assert 0.0 <= metrics['AP50'] <= 1.0
