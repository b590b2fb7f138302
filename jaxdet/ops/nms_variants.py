"""Soft-NMS and CL-balanced NMS with fixed-size outputs.

- `soft_nms`: Gaussian Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection
  With One Line of Code", 2017), the comparator of CLE's Table 3.
- `cl_balanced_nms`: Classification-Localization-balanced NMS (CLE, Sec. 2.3, eqs. 8-9;
  papers/cle_classification_localization_equilibrated.md).

Both follow `jaxdet.ops.nms`: `max_output` iterations of a `fori_loop`, each an argmax over
the remaining scores and one row of IoUs (O(max_output * N), never an N x N matrix),
`valid` and `classes` masks (boxes of different classes never interact), ties to the
lowest index, and fixed-size outputs with a validity mask. Both return the score each
kept box is reported with, since they change scores. Work under `jax.jit` and `jax.vmap`.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jaxdet.ops import boxes as box_ops
from jaxdet.ops import topk

CL_SCORES = ('classification', 'cluster_max', 'balanced')

# Divides by the diagonal of a cluster's enclosing box; 0 only for zero-area clusters.
_EPS = 1e-6


def _prepare(boxes, scores, valid, classes):
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  # `scores > -inf` is also False for NaN, so NaN scores are never selected.
  alive = scores > -jnp.inf
  if valid is not None:
    alive = alive & jnp.asarray(valid, bool)
  if classes is not None:
    classes = jnp.asarray(classes)
  return boxes, scores, alive, classes


def _empty(max_output):
  return (jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), jnp.float32),
          jnp.zeros((max_output,), bool))


def soft_nms(boxes: jnp.ndarray, scores: jnp.ndarray, max_output: int,
             sigma: float = 0.5, min_score: float = 1e-3,
             valid: Optional[jnp.ndarray] = None,
             classes: Optional[jnp.ndarray] = None
             ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Gaussian Soft-NMS of `boxes [N, 4]` (px) with `scores [N]`.

  Repeatedly keeps the highest-scoring remaining box M and multiplies the score of every
  remaining box b (of M's class, when `classes` is given) by exp(-IoU(M, b)^2 / sigma);
  boxes whose score falls below `min_score` are dropped (as are those starting below
  it). There is no IoU threshold: the Gaussian decays every overlap (mmcv's and the
  original code's `method='gaussian'`).

  Args:
    boxes: `[N, 4]` boxes in px.
    scores: `[N]` scores; invalid, -inf and NaN ones are never selected.
    max_output: static number of outputs (= iterations).
    sigma: the Gaussian's width (the paper's 0.5), > 0.
    min_score: pruning threshold on decayed scores (mmcv's default 1e-3).
    valid: `[N]` bool, real candidates.
    classes: `[N]` int: class-aware when given.
  Returns:
    `(indices [max_output] int32, scores [max_output] float32, keep [max_output] bool)`:
    kept boxes in selection order, which is non-increasing in the (decayed) score each
    was selected with; slots after the candidates run out have keep False, index 0 and
    score 0.
  """
  boxes, scores, alive, classes = _prepare(boxes, scores, valid, classes)
  n = boxes.shape[0]
  if n == 0:
    return _empty(max_output)
  alive = alive & (scores >= min_score)
  positions = jnp.arange(n)

  def body(i, state):
    scores, alive, indices, out_scores, keep = state
    best = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
    found = alive[best]
    iou = box_ops.elementwise_iou(boxes[best], boxes)
    decay = jnp.exp(-jnp.square(iou) / sigma)
    if classes is not None:
      decay = jnp.where(classes == classes[best], decay, 1.0)
    indices = indices.at[i].set(jnp.where(found, best, 0).astype(jnp.int32))
    out_scores = out_scores.at[i].set(jnp.where(found, scores[best], 0.0))
    keep = keep.at[i].set(found)
    scores = scores * decay
    alive = alive & (positions != best) & (scores >= min_score)
    return scores, alive, indices, out_scores, keep

  init = (scores, alive, *_empty(max_output))
  _, _, indices, out_scores, keep = jax.lax.fori_loop(0, max_output, body, init)
  return indices, out_scores, keep


