"""jaxdet.ops.boxes against plain NumPy references and hand-built edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import test_util as jtu

from jaxdet.ops import boxes as B


def _random_boxes(rng, shape, max_xy=100.0, max_wh=50.0, degenerate_frac=0.0):
  xy = rng.uniform(0, max_xy, shape + (2,))
  wh = rng.uniform(0, max_wh, shape + (2,))
  if degenerate_frac:
    wh = np.where(rng.uniform(size=shape + (2,)) < degenerate_frac, 0.0, wh)
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def np_area(b):
  b = np.asarray(b, np.float64)
  return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def np_pair_stats(a, b):
  """Aligned intersection, union and enclosing area (float64)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = iw * ih
  union = np_area(a) + np_area(b) - inter
  ew = np.clip(np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0]), 0, None)
  eh = np.clip(np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1]), 0, None)
  return inter, union, ew * eh


def np_iou(a, b):
  inter, union, _ = np_pair_stats(a, b)
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def np_giou(a, b):
  inter, union, enc = np_pair_stats(a, b)
  iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
  return iou - np.where(enc > 0, (enc - union) / np.where(enc > 0, enc, 1), 0.0)


def np_pairwise(fn, a, b):
  return fn(np.asarray(a)[..., :, None, :], np.asarray(b)[..., None, :, :])


def test_box_area():
  boxes = np.array([[0, 0, 10, 5], [3, 3, 3, 9], [5, 5, 2, 8], [0, 0, 0, 0]], np.float32)
  np.testing.assert_allclose(B.box_area(boxes), [50, 0, 0, 0])
  rng = np.random.default_rng(0)
  r = _random_boxes(rng, (3, 11))
  np.testing.assert_allclose(B.box_area(r), np_area(r), rtol=1e-5)


def test_box_iou_matches_numpy_batched_and_broadcast():
  rng = np.random.default_rng(1)
  a = _random_boxes(rng, (2, 7), max_xy=40, degenerate_frac=0.1)
  b = _random_boxes(rng, (2, 5), max_xy=40, degenerate_frac=0.1)
  got = np.asarray(B.box_iou(a, b))
  assert got.shape == (2, 7, 5)
  want = np_pairwise(np_iou, a, b)
  assert (want > 0.05).sum() > 5  # the random case really overlaps
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Leading dims broadcast: anchors [1, N, 4] against GT [3, M, 4].
  c = _random_boxes(rng, (3, 5), max_xy=40)
  got = np.asarray(jax.jit(B.box_iou)(a[:1], c))
  assert got.shape == (3, 7, 5)
  np.testing.assert_allclose(got, np_pairwise(np_iou, a[:1], c), rtol=1e-5, atol=1e-6)


def test_box_iou_hand_values_and_edge_cases():
  a = np.array([[0, 0, 10, 10]], np.float32)
  b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30],
                [0, 0, 0, 0], [3, 3, 3, 8]], np.float32)
  np.testing.assert_allclose(B.box_iou(a, b)[0], [1.0, 50 / 150, 0, 0, 0], rtol=1e-6)
  # Padded all-zero boxes against each other: 0, not NaN (0/0).
  z = np.zeros((3, 4), np.float32)
  np.testing.assert_array_equal(B.box_iou(z, z), np.zeros((3, 3)))
  np.testing.assert_array_equal(B.generalized_box_iou(z, z), np.zeros((3, 3)))
  # Empty sets keep static shapes.
  assert B.box_iou(np.zeros((0, 4), np.float32), b).shape == (0, 5)
  assert B.box_iou(a, np.zeros((0, 4), np.float32)).shape == (1, 0)
  assert B.generalized_box_iou(np.zeros((2, 0, 4), np.float32), b[None]).shape == (2, 0, 5)


