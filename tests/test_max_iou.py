"""jaxdet.assign.max_iou on hand-built cases and against a NumPy reference."""

import functools

import jax
import numpy as np

from jaxdet.assign.max_iou import max_iou_assign

ANCHORS = np.array([
    [0, 0, 10, 10],        # a0: coincides with GT g0 of image 0
    [100, 100, 110, 110],  # a1: only overlap of g2 (IoU 1/3): low-quality positive
    [50, 0, 60, 10],       # a2: coincides with g1
    [200, 200, 210, 210],  # a3: coincides with a *padded* GT only
    [54, 0, 64, 10],       # a4: IoU 6/14 with g1: ignored band
    [300, 300, 310, 310],  # a5
    [305, 300, 315, 310],  # a6
    [400, 0, 410, 10],     # a7
], np.float32)

GT = np.array([
    [[0, 0, 10, 10], [50, 0, 60, 10], [100, 100, 120, 115], [500, 500, 520, 520],
     [200, 200, 210, 210]],
    # g0 is padding coinciding with a7; g1 and g2 tie on a7 (IoU 0.5 each);
    # g3 overlaps a5 and a6 equally (0.4 each); g4 overlaps only a6 (0.2).
    [[400, 0, 410, 10], [400, 0, 410, 20], [400, 0, 410, 20], [300, 300, 325, 310],
     [310, 300, 330, 310]],
    # All padding.
    [[0, 0, 10, 10], [50, 0, 60, 10], [100, 100, 120, 115], [500, 500, 520, 520],
     [200, 200, 210, 210]],
], np.float32)

MASK = np.array([[True, True, True, True, False],
                 [False, True, True, True, True],
                 [False] * 5])


@functools.partial(jax.jit, static_argnames=('allow_low_quality',))
def assign_jit(anchors, gt, mask, pos_iou=0.5, neg_iou=0.4, allow_low_quality=True,
               min_low_quality_iou=0.0):
  return max_iou_assign(anchors, gt, mask, pos_iou, neg_iou, allow_low_quality,
                        min_low_quality_iou)


def as_np(out):
  return {k: np.asarray(v) for k, v in out.items()}


def test_hand_built_default():
  out = as_np(assign_jit(ANCHORS, GT, MASK))
  assert out['assign'].dtype == np.int32 and out['matched_gt'].dtype == np.int32
  assert out['max_iou'].dtype == np.float32
  # Image 0.
  np.testing.assert_array_equal(out['assign'][0], [1, 1, 1, 0, -1, 0, 0, 0])
  np.testing.assert_array_equal(out['matched_gt'][0, [0, 1, 2, 4]], [0, 2, 1, 1])
  np.testing.assert_allclose(out['max_iou'][0], [1, 1 / 3, 1, 0, 6 / 14, 0, 0, 0],
                             rtol=1e-6)
  # a3 coincides with a padded GT only: no match to index 4.
  assert out['matched_gt'][0, 3] != 4
  # Image 1: tie between g1 and g2 on a7 goes to the lower index; the padded g0 that
  # coincides with a7 is never matched. a5 and a6 tie as g3's best anchors (0.4, in
  # the ignored band) and both become positive; a6 is also g4's best anchor, but keeps
  # its own best GT g3 as its match.
  np.testing.assert_array_equal(out['assign'][1], [0, 0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(out['matched_gt'][1, 5:], [3, 3, 1])
  np.testing.assert_allclose(out['max_iou'][1, 5:], [0.4, 0.4, 0.5], rtol=1e-6)
  assert (out['matched_gt'][1] != 0).all()
  # Image 2: all padding -> all negative, matched 0, IoU 0.
  np.testing.assert_array_equal(out['assign'][2], 0)
  np.testing.assert_array_equal(out['matched_gt'][2], 0)
  np.testing.assert_array_equal(out['max_iou'][2], 0)


def test_low_quality_switches():
  out = as_np(assign_jit(ANCHORS, GT, MASK, allow_low_quality=False))
  np.testing.assert_array_equal(out['assign'][0], [1, 0, 1, 0, -1, 0, 0, 0])
  np.testing.assert_array_equal(out['assign'][1], [0, 0, 0, 0, 0, -1, -1, 1])
  # g2's best IoU 1/3 is not above 0.35: no low-quality positive from it.
  out = as_np(assign_jit(ANCHORS, GT, MASK, min_low_quality_iou=0.35))
  np.testing.assert_array_equal(out['assign'][0], [1, 0, 1, 0, -1, 0, 0, 0])
  np.testing.assert_array_equal(out['assign'][1], [0, 0, 0, 0, 0, 1, 1, 1])


def test_gt_overlapping_nothing_creates_no_positive():
  gt = np.array([[[500, 500, 520, 520], [0, 0, 0, 0]]], np.float32)
  out = as_np(max_iou_assign(ANCHORS, gt, np.array([[True, True]])))
  np.testing.assert_array_equal(out['assign'], 0)
  np.testing.assert_array_equal(out['max_iou'], 0)


def test_no_gt_dimension():
  out = as_np(max_iou_assign(ANCHORS, np.zeros((2, 0, 4), np.float32),
                             np.zeros((2, 0), bool)))
  assert out['assign'].shape == (2, 8)
  np.testing.assert_array_equal(out['assign'], 0)
  np.testing.assert_array_equal(out['matched_gt'], 0)


def np_assign(anchors, gt, mask, pos, neg, low_quality, min_lq):
  """Per-image loops over the same rule (ties: lowest GT index)."""
  a = np.asarray(anchors, np.float64)
  nb, ng = mask.shape
  na = len(a)
  matched = np.zeros((nb, na), np.int64)
  assign = np.zeros((nb, na), np.int64)
  best = np.zeros((nb, na))

  def iou(p, q):
    iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = iw * ih
    union = ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
    return inter / union if union > 0 else 0.0

  for b in range(nb):
    valid = [g for g in range(ng) if mask[b, g]]
    if not valid:
      continue
    m = np.array([[iou(a[i], gt[b, g]) for g in valid] for i in range(na)])
    j = m.argmax(1)
    matched[b] = np.array(valid)[j]
    best[b] = m.max(1)
    assign[b] = np.where(best[b] >= pos, 1, np.where(best[b] < neg, 0, -1))
    if low_quality:
      for col in range(len(valid)):
        top = m[:, col].max()
        if top > min_lq:
          assign[b][m[:, col] == top] = 1
  return matched, assign, best


def test_random_against_numpy_reference():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 120, (300, 2))
  wh = rng.uniform(8, 40, (300, 2))
  anchors = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  xy = rng.uniform(0, 120, (4, 7, 2))
  wh = rng.uniform(5, 60, (4, 7, 2))
  gt = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  mask = rng.uniform(size=(4, 7)) < 0.7
  mask[3] = False
  for low_quality, min_lq in [(True, 0.0), (False, 0.0), (True, 0.45)]:
    out = as_np(assign_jit(anchors, gt, mask, 0.5, 0.4, low_quality, min_lq))
    matched, assign, best = np_assign(anchors, gt, mask, 0.5, 0.4, low_quality, min_lq)
    np.testing.assert_allclose(out['max_iou'], best, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out['assign'], assign)
    np.testing.assert_array_equal(out['matched_gt'], matched)
    # The random case covers every outcome.
    assert {-1, 0, 1} <= set(np.unique(assign[:3]).tolist())
    if low_quality and min_lq == 0.0:
      assert ((assign == 1) & (best < 0.5)).sum() >= 1  # low-quality positives occur
