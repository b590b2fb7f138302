"""Faster R-CNN + FPN / Cascade R-CNN with regression or OBC box heads: FPN's pooled P6,
RoI matching, RPN proposals and loss (against NumPy), the box outputs (delta regression
and offset bins), the detector on the smoke configs (loss, gradients, overfitting,
predict), config errors, and end-to-end smoke runs through train.py."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet import config_base
from jaxdet import postprocess
from jaxdet.detectors import build_detector
from jaxdet.detectors import roi_box
from jaxdet.detectors import rpn as rpn_lib
from jaxdet.detectors import two_stage
from jaxdet.models import fpn as fpn_lib
from jaxdet.ops import bins
from jaxdet.ops import boxes as box_ops

from tests import cli
from tests.test_train_e2e import COCO_KEYS, logged

MAX_RATIO = float(np.abs(np.log(16.0 / 1000)))  # ops.boxes' default dw / dh clamp


def _config(repo_root, name, arg='smoke'):
  path = os.path.join(repo_root, 'configs', f'{name}.py')
  return config_base.load_config_file(f'{path}:{arg}' if arg else path)


def _np_iou(a, b):
  """[N, 4] x [M, 4] -> [N, M] float64 IoU."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), -1)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  union = area(a)[:, None] + area(b)[None] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _np_encode(gt, anchors, stds=(1, 1, 1, 1)):
  gt, anchors = np.asarray(gt, np.float64), np.asarray(anchors, np.float64)
  aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
  gw, gh = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
  dx = ((gt[..., 0] + gt[..., 2]) - (anchors[..., 0] + anchors[..., 2])) / 2 / aw
  dy = ((gt[..., 1] + gt[..., 3]) - (anchors[..., 1] + anchors[..., 3])) / 2 / ah
  d = np.stack([dx, dy, np.log(gw / aw), np.log(gh / ah)], -1)
  return d / np.asarray(stds, np.float64)


def _np_decode(d, anchors, clip_hw=None):
  d, anchors = np.asarray(d, np.float64), np.asarray(anchors, np.float64)
  aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
  cx = (anchors[..., 0] + anchors[..., 2]) / 2 + d[..., 0] * aw
  cy = (anchors[..., 1] + anchors[..., 3]) / 2 + d[..., 1] * ah
  w = aw * np.exp(np.clip(d[..., 2], -MAX_RATIO, MAX_RATIO))
  h = ah * np.exp(np.clip(d[..., 3], -MAX_RATIO, MAX_RATIO))
  out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  if clip_hw is not None:
    out = np.clip(out, 0, [clip_hw[1], clip_hw[0], clip_hw[1], clip_hw[0]])
  return out


def _np_smooth_l1(d, beta):
  d = np.abs(d)
  return np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


# -------------------------------------------------------------------- FPN pooled P6