def test_box_intersection():
  rng = np.random.default_rng(2)
  a = _random_boxes(rng, (6,))
  b = _random_boxes(rng, (4,))
  want = np_pairwise(lambda x, y: np_pair_stats(x, y)[0], a, b)
  np.testing.assert_allclose(B.box_intersection(a, b), want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(
      B.box_intersection(np.array([[0, 0, 4, 4]], np.float32),
                         np.array([[2, 1, 6, 2], [4, 0, 8, 4]], np.float32)), [[2, 0]])


def test_generalized_box_iou():
  rng = np.random.default_rng(3)
  a = _random_boxes(rng, (2, 6), degenerate_frac=0.1)
  b = _random_boxes(rng, (2, 9), degenerate_frac=0.1)
  got = np.asarray(B.generalized_box_iou(a, b))
  want = np_pairwise(np_giou, a, b)
  assert (want < -0.1).any() and (want > 0.1).any()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Disjoint unit squares 1 px apart: IoU 0, enclosure 3, union 2 -> -1/3.
  x = np.array([[0, 0, 1, 1]], np.float32)
  y = np.array([[2, 0, 3, 1]], np.float32)
  np.testing.assert_allclose(B.generalized_box_iou(x, y), [[-1 / 3]], rtol=1e-6)
  np.testing.assert_allclose(B.generalized_box_iou(x, x), [[1.0]])


def test_elementwise_iou_giou():
  rng = np.random.default_rng(4)
  a = _random_boxes(rng, (3, 20), max_xy=30, degenerate_frac=0.1)
  b = _random_boxes(rng, (3, 20), max_xy=30, degenerate_frac=0.1)
  iou, giou = jax.jit(B.elementwise_iou), jax.jit(B.elementwise_giou)
  np.testing.assert_allclose(iou(a, b), np_iou(a, b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(giou(a, b), np_giou(a, b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(iou(a, a)[np_area(a) > 0], 1.0, rtol=1e-6)
  # Diagonal of the pairwise version.
  np.testing.assert_allclose(giou(a, b)[0],
                             np.diag(np.asarray(jax.jit(B.generalized_box_iou)(a[0], b[0]))),
                             rtol=1e-6)


def test_elementwise_giou_gradient_matches_finite_differences():
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    a = jnp.asarray(_random_boxes(rng, (8,), max_xy=30), jnp.float64)
    b = jnp.asarray(_random_boxes(rng, (8,), max_xy=30), jnp.float64)
    f = jax.jit(lambda x, y: jnp.sum(B.elementwise_giou(x, y) * jnp.arange(1.0, 9.0)))
    jtu.check_grads(f, (a, b), order=1, modes=['rev'], eps=1e-4, atol=1e-4, rtol=1e-4)
    # A manual directional derivative, independent of check_grads.
    v = jnp.asarray(rng.normal(size=a.shape))
    g = jax.grad(f)(a, b)
    fd = (f(a + 1e-5 * v, b) - f(a - 1e-5 * v, b)) / 2e-5
    np.testing.assert_allclose(jnp.sum(g * v), fd, rtol=1e-5, atol=1e-7)


def test_elementwise_gradients_finite_for_degenerate_boxes():
  pred = jnp.array([[0, 0, 0, 0], [3, 3, 3, 8], [5, 5, 5, 5], [1, 1, 4, 4]], jnp.float32)
  tgt = jnp.array([[0, 0, 0, 0], [3, 3, 6, 8], [5, 5, 5, 5], [1, 1, 1, 1]], jnp.float32)
  for fn in (B.elementwise_giou, B.elementwise_iou):
    value = jax.jit(fn)(pred, tgt)
    grads = jax.jit(jax.grad(lambda p, t: jnp.sum(fn(p, t)), argnums=(0, 1)))(pred, tgt)
    assert np.isfinite(np.asarray(value)).all()
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  # Zero-width pred inside a real target: IoU 0, GIoU = 0 - (15 - 15) / 15 = 0.
  np.testing.assert_allclose(B.elementwise_giou(pred[1], tgt[1]), 0.0, atol=1e-7)


def test_format_conversions_and_clip():
  xyxy = np.array([[1, 2, 11, 6]], np.float32)
  cxcywh = np.array([[6, 4, 10, 4]], np.float32)
  np.testing.assert_allclose(B.xyxy_to_cxcywh(xyxy), cxcywh)
  np.testing.assert_allclose(B.cxcywh_to_xyxy(cxcywh), xyxy)
  r = _random_boxes(np.random.default_rng(6), (5, 3))
  np.testing.assert_allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(r)), r, atol=1e-5)
  boxes = np.array([[-5, -1, 30, 8], [2, 3, 4, 50]], np.float32)
  np.testing.assert_allclose(B.clip_boxes(boxes, 20, 25), [[0, 0, 25, 8], [2, 3, 4, 20]])
  # Per-image sizes broadcast against [B, N, 4].
  got = B.clip_boxes(np.stack([boxes, boxes]), np.array([[20.0], [10.0]]),
                     np.array([[25.0], [3.0]]))
  np.testing.assert_allclose(got[1], [[0, 0, 3, 8], [2, 3, 3, 10]])
  # [B] sizes against class-specific [B, N, C, 4] boxes: aligned to the leading axis.
  per_class = np.stack([np.stack([boxes] * 3, 1)] * 2)  # [2, 2, 3, 4]
  got = B.clip_boxes(per_class, np.array([20.0, 10.0]), np.array([25.0, 3.0]))
  np.testing.assert_allclose(got[1, :, 2], [[0, 0, 3, 8], [2, 3, 3, 10]])
  np.testing.assert_allclose(got[0, :, 0], [[0, 0, 25, 8], [2, 3, 4, 20]])


def np_encode(g, a, means, stds):
  g = np.asarray(g, np.float64)
  a = np.asarray(a, np.float64)
  aw, ah = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
  gw, gh = g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]
  d = np.stack([((g[..., 0] + g[..., 2]) - (a[..., 0] + a[..., 2])) / 2 / aw,
                ((g[..., 1] + g[..., 3]) - (a[..., 1] + a[..., 3])) / 2 / ah,
                np.log(gw / aw), np.log(gh / ah)], -1)
  return (d - np.asarray(means)) / np.asarray(stds)


def test_encode_hand_value():
  anchor = np.array([0, 0, 10, 10], np.float32)
  gt = np.array([5, 5, 25, 15], np.float32)  # centre (15, 10), size 20 x 10
  np.testing.assert_allclose(B.encode_deltas(gt, anchor), [1.0, 0.5, math.log(2), 0.0],
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      B.encode_deltas(gt, anchor, stds=(0.1, 0.1, 0.2, 0.2)),
      [10.0, 5.0, math.log(2) / 0.2, 0.0], rtol=1e-5, atol=1e-6)


def test_encode_decode_random_round_trip():
  rng = np.random.default_rng(7)
  anchors = _random_boxes(rng, (4, 30)) + np.array([0, 0, 1, 1], np.float32)
  gt = _random_boxes(rng, (4, 30)) + np.array([0, 0, 1, 1], np.float32)
  means, stds = (0.1, -0.2, 0.0, 0.05), (0.1, 0.1, 0.2, 0.2)
  deltas = np.asarray(jax.jit(B.encode_deltas, static_argnums=(2, 3))(gt, anchors, means, stds))
  np.testing.assert_allclose(deltas, np_encode(gt, anchors, means, stds), rtol=1e-4, atol=1e-4)
  decoded = B.decode_deltas(deltas, anchors, means, stds)
  np.testing.assert_allclose(decoded, gt, rtol=1e-5, atol=2e-4)


def test_encode_padded_boxes_finite():
  anchors = np.array([[0, 0, 32, 32], [0, 0, 0, 0]], np.float32)
  gt = np.zeros((2, 4), np.float32)
  out = np.asarray(B.encode_deltas(gt, anchors, stds=(0.1, 0.1, 0.2, 0.2)))
  assert np.isfinite(out).all()


def test_decode_clamps_and_clips():
  anchor = np.array([[10, 10, 20, 20]], np.float32)
  big = np.array([[0, 0, 50.0, -50.0]], np.float32)
  out = np.asarray(B.decode_deltas(big, anchor))
  ratio = 1000 / 16  # exp(|log(16/1000)|)
  np.testing.assert_allclose(out[0, 2] - out[0, 0], 10 * ratio, rtol=1e-5)
  np.testing.assert_allclose(out[0, 3] - out[0, 1], 10 / ratio, rtol=1e-5)
  np.testing.assert_allclose(out[0, [0, 2]].mean(), 15, rtol=1e-5)
  clipped = np.asarray(B.decode_deltas(np.array([[1.0, 0, 0, 0]], np.float32), anchor,
                                       clip_size=(100, 22)))
  np.testing.assert_allclose(clipped, [[20, 10, 22, 20]])
  assert np.isfinite(np.asarray(B.decode_deltas(np.full((1, 4), 1e4, np.float32),
                                                anchor))).all()
