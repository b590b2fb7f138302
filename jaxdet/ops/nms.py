"""Exact greedy non-maximum suppression with fixed-size outputs.

Each of `max_output` iterations picks the highest-scoring remaining candidate and
suppresses the remaining ones overlapping it, computing the IoU of one box against all
N: O(max_output * N) time and O(N) memory, so N can be tens of thousands (no N x N
matrix). Works under `jax.jit` and `jax.vmap` (batch of images).
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jaxdet.ops import boxes as box_ops


def _greedy_nms(boxes, scores, iou_threshold, max_output, valid, groups):
  """Greedy NMS where only boxes of the same `groups` value suppress each other."""
  boxes = jnp.asarray(boxes, jnp.float32)
  n = boxes.shape[0]
  scores = jnp.asarray(scores, jnp.float32)
  # `scores > -inf` is also False for NaN, so NaN scores are never selected.
  alive = scores > -jnp.inf
  if valid is not None:
    alive = alive & jnp.asarray(valid, bool)
  if groups is not None:
    groups = jnp.asarray(groups)
  if n == 0:
    return (jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool))
  positions = jnp.arange(n)

  def body(i, state):
    alive, indices, keep = state
    # argmax returns the lowest index among equal scores: a stable descending sort.
    best = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
    found = alive[best]
    iou = box_ops.elementwise_iou(boxes[best], boxes)  # [N]
    suppress = iou > iou_threshold
    if groups is not None:
      suppress = suppress & (groups == groups[best])
    # The picked box is removed explicitly: a zero-area box has IoU 0 with itself.
    # When nothing was alive, `alive` is all False already and stays so.
    alive = alive & ~suppress & (positions != best)
    indices = indices.at[i].set(jnp.where(found, best, 0).astype(jnp.int32))
    keep = keep.at[i].set(found)
    return alive, indices, keep

  init = (alive, jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool))
  _, indices, keep = jax.lax.fori_loop(0, max_output, body, init)
  return indices, keep


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold: float,
        max_output: int,
        valid: Optional[jnp.ndarray] = None) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS of `boxes [N, 4]` (px) with `scores [N]`.

  Repeatedly keeps the highest-scoring remaining box and drops every remaining box
  whose IoU with it is > `iou_threshold`. `valid [N]` (bool) marks real candidates;
  invalid, -inf and NaN scores are never selected. Ties in score go to the lower index.

  Returns `(indices [max_output] int32, keep_mask [max_output] bool)` in descending
  score order; slots after the candidates run out have keep_mask False and index 0.
  """
  return _greedy_nms(boxes, scores, iou_threshold, max_output, valid, None)


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, classes: jnp.ndarray,
                iou_threshold: float, max_output: int,
                valid: Optional[jnp.ndarray] = None) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Class-aware `nms`: boxes with different `classes [N]` (int) never suppress each other.

  Same arguments and return as `nms`. Equivalent to offsetting each box by
  class * (max coordinate + 1) and running `nms`, but done by masking the IoU with a
  same-class test, which is exact (large float32 offsets would round the coordinates).
  """
  return _greedy_nms(boxes, scores, iou_threshold, max_output, valid, classes)
