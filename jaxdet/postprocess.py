"""Turning dense per-anchor predictions into a fixed number of detections per image."""

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jaxdet.ops import nms as nms_lib
from jaxdet.ops import nms_variants
from jaxdet.ops import topk

NMS_METHODS = ('standard', 'soft', 'cl_balanced')


def iou_aware_scores(cls_probs: jax.Array, iou_probs: jax.Array,
                     alpha: float | None) -> jax.Array:
  """Detection confidence of the IoU-aware detector (Wu et al. 2020, eq. 5).

  Args:
    cls_probs: [B, A, C] classification probabilities p.
    iou_probs: [B, A] predicted IoUs (class-agnostic, one per anchor).
    alpha: static Python float in [0, 1]: p^alpha * IoU^(1 - alpha); None: p * IoU
      (the paper's "none" row of Table 3).
  Returns:
    [B, A, C] scores in [0, 1].
  """
  iou = iou_probs[..., None]
  if alpha is None:
    return cls_probs * iou
  # The end points are exact (no pow rounding, no 0^0): alpha = 1 ranks by p alone.
  if alpha == 1:
    return cls_probs
  if alpha == 0:
    return jnp.broadcast_to(iou, cls_probs.shape)
  return cls_probs ** alpha * iou ** (1.0 - alpha)


def _level_candidates(scores, boxes, top_k):
  """Top-k (anchor, class) pairs of one level of one image.

  Args:
    scores: [A_l, C] detection scores in [0, 1].
    boxes: [A_l, 4] decoded boxes of the level's anchors, or [A_l, C, 4] one per class
      (class-specific box heads).
    top_k: static number of candidates kept.
  Returns:
    boxes [k, 4], scores [k], classes [k] int32 with k = min(top_k, A_l * C).
  """
  num_anchors, num_classes = scores.shape
  k = min(top_k, scores.size)
  # Exact two-step top-k: a pair among the k best has fewer than k anchors whose best
  # class scores higher than it, so its anchor is among the k anchors with the highest
  # max score. Sorting A_l maxima and then k * C pairs instead of all A_l * C pairs
  # (12M on P3 at 1333x800 with 80 classes) is what makes GPU inference fast.
  anchors = jnp.arange(num_anchors)
  if num_anchors > k:
    _, anchors = topk.top_k(scores.max(axis=-1), k)
  top_scores, flat = topk.top_k(scores[anchors].reshape(-1), k)
  anchor = anchors[flat // num_classes]
  classes = (flat % num_classes).astype(jnp.int32)
  if boxes.ndim == 3:
    return boxes[anchor, classes], top_scores, classes
  return boxes[anchor], top_scores, classes


def nms_kwargs(eval_config: ml_collections.ConfigDict) -> dict:
  """The suppression fields of `config.eval` as keyword arguments of `dense_detections`.

  Checks them, so that a bad value fails when the detector is built, naming the field.
  Fields a hand-made config lacks take the defaults of `config_base.retinanet_config`.
  """
  e = eval_config
  kw = dict(nms=e.get('nms', 'standard'),
            soft_nms_sigma=e.get('soft_nms_sigma', 0.5),
            soft_nms_min_score=e.get('soft_nms_min_score', 1e-3),
            cl_nms_temperature=e.get('cl_nms_temperature', 1.0),
            cl_nms_loc_weight=e.get('cl_nms_loc_weight', 1.0),
            cl_nms_score=e.get('cl_nms_score', 'classification'))
  if kw['nms'] not in NMS_METHODS:
    raise ValueError(f'config.eval.nms: unknown {kw["nms"]!r} (expected one of '
                     f'{NMS_METHODS})')
  for name in ('soft_nms_sigma', 'cl_nms_temperature'):
    if not kw[name] > 0:
      raise ValueError(f'config.eval.{name}: must be > 0, got {kw[name]!r}')
  if kw['cl_nms_score'] not in nms_variants.CL_SCORES:
    raise ValueError(f'config.eval.cl_nms_score: unknown {kw["cl_nms_score"]!r} '
                     f'(expected one of {nms_variants.CL_SCORES})')
  return kw


def class_aware_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array,
                    valid: jax.Array, *, iou_threshold: float, max_output: int,
                    nms: str = 'standard', soft_nms_sigma: float = 0.5,
                    soft_nms_min_score: float = 1e-3, cl_nms_temperature: float = 1.0,
                    cl_nms_loc_weight: float = 1.0,
                    cl_nms_score: str = 'classification'):
  """The class-aware suppression `nms` names, over one image's candidates.

  Args:
    boxes: [N, 4] px; scores: [N]; classes: [N] int; valid: [N] bool.
    iou_threshold: suppression ('standard') or cluster ('cl_balanced') IoU; Gaussian
      Soft-NMS has none.
    nms: 'standard' (greedy, `ops.nms.batched_nms`), 'soft' (Gaussian,
      `ops.nms_variants.soft_nms`) or 'cl_balanced' (CLE eqs. 8-9,
      `ops.nms_variants.cl_balanced_nms`); the other arguments are theirs.
  Returns:
    (indices [max_output] int32, scores [max_output], keep [max_output] bool), sorted
    by descending score: the scores are the ones the method reports (Soft-NMS decays
    them).
  """
  if nms == 'standard':
    keep, keep_valid = nms_lib.batched_nms(boxes, scores, classes, iou_threshold,
                                           max_output, valid=valid)
    return keep, jnp.where(keep_valid, scores[keep], 0.0), keep_valid
  if nms == 'soft':
    return nms_variants.soft_nms(boxes, scores, max_output, soft_nms_sigma,
                                 soft_nms_min_score, valid=valid, classes=classes)
  if nms == 'cl_balanced':
    return nms_variants.cl_balanced_nms(
        boxes, scores, iou_threshold, max_output, cl_nms_temperature, cl_nms_loc_weight,
        cl_nms_score, valid=valid, classes=classes)
  raise ValueError(f'config.eval.nms: unknown {nms!r} (expected one of {NMS_METHODS})')


