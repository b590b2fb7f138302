"""Image and boxes transformed together: pure TF functions for `tf.data` maps.

Boxes are float32 [N, 4] x1y1x2y2 in pixels with continuous coordinates (pixel i spans
[i, i+1)), so an image of width W has boxes in [0, W].
"""

from typing import Optional, Sequence

import tensorflow as tf

# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = (b'\xff\xd8\xff', b'\x89PNG', b'GIF8', b'BM')


def decode_image(data: tf.Tensor, file_name: tf.Tensor) -> tf.Tensor:
  """Encoded bytes (or an already decoded image) -> uint8 [H, W, 3].

  An empty or unrecognised file fails with an error that names `file_name`, rather
  than with a bare decoder message that names nothing.
  """
  if data.dtype != tf.string:
    image = tf.convert_to_tensor(data)
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                    lambda: image[..., :3])
    return tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])
  # Padded so that short (even empty) files can be sliced.
  head = tf.strings.join([tf.strings.substr(data, 0, 12), b'\0' * 12])
  known = tf.reduce_any([tf.strings.substr(head, 0, len(m)) == m for m in _MAGIC])
  known |= ((tf.strings.substr(head, 0, 4) == b'RIFF')
            & (tf.strings.substr(head, 8, 4) == b'WEBP'))
  check = tf.debugging.Assert(
      known, ['jaxdet: cannot decode image file', file_name,
              '(empty or not a JPEG/PNG/GIF/BMP/WebP file)'])
  with tf.control_dependencies([check]):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def clip_boxes(boxes: tf.Tensor, size_hw: tf.Tensor) -> tf.Tensor:
  """Clips boxes [N, 4] to an image of size (height, width) in pixels."""
  size_hw = tf.cast(size_hw, boxes.dtype)
  hi = tf.stack([size_hw[1], size_hw[0], size_hw[1], size_hw[0]])
  return tf.clip_by_value(boxes, 0.0, hi)


def random_horizontal_flip(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor
                           ) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips image [H, W, C] and boxes [N, 4] with probability 1/2.

  `seed` is a stateless seed (int [2]): the same seed always makes the same choice,
  which keeps a resumed input pipeline identical to an uninterrupted one.
  """
  flip = tf.random.stateless_uniform([], seed=seed) < 0.5
  width = tf.cast(tf.shape(image)[1], boxes.dtype)
  flipped_boxes = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                            boxes[:, 3]], -1)
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  boxes = tf.cond(flip, lambda: flipped_boxes, lambda: boxes)
  return image, boxes


def resize_keep_aspect(image: tf.Tensor, boxes: tf.Tensor, short_side: float,
                       max_size: Optional[float], canvas: Sequence[int]
                       ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Resizes so the short side is `short_side`, the long side at most `max_size`, and
  the result fits in `canvas` (H, W).

  scale = min(short / min(h, w), max / max(h, w), H / h, W / w).

  Returns (float32 image [h', w', C] with values in the input's range, boxes [N, 4] in
  resized pixels, scalar float32 scale = resized / original). The content is scaled by
  exactly `scale` on both axes (only the output size is rounded), so `boxes * scale`
  stay on the object's pixels and `boxes / scale` maps predictions back exactly.
  """
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  h, w = hw[0], hw[1]
  scale = tf.minimum(short_side / tf.minimum(h, w),
                     tf.minimum(canvas[0] / h, canvas[1] / w))
  if max_size:
    scale = tf.minimum(scale, max_size / tf.maximum(h, w))
  new_hw = tf.clip_by_value(tf.round(hw * scale), 1.0, tf.constant(canvas, tf.float32))

  def rescale():
    # Bilinear ('triangle' kernel, no antialiasing, like tf.image.resize's default),
    # but with one exact scale for both axes instead of new_size / old_size per axis.
    return tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=tf.cast(new_hw, tf.int32),
        scale=tf.stack([scale, scale]), translation=tf.zeros([2]),
        kernel_type='triangle', antialias=False)[0]

  resized = tf.cond(tf.equal(scale, 1.0), lambda: tf.cast(image, tf.float32), rescale)
  return resized, boxes * scale, scale


def pad_to(image: tf.Tensor, canvas: Sequence[int]) -> tf.Tensor:
  """Pads image [h, w, C] with zeros at the bottom/right to [H, W, C] = canvas."""
  shape = tf.shape(image)
  image = tf.pad(image, [[0, canvas[0] - shape[0]], [0, canvas[1] - shape[1]], [0, 0]])
  return tf.ensure_shape(image, [canvas[0], canvas[1], None])


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]
              ) -> tf.Tensor:
  """(image - mean) / std per channel, float32; mean/std on the 0-255 scale."""
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def filter_boxes(boxes: tf.Tensor, labels: tf.Tensor, min_size: float
                 ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Drops boxes narrower or shorter than `min_size` pixels (and always empty ones,
  whose log-size regression targets would be infinite).

  Returns (boxes [M, 4], labels [M], number dropped int32).
  """
  wh = boxes[:, 2:] - boxes[:, :2]
  keep = tf.reduce_all((wh >= min_size) & (wh > 0), axis=-1)
  dropped = tf.shape(keep)[0] - tf.reduce_sum(tf.cast(keep, tf.int32))
  return tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep), dropped


def pad_boxes(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Pads (or truncates) to exactly `max_boxes` rows: zeros boxes, -1 labels.

  Returns (boxes [G, 4], labels [G] int32, number truncated int32); the caller logs
  truncation, which means `max_boxes` is too small for the data.
  """
  n = tf.shape(boxes)[0]
  truncated = tf.maximum(n - max_boxes, 0)
  boxes, labels = boxes[:max_boxes], tf.cast(labels[:max_boxes], tf.int32)
  pad = max_boxes - tf.shape(boxes)[0]
  boxes = tf.pad(boxes, [[0, pad], [0, 0]])
  labels = tf.pad(labels, [[0, pad]], constant_values=-1)
  return (tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes]),
          truncated)
