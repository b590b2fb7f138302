"""jaxdet.losses against NumPy formulas (float64) and hand values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import test_util as jtu

from jaxdet import losses as L


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def np_bce(x, t):
  return -(t * np_log_sigmoid(x) + (1 - t) * np_log_sigmoid(-x))


def np_focal(x, t, alpha, gamma):
  """torchvision.ops.sigmoid_focal_loss(reduction='none'), in float64."""
  p = np_sigmoid(x)
  p_t = p * t + (1 - p) * (1 - t)
  loss = np_bce(x, t) * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
  return loss


def _logits_and_targets(seed, shape=(4, 50)):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 4, shape)
  logits[0, :6] = [-100, 100, -30, 30, -1e4, 1e4]  # saturating logits
  targets = (rng.uniform(size=shape) < 0.3).astype(np.float64)
  return logits.astype(np.float32), targets.astype(np.float32)


def test_focal_matches_numpy_hard_targets():
  logits, targets = _logits_and_targets(0)
  for alpha, gamma in [(0.25, 2.0), (0.5, 1.0), (-1.0, 2.0), (0.25, 0.0)]:
    got = np.asarray(L.sigmoid_focal_loss(logits, targets, alpha, gamma))
    want = np_focal(logits.astype(np.float64), targets, alpha, gamma)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_focal_soft_targets_and_hand_values():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (64,)).astype(np.float32)
  targets = rng.uniform(size=(64,)).astype(np.float32)
  np.testing.assert_allclose(L.sigmoid_focal_loss(logits, targets),
                             np_focal(logits, targets, 0.25, 2.0), rtol=2e-5, atol=1e-6)
  # logit 0, target 1: 0.25 * 0.5^2 * log 2; target 0: 0.75 * 0.5^2 * log 2.
  np.testing.assert_allclose(L.sigmoid_focal_loss(jnp.zeros(2), jnp.array([1.0, 0.0])),
                             [0.0625 * math.log(2), 0.1875 * math.log(2)], rtol=1e-6)
  # Confidently wrong at logit -100 with target 1: BCE 100, p_t ~ 0 -> 0.25 * 100.
  np.testing.assert_allclose(L.sigmoid_focal_loss(jnp.array([-100.0]), jnp.array([1.0])),
                             [25.0], rtol=1e-6)


def test_focal_gradients_finite_and_correct():
  logits, targets = _logits_and_targets(2, (2, 16))
  for gamma in (2.0, 0.0):
    g = jax.grad(lambda x: jnp.sum(L.sigmoid_focal_loss(x, targets, 0.25, gamma)))(logits)
    assert np.isfinite(np.asarray(g)).all()
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(3).normal(0, 2, (20,)))
    t = jnp.asarray(np.random.default_rng(4).uniform(size=(20,)))
    jtu.check_grads(jax.jit(lambda z: jnp.sum(L.sigmoid_focal_loss(z, t))), (x,), order=1,
                    modes=['rev'], eps=1e-5, atol=1e-6, rtol=1e-5)


def test_bce_with_logits():
  logits, targets = _logits_and_targets(5)
  soft = np.random.default_rng(6).uniform(size=logits.shape).astype(np.float32)
  for t in (targets, soft):
    got = np.asarray(L.binary_cross_entropy_with_logits(logits, t))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np_bce(logits.astype(np.float64), t), rtol=2e-5,
                               atol=1e-6)
  np.testing.assert_allclose(L.binary_cross_entropy_with_logits(0.0, 1.0), math.log(2))


def test_smooth_l1_and_l1():
  pred = np.array([0.0, 0.2, -0.2, 1.0, -1.0, 0.5, 3.0], np.float32)
  target = np.zeros_like(pred)
  # beta 0.5: below -> 0.5 d^2 / beta, above -> |d| - beta / 2, continuous at beta.
  np.testing.assert_allclose(L.smooth_l1_loss(pred, target, 0.5),
                             [0, 0.04, 0.04, 0.75, 0.75, 0.25, 2.75], rtol=1e-6)
  np.testing.assert_allclose(L.smooth_l1_loss(pred, target, 0.0), np.abs(pred))
  np.testing.assert_allclose(L.l1_loss(pred, target + 1.0), np.abs(pred - 1.0))
  rng = np.random.default_rng(7)
  p = rng.normal(0, 1, (3, 40)).astype(np.float32)
  t = rng.normal(0, 1, (3, 40)).astype(np.float32)
  d = np.abs(p.astype(np.float64) - t)
  want = np.where(d < 0.11, 0.5 * d ** 2 / 0.11, d - 0.055)
  np.testing.assert_allclose(L.smooth_l1_loss(p, t, 0.11), want, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda x: jnp.sum(L.smooth_l1_loss(x, jnp.asarray(t), 0.11)))(p)
  np.testing.assert_allclose(g, np.clip((p - t) / 0.11, -1, 1), rtol=1e-4, atol=1e-5)


def test_giou_loss():
  a = np.array([[0, 0, 10, 10], [0, 0, 1, 1], [0, 0, 10, 10]], np.float32)
  b = np.array([[0, 0, 10, 10], [2, 0, 3, 1], [5, 0, 15, 10]], np.float32)
  # identical -> 0; disjoint -> 1 + 1/3; half overlap IoU 1/3, enclosure = union -> 2/3.
  np.testing.assert_allclose(L.giou_loss(a, b), [0, 4 / 3, 2 / 3], rtol=1e-6, atol=1e-7)
  degenerate = jnp.zeros((2, 4))
  g = jax.grad(lambda p: jnp.sum(L.giou_loss(p, degenerate)))(degenerate)
  assert np.isfinite(np.asarray(g)).all()
  with jax.enable_x64(True):
    rng = np.random.default_rng(8)
    xy = rng.uniform(0, 30, (2, 6, 2))
    wh = rng.uniform(2, 30, (2, 6, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + wh], -1))
    jtu.check_grads(jax.jit(lambda p: jnp.sum(L.giou_loss(p, boxes[1]))), (boxes[0],), order=1,
                    modes=['rev'], eps=1e-4, atol=1e-4, rtol=1e-4)


def test_softmax_cross_entropy():
  rng = np.random.default_rng(9)
  logits = rng.normal(0, 3, (3, 5, 7)).astype(np.float32)
  logits[0, 0] *= 1000  # large logits stay finite
  labels = rng.integers(0, 7, (3, 5))
  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  log_probs = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
  want = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
  got = np.asarray(L.softmax_cross_entropy(logits, labels))
  assert got.shape == (3, 5) and np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(L.softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([1, -1])),
                             [math.log(4), 0.0], rtol=1e-6)