def dense_detections(scores: Sequence[jax.Array], boxes: Sequence[jax.Array], *,
                     score_threshold: float, pre_nms_top_k: int, nms_iou: float,
                     max_detections: int, **nms_options) -> dict:
  """Class-aware detections from per-level dense predictions (RetinaNet, FCOS; also
  the RoIs of a two-stage detector, as one level).

  Per level, the `pre_nms_top_k` highest (location, class) scores above
  `score_threshold` are kept; all levels then go through one class-aware NMS.

  Args:
    scores: per level [B, A_l, C] scores in [0, 1] (already fused where a method
      fuses classification with a quality estimate).
    boxes: per level [B, A_l, 4] decoded boxes, pixels of the network input (or
      [B, A_l, C, 4], a box per class).
    nms_options: which suppression and its parameters (`class_aware_nms`; from a
      config: `nms_kwargs(config.eval)`); default greedy NMS at `nms_iou`.
  Returns:
    dict with boxes [B, D, 4], scores [B, D], classes [B, D] int32 and
    valid [B, D] bool, D = max_detections, sorted by descending score.
  """
  def one_image(scores, boxes):
    cands = [_level_candidates(s, b, pre_nms_top_k) for s, b in zip(scores, boxes)]
    cand_boxes = jnp.concatenate([c[0] for c in cands])
    cand_scores = jnp.concatenate([c[1] for c in cands])
    cand_classes = jnp.concatenate([c[2] for c in cands])
    candidate = cand_scores > score_threshold
    keep, keep_scores, keep_valid = class_aware_nms(
        cand_boxes, cand_scores, cand_classes, candidate, iou_threshold=nms_iou,
        max_output=max_detections, **nms_options)
    return dict(
        boxes=jnp.where(keep_valid[:, None], cand_boxes[keep], 0.0),
        scores=jnp.where(keep_valid, keep_scores, 0.0),
        classes=jnp.where(keep_valid, cand_classes[keep], -1),
        valid=keep_valid)

  return jax.vmap(one_image)(list(scores), list(boxes))
