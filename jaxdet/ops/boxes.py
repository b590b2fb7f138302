"""Box geometry: areas, IoU / GIoU, format conversion and the R-CNN delta coder.

Boxes are `[x1, y1, x2, y2]` in pixels, continuous coordinates (no legacy "+1").
Everything here is pure `jnp`, batched over leading dimensions and jit-able.
Degenerate boxes (zero or negative width / height, e.g. all-zero padding) never give
NaN or inf, neither in values nor in gradients.
"""

import math
from typing import Optional, Sequence, Tuple, Union

import jax.numpy as jnp

# Divisions by unions / enclosing areas / sizes are clamped by this, so that zero-area
# boxes give 0 instead of 0/0. Areas are in px^2, so it is negligible for real boxes.
_EPS = 1e-6

# mmdetection's wh_ratio_clip=16/1000: a predicted box is at most 1000/16 times the
# anchor's width / height, which keeps exp() finite for untrained heads.
DEFAULT_MAX_RATIO = abs(math.log(16.0 / 1000.0))

ArrayLike = Union[jnp.ndarray, float]


def _split(boxes):
  return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """Area of `boxes [..., 4]` -> `[...]` in px^2; 0 for degenerate boxes."""
  x1, y1, x2, y2 = _split(boxes)
  return jnp.maximum(x2 - x1, 0.0) * jnp.maximum(y2 - y1, 0.0)


def _pairwise(a, b):
  """Broadcasts `a [..., N, 4]` and `b [..., M, 4]` to `[..., N, M, 4]` views."""
  return a[..., :, None, :], b[..., None, :, :]


def _intersection(a, b):
  """Aligned intersection area of broadcastable `a [..., 4]`, `b [..., 4]`."""
  ax1, ay1, ax2, ay2 = _split(a)
  bx1, by1, bx2, by2 = _split(b)
  w = jnp.minimum(ax2, bx2) - jnp.maximum(ax1, bx1)
  h = jnp.minimum(ay2, by2) - jnp.maximum(ay1, by1)
  return jnp.maximum(w, 0.0) * jnp.maximum(h, 0.0)


def _enclosing_area(a, b):
  """Area of the smallest box containing both (aligned, broadcastable) boxes."""
  ax1, ay1, ax2, ay2 = _split(a)
  bx1, by1, bx2, by2 = _split(b)
  w = jnp.maximum(ax2, bx2) - jnp.minimum(ax1, bx1)
  h = jnp.maximum(ay2, by2) - jnp.minimum(ay1, by1)
  # Clamped because two inverted boxes can give a negative "enclosure".
  return jnp.maximum(w, 0.0) * jnp.maximum(h, 0.0)


def _iou_and_union(a, b):
  inter = _intersection(a, b)
  union = box_area(a) + box_area(b) - inter
  return inter / jnp.maximum(union, _EPS), union


def _giou(a, b):
  iou, union = _iou_and_union(a, b)
  enclosing = _enclosing_area(a, b)
  return iou - (enclosing - union) / jnp.maximum(enclosing, _EPS)


def elementwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """IoU of aligned pairs `a [..., 4]`, `b [..., 4]` (broadcastable) -> `[...]` in [0, 1]."""
  return _iou_and_union(a, b)[0]


def elementwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Generalized IoU of aligned pairs `[..., 4]` -> `[...]` in [-1, 1].

  Rezatofighi et al. 2019: IoU - (C - U) / C with C the enclosing box area. Finite
  values and gradients for degenerate boxes (0 where both boxes have zero area and
  coincide, since all areas are then 0).
  """
  return _giou(a, b)


def elementwise_intersection(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Intersection area of aligned pairs `a [..., 4]`, `b [..., 4]` (broadcastable) ->
  `[...]` px^2; 0 for disjoint or degenerate boxes."""
  return _intersection(a, b)


