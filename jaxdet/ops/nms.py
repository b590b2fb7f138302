"""Exact greedy non-maximum suppression with fixed-size outputs.

The greedy rule (keep the highest-scoring remaining candidate, drop the remaining ones
overlapping it, repeat) computed on score-sorted tiles of candidates (`_greedy_nms`):
O(N * (max_output + TILE)) time and memory per loop step linear in N, so N can be tens
of thousands (no N x N matrix). Works under `jax.jit` and `jax.vmap` (batch of images).
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jaxdet.ops import boxes as box_ops


TILE = 256  # candidates decided together; see `_greedy_nms`


def _greedy_nms(boxes, scores, iou_threshold, max_output, valid, groups):
  """Greedy NMS where only boxes of the same `groups` value suppress each other.

  Exact greedy NMS computed tile by tile: candidates are sorted by score and cut into
  tiles of `TILE`. A tile's candidates are first dropped by overlap with the boxes kept
  from earlier tiles (at most `max_output`, a [TILE, max_output] IoU), then decided
  together by iterating `keep_i = not any(keep_j and IoU_ij > t for j < i in the tile)`
  to its fixed point, which is unique and equal to the one-by-one greedy result (box
  i's status is final once those of the boxes before it are; a few iterations in
  practice). Tiles stop once `max_output` boxes are kept. One loop step per tile
  instead of per kept box: the one-box-per-iteration loop cost 1000 sequential steps
  for the RPN's proposals, which a GPU runs one small kernel at a time.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  n = boxes.shape[0]
  scores = jnp.asarray(scores, jnp.float32)
  # `scores > -inf` is also False for NaN, so NaN scores are never selected.
  alive = scores > -jnp.inf
  if valid is not None:
    alive = alive & jnp.asarray(valid, bool)
  if n == 0:
    return (jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool))
  groups = jnp.zeros((n,), jnp.int32) if groups is None else jnp.asarray(groups)

  # Descending score, ties to the lower index (as a stable argmax would pick them);
  # dead candidates last. Padded to whole tiles with dead entries.
  order = jnp.argsort(jnp.where(alive, -scores, jnp.inf), stable=True).astype(jnp.int32)
  tile = min(TILE, n)
  num_tiles = -(-n // tile)
  pad = num_tiles * tile - n
  order = jnp.pad(order, (0, pad))
  alive = jnp.pad(alive[order[:n]], (0, pad))
  boxes, groups = boxes[order], groups[order]
  earlier = jnp.arange(tile)[None, :] < jnp.arange(tile)[:, None]  # [i, j]: j < i

  def suppresses(a_boxes, a_groups, b_boxes, b_groups):
    """[len(a), len(b)]: b_j would suppress a_i if b_j is kept."""
    iou = box_ops.box_iou(a_boxes, b_boxes)
    return (iou > iou_threshold) & (a_groups[:, None] == b_groups[None, :])

  def tile_step(state):
    t, kept_boxes, kept_groups, kept_index, count = state
    start = t * tile
    t_boxes = jax.lax.dynamic_slice_in_dim(boxes, start, tile)
    t_groups = jax.lax.dynamic_slice_in_dim(groups, start, tile)
    t_order = jax.lax.dynamic_slice_in_dim(order, start, tile)
    cand = jax.lax.dynamic_slice_in_dim(alive, start, tile)
    kept_valid = jnp.arange(max_output) < count
    by_earlier_tiles = suppresses(t_boxes, t_groups, kept_boxes, kept_groups)
    cand = cand & ~jnp.any(by_earlier_tiles & kept_valid[None, :], axis=1)
    within = suppresses(t_boxes, t_groups, t_boxes, t_groups) & earlier

    def refine(keep_pair):
      keep, _ = keep_pair
      return cand & ~jnp.any(within & keep[None, :], axis=1), keep

    keep, _ = jax.lax.while_loop(lambda kp: jnp.any(kp[0] != kp[1]), refine,
                                 refine((cand, cand)))
    slot = jnp.where(keep, count + jnp.cumsum(keep) - 1, max_output)  # max_output: drop
    kept_boxes = kept_boxes.at[slot].set(t_boxes, mode='drop')
    kept_groups = kept_groups.at[slot].set(t_groups, mode='drop')
    kept_index = kept_index.at[slot].set(t_order, mode='drop')
    return t + 1, kept_boxes, kept_groups, kept_index, count + jnp.sum(keep)

  init = (jnp.int32(0), jnp.zeros((max_output, 4), jnp.float32),
          jnp.zeros((max_output,), groups.dtype), jnp.zeros((max_output,), jnp.int32),
          jnp.int32(0))
  _, _, _, indices, count = jax.lax.while_loop(
      lambda s: (s[0] < num_tiles) & (s[4] < max_output), tile_step, init)
  keep = jnp.arange(max_output) < count
  return jnp.where(keep, indices, 0), keep


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
