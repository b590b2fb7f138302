"""jaxdet.postprocess: per-level candidate selection against a NumPy full sort."""

import jax
import numpy as np
import pytest

from jaxdet import postprocess


def _numpy_top_pairs(scores, k):
  """(anchor, class) of the k highest scores of [A, C], by a full sort of A * C."""
  order = np.argsort(-scores.reshape(-1), kind='stable')[:k]
  return order // scores.shape[1], order % scores.shape[1]


@pytest.mark.parametrize('num_anchors, num_classes, k', [
    (500, 7, 40),    # more anchors than k: the two-step path
    (30, 5, 40),     # fewer anchors than k, k < A * C
    (6, 3, 40),      # k over A * C: every pair
    (300, 1, 25),    # one class (RPN-like)
])
def test_level_candidates_are_the_top_pairs(num_anchors, num_classes, k):
  rng = np.random.default_rng(num_anchors + k)
  scores = rng.uniform(size=(num_anchors, num_classes)).astype(np.float32)
  boxes = rng.uniform(0, 100, (num_anchors, 4)).astype(np.float32)
  got_boxes, got_scores, got_classes = jax.jit(
      postprocess._level_candidates, static_argnums=2)(scores, boxes, k)
  anchor, cls = _numpy_top_pairs(scores, k)
  np.testing.assert_array_equal(got_classes, cls)
  np.testing.assert_array_equal(got_scores, scores[anchor, cls])
  np.testing.assert_array_equal(got_boxes, boxes[anchor])


def test_level_candidates_when_one_anchor_holds_most_top_pairs():
  # Anchor 3's classes take 6 of the 8 best pairs: the anchor pre-selection must still
  # keep the anchors of the other two (a one-pair-per-anchor shortcut would not).
  rng = np.random.default_rng(0)
  scores = rng.uniform(0, 0.5, (50, 6)).astype(np.float32)
  scores[3] = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94]
  scores[10, 2], scores[40, 5] = 0.93, 0.92
  boxes = rng.uniform(0, 100, (50, 6, 4)).astype(np.float32)  # class-specific boxes
  got_boxes, got_scores, got_classes = postprocess._level_candidates(scores, boxes, 8)
  anchor, cls = _numpy_top_pairs(scores, 8)
  np.testing.assert_array_equal(anchor, [3] * 6 + [10, 40])
  np.testing.assert_array_equal(got_classes, cls)
  np.testing.assert_array_equal(got_scores, scores[anchor, cls])
  np.testing.assert_array_equal(got_boxes, boxes[anchor, cls])