def box_intersection(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise intersection area of `a [..., N, 4]`, `b [..., M, 4]` -> `[..., N, M]` px^2."""
  return _intersection(*_pairwise(a, b))


def box_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise IoU of `a [..., N, 4]` and `b [..., M, 4]` -> `[..., N, M]`.

  Leading dimensions broadcast (e.g. anchors `[1, A, 4]` against GT `[B, G, 4]`).
  Pairs involving a zero-area box have IoU 0.
  """
  return _iou_and_union(*_pairwise(a, b))[0]


def generalized_box_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise GIoU of `a [..., N, 4]` and `b [..., M, 4]` -> `[..., N, M]` in [-1, 1]."""
  return _giou(*_pairwise(a, b))


def xyxy_to_cxcywh(boxes: jnp.ndarray) -> jnp.ndarray:
  """`[x1, y1, x2, y2]` -> `[cx, cy, w, h]`, both `[..., 4]` in px."""
  x1, y1, x2, y2 = _split(boxes)
  return jnp.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
  """`[cx, cy, w, h]` -> `[x1, y1, x2, y2]`, both `[..., 4]` in px."""
  cx, cy, w, h = _split(boxes)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def content_size(scale: jnp.ndarray, orig_size: jnp.ndarray,
                 canvas: Tuple[int, int]) -> jnp.ndarray:
  """int32 [B, 2] (height, width) of each resized image inside the padded canvas, from
  the batch's `scale` [B] and `orig_size` [B, 2]: the rounding of
  `data.transforms.resize_keep_aspect` (round(size * scale), clipped to [1, canvas])."""
  hw = jnp.round(orig_size.astype(jnp.float32) * scale[:, None].astype(jnp.float32))
  return jnp.clip(hw, 1.0, jnp.asarray(canvas, jnp.float32)).astype(jnp.int32)


def clip_boxes(boxes: jnp.ndarray, height: ArrayLike, width: ArrayLike) -> jnp.ndarray:
  """Clips `boxes [..., 4]` to the image `[0, width] x [0, height]` (px).

  `height` / `width` are scalars or arrays of the leading axes of `boxes[..., 0]`
  (e.g. `[B]` per-image sizes against `[B, N, 4]` or `[B, N, C, 4]` boxes), broadcast
  over the remaining ones.
  """
  x1, y1, x2, y2 = _split(boxes)

  def leading(size):
    size = jnp.asarray(size, boxes.dtype)
    return size.reshape(size.shape + (1,) * (x1.ndim - size.ndim))

  height, width = leading(height), leading(width)
  return jnp.stack([jnp.clip(x1, 0.0, width), jnp.clip(y1, 0.0, height),
                    jnp.clip(x2, 0.0, width), jnp.clip(y2, 0.0, height)], axis=-1)


def encode_deltas(boxes: jnp.ndarray, anchors: jnp.ndarray,
                  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jnp.ndarray:
  """R-CNN regression targets of `boxes [..., 4]` w.r.t. `anchors [..., 4]` -> `[..., 4]`.

  (dx, dy, dw, dh) = ((gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah)) with
  centres (gx, gy), (ax, ay) and sizes in px, then normalized as (d - means) / stds.
  Sizes are clamped at a tiny eps so padded all-zero boxes give finite (meaningless,
  to be masked) targets.
  """
  gx1, gy1, gx2, gy2 = _split(boxes)
  ax1, ay1, ax2, ay2 = _split(anchors)
  aw = jnp.maximum(ax2 - ax1, _EPS)
  ah = jnp.maximum(ay2 - ay1, _EPS)
  gw = jnp.maximum(gx2 - gx1, _EPS)
  gh = jnp.maximum(gy2 - gy1, _EPS)
  dx = ((gx1 + gx2) - (ax1 + ax2)) * 0.5 / aw
  dy = ((gy1 + gy2) - (ay1 + ay2)) * 0.5 / ah
  deltas = jnp.stack([dx, dy, jnp.log(gw / aw), jnp.log(gh / ah)], axis=-1)
  means = jnp.asarray(means, deltas.dtype)
  stds = jnp.asarray(stds, deltas.dtype)
  return (deltas - means) / stds


def decode_deltas(deltas: jnp.ndarray, anchors: jnp.ndarray,
                  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                  max_ratio: float = DEFAULT_MAX_RATIO,
                  clip_size: Optional[Tuple[ArrayLike, ArrayLike]] = None) -> jnp.ndarray:
  """Inverse of `encode_deltas`: `deltas [..., 4]` on `anchors [..., 4]` -> boxes `[..., 4]`.

  dw, dh are clamped to [-max_ratio, max_ratio] before exp (mmdetection's
  wh_ratio_clip). `clip_size=(height, width)` clips the result to the image (see
  `clip_boxes`).
  """
  means = jnp.asarray(means, deltas.dtype)
  stds = jnp.asarray(stds, deltas.dtype)
  d = deltas * stds + means
  ax1, ay1, ax2, ay2 = _split(anchors)
  aw = ax2 - ax1
  ah = ay2 - ay1
  cx = (ax1 + ax2) * 0.5 + d[..., 0] * aw
  cy = (ay1 + ay2) * 0.5 + d[..., 1] * ah
  w = aw * jnp.exp(jnp.clip(d[..., 2], -max_ratio, max_ratio))
  h = ah * jnp.exp(jnp.clip(d[..., 3], -max_ratio, max_ratio))
  boxes = jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
  if clip_size is not None:
    boxes = clip_boxes(boxes, clip_size[0], clip_size[1])
  return boxes


def encode_ltrb(boxes: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Distances from `points [..., 2]` (x, y) to the sides of `boxes [..., 4]` (px).

  -> `[..., 4]` (left, top, right, bottom) = (x - x1, y - y1, x2 - x, y2 - y), the
  FCOS regression target (mmdetection's DistancePointBBoxCoder). All four are > 0
  exactly when the point lies strictly inside the box.
  """
  x1, y1, x2, y2 = _split(boxes)
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([x - x1, y - y1, x2 - x, y2 - y], axis=-1)


def decode_ltrb(ltrb: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Inverse of `encode_ltrb`: distances `[..., 4]` from `points [..., 2]` -> boxes."""
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2],
                    y + ltrb[..., 3]], axis=-1)