def cl_balanced_nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold: float,
                    max_output: int, temperature: float = 1.0, loc_weight: float = 1.0,
                    output_score: str = 'classification',
                    valid: Optional[jnp.ndarray] = None,
                    classes: Optional[jnp.ndarray] = None
                    ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """CL-balanced NMS (CLE eqs. 8-9) of `boxes [N, 4]` (px) with classification `scores [N]`.

  Each iteration:
  1. the reference is the remaining box with the highest score p;
  2. its cluster is the reference plus every remaining box (of its class) with IoU >
     `iou_threshold` with it: the boxes standard NMS would suppress;
  3. the cluster's approximate object centre is the softmax(p / temperature)-weighted
     mean of the members' centres (eq. 8);
  4. each member gets s = p + loc_weight * (1 - dist), dist its centre's distance to
     that centre divided by the diagonal of the box enclosing the cluster, so in
     [0, 1] (eq. 9 read as a localization score that grows as the distance shrinks);
  5. the member with the highest s is kept and the whole cluster leaves the candidates.
  With `loc_weight=0` this is exactly greedy NMS (`jaxdet.ops.nms`): the reference
  wins every tie.

  Args:
    boxes: `[N, 4]` boxes in px.
    scores: `[N]` classification scores in [0, 1]; invalid, -inf and NaN ones are
      never selected.
    iou_threshold: cluster membership, IoU with the reference strictly above it.
    max_output: static number of outputs (= iterations = clusters).
    temperature: of eq. 8's softmax (the paper's: 1), > 0.
    loc_weight: weight of the localization score in eq. 9 (the paper's: 1).
    output_score: the score a kept box is reported with: 'classification' its own p
      (eq. 9's s only selects); 'cluster_max' the reference's p, the cluster's
      highest (IoU-Net's score update); 'balanced' its s = p + loc_weight * (1 - dist).
    valid: `[N]` bool, real candidates.
    classes: `[N]` int: class-aware when given.
  Returns:
    `(indices [max_output] int32, scores [max_output] float32, keep [max_output] bool)`,
    sorted by descending reported score (ties: earlier cluster first); slots after
    the candidates run out have keep False, index 0 and score 0.
  """
  if output_score not in CL_SCORES:
    raise ValueError(f'config.eval.cl_nms_score: unknown {output_score!r} '
                     f'(expected one of {CL_SCORES})')
  boxes, scores, alive, classes = _prepare(boxes, scores, valid, classes)
  n = boxes.shape[0]
  if n == 0:
    return _empty(max_output)
  positions = jnp.arange(n)
  centres = (boxes[:, :2] + boxes[:, 2:]) * 0.5

  def body(i, state):
    alive, indices, out_scores, keep = state
    ref = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
    found = alive[ref]
    member = alive & (box_ops.elementwise_iou(boxes[ref], boxes) > iou_threshold)
    if classes is not None:
      member = member & (classes == classes[ref])
    # The reference explicitly: a zero-area box has IoU 0 with itself.
    member = member | (positions == ref)

    logits = jnp.where(member, scores / temperature, -jnp.inf)
    weights = jnp.exp(logits - jnp.max(logits))
    weights = weights / jnp.sum(weights)
    centre = jnp.sum(weights[:, None] * jnp.where(member[:, None], centres, 0.0), axis=0)
    lo = jnp.min(jnp.where(member[:, None], boxes[:, :2], jnp.inf), axis=0)
    hi = jnp.max(jnp.where(member[:, None], boxes[:, 2:], -jnp.inf), axis=0)
    diagonal = jnp.sqrt(jnp.sum(jnp.square(jnp.maximum(hi - lo, 0.0))))
    dist = jnp.sqrt(jnp.sum(jnp.square(centres - centre), axis=-1))
    dist = jnp.minimum(dist / jnp.maximum(diagonal, _EPS), 1.0)
    balanced = scores + loc_weight * (1.0 - dist)
    kept = jnp.argmax(jnp.where(member, balanced, -jnp.inf))

    reported = {'classification': scores[kept], 'cluster_max': scores[ref],
                'balanced': balanced[kept]}[output_score]
    indices = indices.at[i].set(jnp.where(found, kept, 0).astype(jnp.int32))
    out_scores = out_scores.at[i].set(jnp.where(found, reported, 0.0))
    keep = keep.at[i].set(found)
    return alive & ~member, indices, out_scores, keep

  init = (alive, *_empty(max_output))
  _, indices, out_scores, keep = jax.lax.fori_loop(0, max_output, body, init)
  if output_score == 'cluster_max':  # references come in descending score already
    return indices, out_scores, keep
  # top_k puts equal values in index order: a stable sort, empty slots last.
  _, order = topk.top_k(jnp.where(keep, out_scores, -jnp.inf), max_output)
  return indices[order], out_scores[order], keep[order]