def test_fpn_pool_p6_is_p5_subsampled_without_parameters():
  rng = np.random.default_rng(0)
  # 76 px: C5 and P5 are 3x3 (odd), P6 2x2 = ceil(3 / 2), P7 1x1.
  feats = {f'C{l}': jnp.asarray(rng.normal(size=(2, -(-76 // 2**l), -(-76 // 2**l),
                                                 4 * l)), jnp.float32)
           for l in range(2, 6)}
  pooled = fpn_lib.FPN(channels=8, min_level=2, max_level=7, extra_from='pool')
  out, variables = jax.jit(pooled.init_with_output)(jax.random.key(0), feats)
  assert sorted(out) == [2, 3, 4, 5, 6, 7]
  assert out[5].shape == (2, 3, 3, 8) and out[6].shape == (2, 2, 2, 8)
  np.testing.assert_array_equal(out[6], out[5][:, ::2, ::2])
  np.testing.assert_array_equal(out[7], out[5][:, ::4, ::4])
  # The parameters are those of the FPN without extra levels (laterals and output
  # convs), and so are P2..P5.
  plain = fpn_lib.FPN(channels=8, min_level=2, max_level=5)
  plain_out, plain_vars = jax.jit(plain.init_with_output)(jax.random.key(0), feats)
  assert (jax.tree_util.tree_structure(variables)
          == jax.tree_util.tree_structure(plain_vars))
  assert sorted(variables['params']) == sorted(
      [f'lateral{l}' for l in range(2, 6)] + [f'output{l}' for l in range(2, 6)])
  for level in range(2, 6):
    np.testing.assert_array_equal(out[level], plain_out[level])


# ---------------------------------------------------------------------- match_rois

def test_match_rois_hand_built():
  # Padded GTs (mask False) sit on candidates: they must not count.
  gt = np.array([[[0, 0, 10, 10], [20, 0, 40, 10], [0, 0, 10, 4.9]],
                 [[0, 0, 10, 10], [18, 0, 38, 10], [0, 0, 0, 0]]], np.float32)
  gt_mask = np.array([[True, True, False], [False, False, False]])
  cands = np.array([
      [0, 0, 10, 10],    # IoU 1 with gt0
      [0, 0, 10, 5],     # 0.5 with gt0: exactly the threshold -> positive
      [0, 0, 10, 4.9],   # 0.49 with gt0 (1 with the padded gt2) -> negative, gt0
      [20, 0, 30, 10],   # 0.5 with gt1, 0 with gt0 -> positive, gt1
      [5, 0, 25, 10],    # 50/250 with gt0, 50/350 with gt1 -> negative, best gt0
      [0, 0, 10, 10],    # IoU 1 but invalid -> neither
      [18, 0, 38, 10],   # 180/220 = 0.82 with gt1 -> positive, gt1
      [100, 100, 110, 110],  # no overlap -> negative
  ], np.float32)
  valid = np.array([True] * 5 + [False] + [True] * 2)
  batch = dict(boxes=jnp.asarray(gt), labels=jnp.zeros((2, 3), jnp.int32),
               gt_mask=jnp.asarray(gt_mask))
  out = jax.jit(two_stage.match_rois, static_argnums=3)(
      jnp.asarray(np.stack([cands, cands])), jnp.asarray(np.stack([valid, valid])),
      batch, 0.5)
  out = jax.tree_util.tree_map(np.asarray, out)
  np.testing.assert_array_equal(out['positive'][0],
                                [1, 1, 0, 1, 0, 0, 1, 0])
  np.testing.assert_array_equal(out['negative'][0],
                                [0, 0, 1, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(out['matched_gt'][0][[0, 1, 2, 3, 4, 6]],
                                [0, 0, 0, 1, 0, 1])
  assert out['matched_gt'].dtype == jnp.int32
  assert not np.any(out['matched_gt'][0] == 2)  # the padded GT is never matched
  # No ground truth: every valid candidate is negative, none positive.
  np.testing.assert_array_equal(out['positive'][1], np.zeros(8, bool))
  np.testing.assert_array_equal(out['negative'][1], valid)
  # A higher threshold keeps only the IoU >= 0.8 ones.
  out = two_stage.match_rois(jnp.asarray(cands[None]), jnp.asarray(valid[None]),
                             jax.tree_util.tree_map(lambda x: x[:1], batch), 0.8)
  np.testing.assert_array_equal(out['positive'][0], [1, 0, 0, 0, 0, 0, 1, 0])


# ------------------------------------------------------------------------------ RPN

def _rpn_config(**kw):
  c = config_base.faster_rcnn_config().rpn
  c.anchors.update(octave_base_scale=2.0, ratios=(1.0,))
  c.update(kw)
  return c


def _np_proposals(rpn, objectness, deltas, pre_nms, post_nms, nms_iou):
  """NumPy reference of one image: per level top-k, decode, clip, drop empty boxes,
  greedy NMS within each level, the post_nms best overall."""
  boxes, scores, levels = [], [], []
  start = 0
  for level, count in enumerate(rpn.anchors_per_level):
    obj = objectness[start:start + count]
    idx = np.argsort(-obj, kind='stable')[:min(pre_nms, count)]
    boxes.append(_np_decode(deltas[start:start + count][idx],
                            rpn.anchors[start:start + count][idx], rpn.image_size))
    scores.append(obj[idx])
    levels.append(np.full(len(idx), level))
    start += count
  boxes, scores, levels = map(np.concatenate, (boxes, scores, levels))
  alive = np.all(boxes[:, 2:] - boxes[:, :2] > 0, -1)
  kept = []
  for i in np.argsort(-scores, kind='stable'):
    if not alive[i]:
      continue
    kept.append(i)
    iou = _np_iou(boxes[i:i + 1], boxes)[0]
    alive &= ~((iou > nms_iou) & (levels == levels[i]))
    if len(kept) == post_nms:
      break
  return boxes[kept], scores[kept]


def test_rpn_proposals_match_numpy_reference():
  c = _rpn_config(train_pre_nms=40, train_post_nms=30, test_pre_nms=20, test_post_nms=12)
  c.anchors.ratios = (0.5, 1.0, 2.0)
  rpn = rpn_lib.RPN(c, (48, 40), (4, 8, 16))
  a = rpn.anchors.shape[0]
  assert rpn.anchors_per_level == [12 * 10 * 3, 6 * 5 * 3, 3 * 3 * 3]
  rng = np.random.default_rng(1)
  objectness = rng.normal(size=(2, a)).astype(np.float32)
  deltas = rng.normal(scale=0.4, size=(2, a, 4)).astype(np.float32)
  deltas[:, ::7, 0] += 3.0  # some boxes pushed out of the image: clipped to zero width
  fn = jax.jit(rpn.proposals, static_argnums=2)
  for train, pre, post in ((True, 40, 30), (False, 20, 12)):
    boxes, valid = fn(jnp.asarray(objectness), jnp.asarray(deltas), train)
    assert boxes.shape == (2, post, 4) and valid.shape == (2, post)
    for b in range(2):
      want, _ = _np_proposals(rpn, objectness[b], deltas[b], pre, post, 0.7)
      n = len(want)
      assert 0 < n and int(valid[b].sum()) == n
      np.testing.assert_array_equal(valid[b], np.arange(post) < n)  # valid slots first
      np.testing.assert_allclose(boxes[b, :n], want, rtol=1e-5, atol=1e-4)
      np.testing.assert_array_equal(boxes[b, n:], 0.0)
      got = np.asarray(boxes[b, :n])
      assert np.all(got >= 0) and np.all(got[:, [0, 2]] <= 40) and np.all(
          got[:, [1, 3]] <= 48)
      assert np.all(got[:, 2:] - got[:, :2] > 0)


def test_rpn_proposals_nms_within_level_and_empty_boxes():
  # 32 x 32, strides 4 and 8, one square anchor per location: 8 px (64) and 16 px (16).
  c = _rpn_config(test_pre_nms=3, test_post_nms=6, nms_iou=0.7)
  rpn = rpn_lib.RPN(c, (32, 32), (4, 8))
  assert rpn.anchors_per_level == [64, 16]
  a_idx = 2 * 8 + 2  # level 0, (y, x) = (2, 2): [4, 4, 12, 12]
  b_idx = 2 * 8 + 3  # level 0, (2, 3): [8, 4, 16, 12], shifted left onto a
  empty_idx = 5 * 8 + 5  # level 0: pushed right out of the image -> zero width
  c_idx = 64 + 1 * 4 + 1  # level 1, (1, 1): [0, 0, 16, 16], shrunk onto a
  np.testing.assert_array_equal(rpn.anchors[[a_idx, b_idx, c_idx]],
                                [[4, 4, 12, 12], [8, 4, 16, 12], [0, 0, 16, 16]])
  objectness = np.full((1, 80), -10.0, np.float32)
  deltas = np.zeros((1, 80, 4), np.float32)
  objectness[0, [empty_idx, a_idx, b_idx, c_idx]] = [6.0, 5.0, 4.0, 3.0]
  deltas[0, b_idx, 0] = -0.5
  deltas[0, empty_idx, 0] = 10.0
  deltas[0, c_idx, 2:] = np.log(0.5)
  boxes, valid = jax.jit(rpn.proposals, static_argnums=2)(
      jnp.asarray(objectness), jnp.asarray(deltas), False)
  # Level 0's top 3: empty (dropped), a, b (suppressed by a: IoU 1); level 1's top 3:
  # c (identical to a, kept: another level), then the first two -10 anchors [-8, -8,
  # 8, 8] and [0, -8, 16, 8] clipped, whose IoU 0.5 keeps both.
  np.testing.assert_array_equal(valid[0], [True, True, True, True, False, False])
  np.testing.assert_allclose(boxes[0], [[4, 4, 12, 12], [4, 4, 12, 12], [0, 0, 8, 8],
                                        [0, 0, 16, 8], [0] * 4, [0] * 4], atol=1e-5)
  # b moved to 1 px off a (IoU 7/9 = 0.78): suppressed by NMS 0.7, kept by 0.9.
  deltas[0, b_idx, 0] = -0.375
  for iou, kept in ((0.7, False), (0.9, True)):
    c.nms_iou = iou
    boxes, valid = rpn_lib.RPN(c, (32, 32), (4, 8)).proposals(
        jnp.asarray(objectness), jnp.asarray(deltas), train=False)
    assert int(valid[0].sum()) == 4 + kept
    moved_b = np.all(np.abs(np.asarray(boxes[0]) - [5, 4, 13, 12]) < 1e-5, -1)
    assert moved_b.any() == kept
  # min_size 8: boxes with a side <= 8 px are dropped too: all of level 0 (8 px), c
  # and the clipped level-1 anchors; the first kept ones are level 1's (1, 2), (1, 3).
  c.update(nms_iou=0.7, min_size=8.0, test_pre_nms=16)
  boxes, valid = rpn_lib.RPN(c, (32, 32), (4, 8)).proposals(
      jnp.asarray(objectness), jnp.asarray(deltas), train=False)
  assert bool(valid[0].all())
  np.testing.assert_allclose(boxes[0, :2], [[8, 0, 24, 16], [16, 0, 32, 16]], atol=1e-5)
  assert np.all(np.asarray(boxes[0, :, 2:] - boxes[0, :, :2]) > 8)


def _np_rpn_assign(anchors, gt, pos_iou, neg_iou, min_pos_iou):
  """MaxIoU with low-quality matches: 1 positive, 0 negative, -1 ignored; best GT."""
  iou = _np_iou(anchors, gt)  # [A, G]
  best, matched = iou.max(1), iou.argmax(1)
  assign = np.where(best >= pos_iou, 1, np.where(best < neg_iou, 0, -1))
  gt_best = iou.max(0)
  low = np.any((iou == gt_best[None]) & (gt_best[None] > min_pos_iou), 1)
  return np.where(low, 1, assign), matched


@pytest.mark.parametrize('box_weight', [1.0, 2.5])
def test_rpn_loss_matches_numpy_when_every_anchor_is_sampled(box_weight):
  # 32 x 32, strides 4 and 8, 3 ratios: 192 + 48 = 240 anchors, all sampled.
  c = _rpn_config(num_samples=512, positive_fraction=1.0, box_weight=box_weight)
  c.anchors.ratios = (0.5, 1.0, 2.0)
  rpn = rpn_lib.RPN(c, (32, 32), (4, 8))
  a = rpn.anchors.shape[0]
  assert a == 240
  gt = np.array([[[3, 4, 13, 12], [10, 14, 30, 30], [0, 0, 0, 0]],
                 [[16, 0, 24, 18], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  gt_mask = np.array([[True, True, False], [True, False, False]])
  batch = dict(boxes=jnp.asarray(gt), gt_mask=jnp.asarray(gt_mask),
               labels=jnp.zeros((2, 3), jnp.int32))
  rng = np.random.default_rng(2)
  objectness = rng.normal(size=(2, a)).astype(np.float32)
  deltas = rng.normal(scale=0.3, size=(2, a, 4)).astype(np.float32)
  loss, metrics = jax.jit(rpn.loss)(jnp.asarray(objectness), jnp.asarray(deltas), batch,
                                    jax.random.key(3))

  bce, box, count, num_pos = 0.0, 0.0, 0, 0
  for b in range(2):
    assign, matched = _np_rpn_assign(rpn.anchors, gt[b][gt_mask[b]], 0.7, 0.3, 0.3)
    num_pos += (assign == 1).sum()
    sampled = assign >= 0
    count += sampled.sum()
    x, t = objectness[b].astype(np.float64), (assign == 1)
    ce = np.logaddexp(0, -x) * t + np.logaddexp(0, x) * (1 - t)
    bce += ce[sampled].sum()
    targets = _np_encode(gt[b][gt_mask[b]][matched], rpn.anchors)
    box += _np_smooth_l1(deltas[b] - targets, 1 / 9)[assign == 1].sum()
  assert num_pos >= 3 and count > 200  # each GT has a positive, most anchors sampled
  np.testing.assert_allclose(metrics['rpn_cls_loss'], bce / count, rtol=1e-5)
  np.testing.assert_allclose(metrics['rpn_box_loss'], box_weight * box / count, rtol=1e-5)
  np.testing.assert_allclose(loss, (bce + box_weight * box) / count, rtol=1e-5)
  assert float(metrics['rpn_box_loss']) > 0


def test_rpn_loss_sampling_budget():
  """8 samples, at most 2 positive: each image has 1 positive anchor (IoU 1), so 1
  positive and 7 negatives are drawn, whichever ones, and the losses are over 16."""
  c = _rpn_config(num_samples=8, positive_fraction=0.25)
  rpn = rpn_lib.RPN(c, (32, 32), (4, 8))
  gt = jnp.asarray([[[4, 4, 12, 12]], [[0, 0, 16, 16]]], jnp.float32)
  batch = dict(boxes=gt, gt_mask=jnp.ones((2, 1), bool),
               labels=jnp.zeros((2, 1), jnp.int32))
  a = rpn.anchors.shape[0]
  anchors = jnp.asarray(rpn.anchors)
  # Every anchor of each image predicts exactly its image's GT: no box loss on any
  # positive, whichever are drawn; the images' deltas swapped: a box loss.
  deltas = box_ops.encode_deltas(gt[:, :1], anchors[None])  # [2, A, 4]
  loss = jax.jit(rpn.loss)
  softplus = lambda x: np.logaddexp(0.0, x)
  for seed in range(3):
    _, m = loss(jnp.zeros((2, a)), deltas, batch, jax.random.key(seed))
    np.testing.assert_allclose(m['rpn_cls_loss'], np.log(2), rtol=1e-6)
    assert float(m['rpn_box_loss']) < 1e-6
    # Logits 10 everywhere: BCE softplus(-10) on the positives, softplus(10) on the
    # negatives.
    _, m = loss(jnp.full((2, a), 10.0), deltas, batch, jax.random.key(seed))
    np.testing.assert_allclose(m['rpn_cls_loss'],
                               (2 * softplus(-10.0) + 14 * softplus(10.0)) / 16,
                               rtol=1e-6)
    _, m = loss(jnp.zeros((2, a)), deltas[::-1], batch, jax.random.key(seed))
    assert float(m['rpn_box_loss']) > 0.01


# ------------------------------------------------------------------ box outputs

STDS = (0.1, 0.1, 0.2, 0.2)


def _rois_and_gt(seed=0, b=2, r=5):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, 60, (b, r, 2))
  wh = rng.uniform(8, 40, (b, r, 2))
  rois = np.concatenate([xy, xy + wh], -1)
  # GT within a fraction of the RoI: normalized targets inside (-3, 3).
  shift = rng.uniform(-0.2, 0.2, (b, r, 2)) * wh
  scale = np.exp(rng.uniform(-0.4, 0.4, (b, r, 2)))
  c = xy + wh / 2 + shift
  gt = np.concatenate([c - wh * scale / 2, c + wh * scale / 2], -1)
  return rois.astype(np.float32), gt.astype(np.float32)


@pytest.mark.parametrize('kind', ['smooth_l1', 'l1', 'l2'])
def test_delta_regression_loss_and_decode(kind):
  b, r, c = 2, 5, 3
  rois, gt = _rois_and_gt(0, b, r)
  labels = np.array([[0, 2, 1, 2, 0], [1, 1, 0, 3, 2]], np.int32)  # 3: background
  positive = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 0, 1]], bool)
  targets = _np_encode(gt, rois, STDS).astype(np.float32)
  np.testing.assert_allclose(box_ops.encode_deltas(gt, rois, stds=STDS), targets,
                             rtol=1e-5, atol=1e-5)
  rng = np.random.default_rng(1)
  specific = roi_box.DeltaRegression(STDS, c, False, kind, 1.0)
  agnostic = roi_box.DeltaRegression(STDS, c, True, kind, 1.0)
  assert specific.output_shape == (c, 4) and agnostic.output_shape == (4,)
  # Class-specific: the GT class's slice holds the targets, the others are noise.
  pred = rng.normal(size=(b, r, c, 4)).astype(np.float32)
  bb, rr = np.nonzero(labels < c)
  pred[bb, rr, labels[bb, rr]] = targets[bb, rr]
  args = (jnp.asarray(rois), jnp.asarray(gt), jnp.asarray(labels), jnp.asarray(positive))
  # (float32 rounding of the NumPy targets: L1 sees it linearly.)
  assert float(specific.loss(jnp.asarray(pred), *args)) < 1e-4
  assert float(agnostic.loss(jnp.asarray(targets), *args)) < 1e-4
  # Perturbed by up to 1.6 (both sides of smooth L1's beta = 1).
  noise = rng.uniform(-1.6, 1.6, (b, r, 4)).astype(np.float32)
  ref = {'smooth_l1': _np_smooth_l1(noise, 1.0), 'l1': np.abs(noise),
         'l2': noise ** 2}[kind]
  want = ref[positive].sum()
  assert want > 1
  np.testing.assert_allclose(agnostic.loss(jnp.asarray(targets + noise), *args), want,
                             rtol=1e-5)
  pred2 = pred.copy()
  pred2[bb, rr, labels[bb, rr]] += noise[bb, rr]
  np.testing.assert_allclose(specific.loss(jnp.asarray(pred2), *args), want, rtol=1e-5)
  # Noise on the other classes and on negatives changes nothing.
  pred3 = pred.copy()
  pred3[~positive] += 5.0
  for k in range(c):
    other = labels != k
    pred3[other, k] += 7.0
  assert float(specific.loss(jnp.asarray(pred3), *args)) < 1e-4

  # Decoding the targets gives the GT back.
  np.testing.assert_allclose(agnostic.decode(jnp.asarray(targets), jnp.asarray(rois)), gt,
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(
      specific.decode(jnp.asarray(pred), jnp.asarray(rois), jnp.asarray(labels))[bb, rr],
      gt[bb, rr], rtol=1e-5, atol=1e-3)
  all_classes = specific.decode(jnp.asarray(pred), jnp.asarray(rois),
                                clip_size=(64, 80))
  assert all_classes.shape == (b, r, c, 4)
  for k in range(c):
    np.testing.assert_allclose(all_classes[:, :, k],
                               _np_decode(pred[:, :, k] * STDS, rois, (64, 80)),
                               rtol=1e-5, atol=1e-3)


def test_offset_bins_encode_decode_and_loss():
  a, m, k = 3.0, 20, 2
  rois, gt = _rois_and_gt(4, 2, 6)
  targets = _np_encode(gt, rois, STDS)
  assert np.all(np.abs(targets) < a)
  positive = np.array([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 0]], bool)
  args = (jnp.asarray(rois), jnp.asarray(gt), None, jnp.asarray(positive))
  labels = bins.encode_hierarchical(jnp.asarray(targets, jnp.float32), a, m, k)
  one_hot = 40.0 * jax.nn.one_hot(labels, m + 2)  # [B, R, 4, K, m + 2]
  half_bin = a / m ** k  # half the width of the last stage's bins
  for decoding in ('expectation', 'argmax'):
    head = roi_box.OffsetBins(STDS, a, m, k, decoding)
    assert head.output_shape == (4, k, m + 2) and head.class_agnostic
    offsets = head.offsets(one_hot)
    err = np.abs(np.asarray(offsets) - targets)
    assert np.all(err <= half_bin * 1.001 + 1e-6), err.max()
    boxes = head.decode(one_hot, jnp.asarray(rois))
    np.testing.assert_array_less(np.abs(_np_encode(boxes, rois, STDS) - targets),
                                 half_bin * 1.001 + 1e-5)
    assert float(head.loss(one_hot, *args)) < 1e-6
    # Uniform logits: log(m + 2) per coordinate and stage of each positive RoI.
    np.testing.assert_allclose(head.loss(jnp.zeros_like(one_hot), *args),
                               positive.sum() * 4 * k * np.log(m + 2), rtol=1e-5)
  # One stage: only within a first-stage half bin (0.15), and wrong logits on the
  # negatives cost nothing.
  head = roi_box.OffsetBins(STDS, a, m, 1, 'argmax')
  logits = 40.0 * jax.nn.one_hot(bins.encode(jnp.asarray(targets, jnp.float32), a, m),
                                 m + 2)[..., None, :]
  err = np.abs(np.asarray(head.offsets(logits)) - targets)
  assert np.all(err <= a / m * 1.001) and err.max() > a / m ** 2
  wrong = np.asarray(logits).copy()
  wrong[~positive] = np.roll(wrong[~positive], 3, axis=-1)
  assert float(head.loss(jnp.asarray(wrong), *args)) < 1e-6
  wrong[positive] = np.roll(wrong[positive], 3, axis=-1)
  assert float(head.loss(jnp.asarray(wrong), *args)) > 100
  with pytest.raises(ValueError, match='bin_decoding'):
    roi_box.OffsetBins(STDS, a, m, k, 'mode')
  with pytest.raises(ValueError, match='bin_range'):
    roi_box.OffsetBins(STDS, 0.0, m, k, 'expectation')


# ----------------------------------------------------------------------- detector

def _synthetic_batch(num_images=2, size=128):
  """Noise images with two filled rectangles each (classes 0 and 2) + a padded GT."""
  rng = np.random.default_rng(7)
  images = rng.normal(scale=0.2, size=(num_images, size, size, 3)).astype(np.float32)
  boxes = np.array([[[12, 10, 60, 50], [70, 30, 120, 110], [0, 0, 0, 0]],
                    [[40, 60, 100, 100], [8, 8, 40, 36], [0, 0, 0, 0]]], np.float32)
  labels = np.array([[0, 2, -1], [0, 2, -1]], np.int32)
  colours = {0: (2.0, -1.0, -1.0), 2: (-1.0, -1.0, 2.0)}
  for b in range(num_images):
    for (x1, y1, x2, y2), label in zip(boxes[b, :2].astype(int), labels[b, :2]):
      images[b, y1:y2, x1:x2] += colours[label]
  return dict(image=jnp.asarray(images), boxes=jnp.asarray(boxes),
              labels=jnp.asarray(labels),
              gt_mask=jnp.asarray([[True, True, False]] * num_images))


def test_stage_loss_and_cascade_refinement_with_known_head():
  """One box-head stage (cascade with bins) on a random pyramid, the head fixed so that
  its outputs are known: zero class logits, the same bin logits for every RoI. Every
  valid candidate is sampled (fewer than num_samples), so the losses match NumPy, and
  the next stage's RoIs are exactly the sampled proposals moved by the fixed offset,
  without the ground-truth RoIs."""
  config = config_base.make_smoke(config_base.use_shapes(config_base.cascade_rcnn_config(
      'bins')))
  det = build_detector(config, num_classes=3)
  box_output = det.box_outputs[0]
  a, m, s = config.model.roi_head.bin_range, config.model.roi_head.num_bins, 32
  assert box_output.output_shape == (4, 1, m + 2) and config.roi.num_samples == s
  rng = np.random.default_rng(5)
  # dx in bin 15 (1.65 std units), dw in bin 5 (-1.35), dy and dh uniform (0).
  logits = np.zeros((4, 1, m + 2), np.float32)
  logits[0, 0, 15] = logits[2, 0, 5] = 40.0
  offset = np.array([1.65, 0.0, -1.35, 0.0]) * config.roi.stage_stds[0]  # px deltas
  fc, ch, pool = 64, config.model.fpn.channels, config.model.roi_head.pool_size
  dense = lambda i, o, scale: dict(
      kernel=jnp.asarray(rng.normal(scale=scale, size=(i, o)), jnp.float32),
      bias=jnp.zeros((o,), jnp.float32))
  head = dict(fc0=dense(pool * pool * ch, fc, 0.05), fc1=dense(fc, fc, 0.1),
              cls_logits=dense(fc, 4, 0.0), box=dense(fc, logits.size, 0.0))
  head['box']['bias'] = jnp.asarray(logits.reshape(-1))
  variables = {'params': {'box_heads_0': head}}
  pyramid = [jnp.asarray(rng.normal(size=(2, 128 // 2**l, 128 // 2**l, ch)), jnp.float32)
             for l in range(2, 7)]

  gt = np.array([[[10, 12, 50, 60], [64, 64, 120, 100], [0, 0, 0, 0]],
                 [[30, 20, 90, 70], [5, 80, 35, 120], [0, 0, 0, 0]]], np.float32)
  gt_mask = np.array([[True, True, False]] * 2)
  xy = rng.uniform(0, 90, (2, 20, 2))
  props = np.concatenate([xy, xy + rng.uniform(10, 38, (2, 20, 2))], -1)
  props[:, :2] = gt[:, :2] + rng.uniform(-3, 3, (2, 2, 4))  # two positives per image
  props_valid = np.arange(20) < 16
  candidates = np.concatenate([props, gt], 1).astype(np.float32)
  valid = np.concatenate([np.broadcast_to(props_valid, (2, 20)), gt_mask], 1)
  batch = dict(boxes=jnp.asarray(gt), labels=jnp.asarray([[0, 2, -1], [1, 1, -1]]),
               gt_mask=jnp.asarray(gt_mask))
  stage = jax.jit(det._stage_loss, static_argnums=(5, 6, 7))  # pylint: disable=protected-access
  loss, metrics, (refined, refined_valid) = stage(
      variables, pyramid, jnp.asarray(candidates), jnp.asarray(valid), batch,
      det.clip_size(batch), 0, box_output, jax.random.key(0))

  num_pos, box_ce = 0, 0.0
  lse = np.log(np.exp(40.0) + m + 1)  # log-sum-exp of a one-hot row
  for b in range(2):
    iou = _np_iou(candidates[b], gt[b][gt_mask[b]])
    pos = valid[b] & (iou.max(1) >= 0.5)
    num_pos += pos.sum()
    targets = _np_encode(gt[b][iou.argmax(1)][pos], candidates[b][pos],
                         config.roi.stage_stds[0])
    labels = np.asarray(bins.encode(jnp.asarray(targets, jnp.float32), a, m))
    box_ce += (lse - 40.0 * (labels[:, 0] == 15)).sum()  # dx
    box_ce += (lse - 40.0 * (labels[:, 2] == 5)).sum()  # dw
    box_ce += 2 * pos.sum() * np.log(m + 2)  # dy, dh: uniform
  assert 4 <= num_pos <= 2 * int(s * config.roi.positive_fraction)
  num_sampled = valid.sum()  # 18 per image, all of them
  np.testing.assert_allclose(metrics['cls_loss'], np.log(4), rtol=1e-5)
  np.testing.assert_allclose(metrics['num_pos_rois_per_image'], num_pos / 2)
  np.testing.assert_allclose(metrics['box_loss'], box_ce / num_sampled, rtol=1e-4)
  np.testing.assert_allclose(loss, np.log(4) + box_ce / num_sampled, rtol=1e-4)

  assert refined.shape == (2, s, 4) and refined_valid.shape == (2, s)
  for b in range(2):
    got = np.asarray(refined[b])[np.asarray(refined_valid[b])]
    want = _np_decode(offset, props[b][props_valid], (128, 128))
    assert len(got) == 16  # the 16 valid proposals; the 2 sampled GT RoIs left out
    order = lambda x: x[np.lexsort(np.round(x, 3).T[::-1])]
    np.testing.assert_allclose(order(got), order(want), atol=2e-3)


# Each config costs 25-50 s (compiling init, train step and predict on 2 shared
# cores), so only the cascade with bins (two stages, refinement, OBC) runs in CI; the
# single-stage OBC config trains in test_train_and_eval_smoke, Faster R-CNN's
# class-specific boxes have their own tests (test_delta_regression_loss_and_decode,
# test_dense_detections_with_per_class_boxes).
@pytest.mark.parametrize('name', ['cascade_obc_shapes'])
def test_detector_loss_gradients_overfit_and_predict(repo_root, name):
  config = _config(repo_root, name)
  # At most 2 positive RoIs per image (its 2 GTs, always candidates): the number of
  # positives, and with it the scale of the box loss, stays fixed while the proposals
  # improve, so that losses of different steps compare.
  config.roi.positive_fraction = 2 / config.roi.num_samples
  det = build_detector(config, num_classes=3)
  stages = len(config.roi.stage_ious)
  assert stages == (2 if 'cascade' in name else 1)
  variables = jax.jit(det.init)(jax.random.key(0, impl='rbg'))
  assert sorted(variables['params']) == sorted(
      ['backbone', 'fpn', 'rpn'] + [f'box_heads_{k}' for k in range(stages)])
  batch = _synthetic_batch()
  tx = optax.adamw(1e-3)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, (metrics, _)), grads = jax.value_and_grad(
        lambda p: det.loss({**variables, 'params': p}, batch, rng), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics, grads

  params, opt_state = variables['params'], tx.init(variables['params'])
  history = []
  for i in range(15):
    new_params, opt_state, loss, metrics, grads = step(params, opt_state,
                                                       jax.random.key(i))
    metrics = {k: float(v) for k, v in metrics.items()}
    history.append(metrics)
    if i == 0:
      keys = {'loss', 'rpn_cls_loss', 'rpn_box_loss'} | {
          f'{n}{k}' for n in ('cls_loss', 'box_loss', 'cls_accuracy',
                              'num_pos_rois_per_image') for k in range(stages)}
      assert set(metrics) == keys
      assert all(np.isfinite(v) for v in metrics.values()), metrics
      assert metrics['loss'] == float(loss)
      np.testing.assert_allclose(
          loss, metrics['rpn_cls_loss'] + metrics['rpn_box_loss'] + sum(
              w * (metrics[f'cls_loss{k}'] + metrics[f'box_loss{k}'])
              for k, w in enumerate(config.roi.stage_weights)), rtol=1e-5)
      # Untrained: BCE and softmax CE near their uniform values (log 2, log(C + 1)).
      np.testing.assert_allclose(metrics['rpn_cls_loss'], np.log(2), rtol=0.05)
      np.testing.assert_allclose(metrics['cls_loss0'], np.log(4), rtol=0.05)
      for k in range(stages):
        assert metrics[f'num_pos_rois_per_image{k}'] == 2
        assert metrics[f'box_loss{k}'] > 0
      # Finite, and every parameter gets some gradient (every layer is used by a
      # loss: all backbone stages, P2-P5, the RPN head, each stage's fcs and outputs).
      for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        where = jax.tree_util.keystr(path)
        assert bool(jnp.all(jnp.isfinite(g))), where
        assert float(jnp.max(jnp.abs(g))) > 0, where
    params = new_params
  losses = [m['loss'] for m in history]
  assert np.mean(losses[-3:]) < 0.75 * losses[0], losses
  assert history[-1]['rpn_cls_loss'] < 0.5 * history[0]['rpn_cls_loss'], history
  assert np.mean([m['cls_loss0'] for m in history[-3:]]) < 0.5 * history[0]['cls_loss0']

  out = jax.jit(det.predict)({**variables, 'params': params}, batch)
  d = config.eval.max_detections
  assert out['boxes'].shape == (2, d, 4)
  assert out['scores'].shape == out['classes'].shape == out['valid'].shape == (2, d)
  out = jax.tree_util.tree_map(np.asarray, out)
  valid = out['valid']
  assert valid.any() and not valid.all()
  boxes = out['boxes'][valid]
  assert np.all(boxes >= 0) and np.all(boxes <= 128)
  assert np.all(boxes[:, 2:] >= boxes[:, :2])
  assert set(out['classes'][valid]) <= {0, 1, 2}
  np.testing.assert_array_equal(out['classes'][~valid], -1)
  assert np.all(out['scores'][valid] > config.eval.score_threshold)
  assert np.all(out['scores'][valid] <= 1)
  for b in range(2):
    n = valid[b].sum()
    assert valid[b, :n].all()  # valid slots first, by descending score
    assert np.all(np.diff(out['scores'][b, :n]) <= 0)


def test_dense_detections_with_per_class_boxes():
  """Class-specific heads give a box per (RoI, class): a detection of class k of RoI r
  takes box [r, k], and classes do not suppress each other."""
  scores = np.zeros((1, 3, 2), np.float32)
  scores[0, 0] = [0.9, 0.6]  # RoI 0: both classes over the threshold
  scores[0, 1] = [0.8, 0.01]  # RoI 1: class 0 only, on RoI 0's class-0 box: suppressed
  scores[0, 2] = [0.02, 0.7]
  boxes = np.zeros((1, 3, 2, 4), np.float32)
  boxes[0, 0] = [[0, 0, 10, 10], [20, 20, 40, 40]]
  boxes[0, 1] = [[0, 0, 10, 11], [50, 50, 60, 60]]
  boxes[0, 2] = [[70, 70, 80, 80], [20, 20, 40, 41]]  # on RoI 0's class-1 box
  detect = jax.jit(lambda s, b: postprocess.dense_detections(
      [s], [b], score_threshold=0.05, pre_nms_top_k=100, nms_iou=0.5,
      max_detections=4))
  out = detect(jnp.asarray(scores), jnp.asarray(boxes))
  np.testing.assert_array_equal(out['valid'][0], [True, True, False, False])
  np.testing.assert_allclose(out['scores'][0], [0.9, 0.7, 0, 0])
  np.testing.assert_array_equal(out['classes'][0], [0, 1, -1, -1])
  np.testing.assert_allclose(out['boxes'][0, :2], [[0, 0, 10, 10], [20, 20, 40, 41]])
  # Without the class-1 box of RoI 2 overlapping, it survives with its own box.
  boxes[0, 2, 1] = [90, 90, 100, 100]
  out = detect(jnp.asarray(scores), jnp.asarray(boxes))
  np.testing.assert_allclose(out['scores'][0], [0.9, 0.7, 0.6, 0])
  np.testing.assert_allclose(out['boxes'][0, :3], [[0, 0, 10, 10], [90, 90, 100, 100],
                                                   [20, 20, 40, 40]])


# ------------------------------------------------------------------ config errors

def test_config_errors_name_the_field():
  c = config_base.make_smoke(config_base.use_shapes(config_base.cascade_rcnn_config()))
  build_detector(c, 3)  # the valid config builds
  bad = copy.deepcopy(c)
  bad.model.roi_head.class_agnostic = False
  with pytest.raises(ValueError, match='config.model.roi_head.class_agnostic'):
    build_detector(bad, 3)
  bad = copy.deepcopy(c)
  bad.roi.stage_weights = (1.0,)
  with pytest.raises(ValueError, match='stage_weights'):
    build_detector(bad, 3)
  bad = copy.deepcopy(c)
  bad.roi.stage_stds = ((0.1, 0.1, 0.2, 0.2),)
  with pytest.raises(ValueError, match='stage_stds'):
    build_detector(bad, 3)
  bad = copy.deepcopy(c)
  bad.model.roi_head.box_output = 'gaussian'
  with pytest.raises(ValueError, match="box_output.*'gaussian'"):
    build_detector(bad, 3)
  bad = copy.deepcopy(c)
  bad.loss.box_loss = 'giou'
  with pytest.raises(ValueError, match="config.loss.box_loss.*'giou'"):
    build_detector(bad, 3)
  bad = config_base.make_smoke(config_base.use_shapes(config_base.obc_config()))
  bad.eval.bin_decoding = 'mode'
  with pytest.raises(ValueError, match='config.eval.bin_decoding'):
    build_detector(bad, 3)
  bad = config_base.make_smoke(config_base.use_shapes(config_base.faster_rcnn_config()))
  bad.eval.nms = 'fast'
  with pytest.raises(ValueError, match='config.eval.nms'):
    build_detector(bad, 3)


# ---------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize('name, detector', [('obc_shapes', 'faster_rcnn'),
                                            ('cascade_obc_shapes', 'cascade_rcnn')])
def test_train_and_eval_smoke(repo_root, shapes_cache, tmp_path, name, detector):
  """train.py on the OBC smoke configs: 10 steps, a checkpoint, COCO metrics."""
  workdir = str(tmp_path / 'run')
  log = cli.run_script(
      repo_root, shapes_cache, 'train.py', f'--config=configs/{name}.py:smoke',
      f'--workdir={workdir}', f'--config.data.shapes.cache_dir={shapes_cache}',
      '--mode=train_and_eval', '--config.train.num_steps=10',
      '--config.train.log_every=5', '--config.train.checkpoint_every=10',
      '--config.eval.num_images=8', timeout=400)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['detector'] == detector
  assert config['model']['roi_head']['box_output'] == 'bins'
  loss = logged(log, 'loss')
  assert sorted(loss) == [5, 10], log[-3000:]
  assert all(np.isfinite(v) for v in loss.values())
  stages = 2 if detector == 'cascade_rcnn' else 1
  for k in range(stages):
    assert sorted(logged(log, f'box_loss{k}')) == [5, 10], log[-3000:]
  assert not logged(log, f'box_loss{stages}')
  with open(os.path.join(workdir, 'eval_metrics.jsonl')) as f:
    (metrics,) = [json.loads(line) for line in f]
  assert metrics['step'] == 10 and metrics['num_images'] == 8
  for key in COCO_KEYS:
    assert 0.0 <= metrics[key] <= 1.0 or metrics[key] == -1.0, (key, metrics)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['10']
