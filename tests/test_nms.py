"""jaxdet.ops.nms against a plain-Python greedy NMS."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops import nms as N


def np_iou_one(box, boxes):
  box = np.asarray(box, np.float64)
  boxes = np.asarray(boxes, np.float64)
  iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
  ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
  inter = iw * ih
  area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def ref_nms(boxes, scores, thr, max_out, valid=None, classes=None):
  """Textbook greedy NMS; returns the kept indices in selection order."""
  n = len(scores)
  valid = np.ones(n, bool) if valid is None else np.asarray(valid)
  cand = [i for i in range(n) if valid[i] and scores[i] > -np.inf]  # drops NaN too
  order = sorted(cand, key=lambda i: -scores[i])  # stable: ties keep the lower index
  suppressed = np.zeros(n, bool)
  keep = []
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    if len(keep) == max_out:
      break
    iou = np_iou_one(boxes[i], boxes)
    same = np.ones(n, bool) if classes is None else (np.asarray(classes) == classes[i])
    suppressed |= (iou > thr) & same
  return keep


def random_case(rng, n, spread=60.0, degenerate_frac=0.05):
  """Clustered boxes so that many overlap."""
  centres = rng.uniform(0, spread, (n, 2))
  wh = rng.uniform(5, 40, (n, 2))
  wh[rng.uniform(size=n) < degenerate_frac, 0] = 0.0
  boxes = np.concatenate([centres - wh / 2, centres + wh / 2], -1).astype(np.float32)
  scores = rng.uniform(size=n).astype(np.float32)
  return boxes, scores


def check_against_ref(indices, mask, ref):
  indices, mask = np.asarray(indices), np.asarray(mask)
  k = len(ref)
  assert mask.sum() == k
  np.testing.assert_array_equal(mask, np.arange(len(mask)) < k)
  np.testing.assert_array_equal(indices[:k], ref)
  np.testing.assert_array_equal(indices[k:], 0)


@functools.partial(jax.jit, static_argnums=(3,))
def jit_nms(boxes, scores, thr, max_out, valid):
  return N.nms(boxes, scores, thr, max_out, valid=valid)


@functools.partial(jax.jit, static_argnums=(4,))
def jit_batched(boxes, scores, classes, thr, max_out, valid):
  return N.batched_nms(boxes, scores, classes, thr, max_out, valid=valid)


def test_nms_matches_reference_random():
  total_kept = total_suppressed = 0
  for seed in range(20):
    rng = np.random.default_rng(seed)
    boxes, scores = random_case(rng, 64)
    valid = rng.uniform(size=64) > 0.15
    scores[rng.uniform(size=64) < 0.05] = -np.inf
    thr = np.float32([0.3, 0.5, 0.7][seed % 3])
    max_out = 40
    idx, mask = jit_nms(boxes, scores, thr, max_out, valid)
    ref = ref_nms(boxes, scores, thr, max_out, valid)
    check_against_ref(idx, mask, ref)
    total_kept += len(ref)
    total_suppressed += valid.sum() - len(ref)
  # The cases exercise suppression, not just sorting.
  assert total_suppressed > 200 and total_kept > 100


def test_nms_truncates_at_max_output_and_sorts():
  rng = np.random.default_rng(100)
  boxes, scores = random_case(rng, 64, spread=400.0)
  idx, mask = jit_nms(boxes, scores, np.float32(0.5), 8, np.ones(64, bool))
  ref = ref_nms(boxes, scores, 0.5, 8)
  assert len(ref) == 8
  check_against_ref(idx, mask, ref)
  kept_scores = scores[np.asarray(idx)]
  assert (np.diff(kept_scores) <= 0).all()


def test_invalid_and_nonfinite_never_selected():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60],
                    [80, 80, 90, 90], [100, 0, 110, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, -np.inf, np.nan], np.float32)
  valid = np.array([False, True, True, True, True])
  idx, mask = N.nms(boxes, scores, 0.5, 5, valid=valid)
  # Box 0 is invalid: never picked and it suppresses nothing, so box 1 survives.
  np.testing.assert_array_equal(np.asarray(idx), [1, 2, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(mask), [True, True, False, False, False])
  # Without `valid`, box 0 suppresses box 1 (IoU 81/100).
  idx, mask = N.nms(boxes, scores, 0.5, 5)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(mask)], [0, 2])
  # The same pair with a threshold above its IoU keeps both.
  idx, mask = N.nms(boxes, scores, 0.85, 5)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(mask)], [0, 1, 2])


def test_fewer_candidates_and_empty():
  boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  idx, mask = N.nms(boxes, np.array([0.2, 0.6], np.float32), 0.5, 6)
  np.testing.assert_array_equal(np.asarray(idx), [1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(mask), [True, True, False, False, False, False])
  idx, mask = N.nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 3)
  assert idx.shape == (3,) and idx.dtype == jnp.int32
  assert not np.asarray(mask).any()
  # All padding.
  idx, mask = N.nms(np.zeros((4, 4), np.float32), np.ones(4, np.float32), 0.5, 3,
                    valid=np.zeros(4, bool))
  assert not np.asarray(mask).any()
  # Identical zero-area boxes: IoU 0, none suppresses another.
  idx, mask = N.nms(np.zeros((3, 4), np.float32), np.array([0.1, 0.3, 0.2], np.float32),
                    0.5, 4)
  np.testing.assert_array_equal(np.asarray(idx), [1, 2, 0, 0])
  np.testing.assert_array_equal(np.asarray(mask), [True, True, True, False])


def test_batched_nms_class_aware():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  idx, mask = N.batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5, 4)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(mask)], [0, 1])
  idx, mask = N.batched_nms(boxes, scores, np.array([3, 1, 2]), 0.5, 4)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(mask)], [0, 1, 2])
  idx, mask = N.nms(boxes, scores, 0.5, 4)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(mask)], [0])


def test_batched_nms_matches_reference_random():
  for seed in range(10):
    rng = np.random.default_rng(1000 + seed)
    boxes, scores = random_case(rng, 64, spread=40.0)
    classes = rng.integers(0, 4, 64)
    valid = rng.uniform(size=64) > 0.1
    idx, mask = jit_batched(boxes, scores, classes, np.float32(0.5), 48, valid)
    check_against_ref(idx, mask, ref_nms(boxes, scores, 0.5, 48, valid, classes))


def test_vmap_and_jit():
  rng = np.random.default_rng(7)
  cases = [random_case(rng, 32) for _ in range(3)]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  valid = rng.uniform(size=(3, 32)) > 0.2
  classes = rng.integers(0, 3, (3, 32))
  fn = jax.jit(jax.vmap(lambda b, s, v: N.nms(b, s, 0.5, 20, valid=v)))
  idx, mask = fn(boxes, scores, valid)
  assert idx.shape == (3, 20) and mask.shape == (3, 20)
  for i in range(3):
    check_against_ref(idx[i], mask[i], ref_nms(boxes[i], scores[i], 0.5, 20, valid[i]))
  fn = jax.jit(jax.vmap(lambda b, s, c: N.batched_nms(b, s, c, 0.4, 20)))
  idx, mask = fn(boxes, scores, classes)
  for i in range(3):
    check_against_ref(idx[i], mask[i],
                      ref_nms(boxes[i], scores[i], 0.4, 20, None, classes[i]))


def test_large_n():
  rng = np.random.default_rng(11)
  boxes, scores = random_case(rng, 10000, spread=800.0)
  idx, mask = jit_nms(boxes, scores, np.float32(0.5), 100, np.ones(10000, bool))
  check_against_ref(idx, mask, ref_nms(boxes, scores, 0.5, 100))


@pytest.mark.parametrize('tile', [1, 7, 16])
def test_tiles_match_reference(monkeypatch, tile):
  # Small tiles (7 does not divide N) so that suppression across tiles, the padding of
  # the last tile and the stop at max_output are all exercised; fresh traces per tile.
  monkeypatch.setattr(N, 'TILE', tile)
  rng = np.random.default_rng(2000 + tile)
  cases = [random_case(rng, 50, spread=50.0) for _ in range(6)]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  scores[:, :6] = scores[:, 6:7]  # ties go to the lower index
  scores[rng.uniform(size=scores.shape) < 0.05] = -np.inf
  valid = rng.uniform(size=scores.shape) > 0.1
  classes = rng.integers(0, 3, scores.shape)
  thr = np.float32([0.3, 0.5, 0.7] * 2)
  max_out = 32
  idx, mask = jax.jit(jax.vmap(lambda b, s, t, v: N.nms(b, s, t, max_out, valid=v)))(
      boxes, scores, thr, valid)
  cidx, cmask = jax.jit(jax.vmap(
      lambda b, s, c, t, v: N.batched_nms(b, s, c, t, max_out, valid=v)))(
          boxes, scores, classes, thr, valid)
  truncated = 0
  for i in range(6):
    ref = ref_nms(boxes[i], scores[i], thr[i], max_out, valid[i])
    check_against_ref(idx[i], mask[i], ref)
    truncated += len(ref_nms(boxes[i], scores[i], thr[i], 50, valid[i])) > max_out
    check_against_ref(cidx[i], cmask[i],
                      ref_nms(boxes[i], scores[i], thr[i], max_out, valid[i], classes[i]))
  assert 0 < truncated < 6  # some cases stop at max_output, some run out of boxes
