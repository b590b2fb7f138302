"""Detection on uint8 images, as served: host-side resize and pad, then one jit-able
function (normalize, network, decoding, NMS) that returns boxes in original pixels.

The input of `make_infer`'s function, for a canvas (H, W) = `config.data.image_size`:

  images     uint8 [B, H, W, 3]  RGB, resized by `preprocess` and padded bottom/right
  scale      float32 [B]         resized / original (from `preprocess`)
  orig_size  int32 [B, 2]        original (height, width)

and its output, D = `config.eval.max_detections`:

  boxes      float32 [B, D, 4]   x1y1x2y2 in original-image pixels, clipped to the image
  scores     float32 [B, D]      the detector's default score, in [0, 1]
  classes    int32 [B, D]        contiguous labels 0..C-1
  valid      bool [B, D]         False on slots after the detections run out

These are the eval pipeline's steps (`data.pipeline`): `preprocess` runs the same TF
decode and resize (`data.transforms`), so its pixels differ from the pipeline's float
ones only by the rounding to uint8 (at most half a grey level); `normalize` subtracts
`data.mean` / divides by `data.std` inside each image's content and leaves the padding
at 0, as the pipeline does (it normalizes before padding).
"""

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from jaxdet.data import transforms
from jaxdet.ops import boxes as box_ops

OUTPUT_KEYS = ('boxes', 'scores', 'classes', 'valid')


def canvas_size(data_config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(H, W) of the network input, `data.image_size`."""
  canvas = tuple(int(v) for v in data_config.image_size)
  if len(canvas) != 2:
    raise ValueError(f'config.data.image_size must be (height, width), got {canvas}')
  return canvas


@functools.lru_cache(maxsize=8)
def _resize_fn(short_side: float, max_size: float, canvas: tuple[int, int]):
  """A traced-once TF function: uint8 [h, w, 3] -> (uint8 [H, W, 3], float32 scale)."""

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def resize(image):
    resized, _, scale = transforms.resize_keep_aspect(
        image, tf.zeros([0, 4]), short_side, max_size, canvas)
    # The pipeline keeps float pixels; a served model takes bytes, so round here.
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return transforms.pad_to(resized, canvas), scale

  return resize


def preprocess(image: np.ndarray, data_config: ml_collections.ConfigDict
               ) -> tuple[np.ndarray, float]:
  """Resizes one image as the eval pipeline does and pads it to the canvas.

  Args:
    image: uint8 [h, w, 3] RGB (original size).
    data_config: `config.data` (short_side, max_size, image_size).
  Returns:
    (uint8 [H, W, 3] padded with zeros bottom/right, scale = resized / original).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'preprocess: expected a uint8 [h, w, 3] image, got '
                     f'{image.dtype} {image.shape}')
  resize = _resize_fn(float(data_config.short_side), float(data_config.max_size or 0),
                      canvas_size(data_config))
  padded, scale = resize(tf.constant(image))
  return padded.numpy(), float(scale.numpy())


def read_image(path: str) -> np.ndarray:
  """uint8 [h, w, 3] RGB from a JPEG/PNG/GIF/BMP/WebP file, decoded as the pipeline
  does; ValueError naming `path` if it cannot be read."""
  try:
    data = tf.io.read_file(path)
    return transforms.decode_image(data, tf.constant(path)).numpy()
  except (tf.errors.OpError, ValueError) as e:
    message = getattr(e, 'message', str(e)).strip().splitlines()[0]
    raise ValueError(f'{path}: cannot read the image ({message})') from e


def make_batch(images: Sequence[np.ndarray], data_config: ml_collections.ConfigDict,
               batch_size: int | None = None) -> dict[str, np.ndarray]:
  """Preprocessed inputs of `make_infer`'s function for a list of uint8 [h, w, 3] images.

  With `batch_size`, rows past the images are padding (black, scale 1, size 1 x 1),
  marked by `valid [B]` False, so that every batch has one shape (one compilation).
  Returns dict(images, scale, orig_size, valid).
  """
  n = len(images)
  b = batch_size or n
  if n > b:
    raise ValueError(f'make_batch: {n} images for batch_size={b}')
  h, w = canvas_size(data_config)
  out = dict(images=np.zeros((b, h, w, 3), np.uint8), scale=np.ones((b,), np.float32),
             orig_size=np.ones((b, 2), np.int32), valid=np.arange(b) < n)
  for i, image in enumerate(images):
    out['images'][i], out['scale'][i] = preprocess(image, data_config)
    out['orig_size'][i] = image.shape[:2]
  return out


def normalize(images: jax.Array, scale: jax.Array, orig_size: jax.Array,
              mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (or float, 0-255) [B, H, W, 3] -> the pipeline's float32 network input:
  (x - mean) / std inside each image's content, 0 in the padding."""
  _, h, w, _ = images.shape
  hw = box_ops.content_size(scale, orig_size, (h, w))
  inside = ((jnp.arange(h)[None, :, None] < hw[:, 0, None, None])
            & (jnp.arange(w)[None, None, :] < hw[:, 1, None, None]))
  x = (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
      std, jnp.float32)
  return jnp.where(inside[..., None], x, 0.0)


def to_original(boxes: jax.Array, scale: jax.Array, orig_size: jax.Array) -> jax.Array:
  """[B, D, 4] network-input pixels -> original-image pixels, clipped to the image
  (as `evaluation.evaluator.to_coco_results`)."""
  boxes = boxes / scale[:, None, None]
  hw = orig_size.astype(boxes.dtype)
  upper = jnp.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None, :]
  return jnp.clip(boxes, 0.0, upper)


def make_infer(detector, data_config: ml_collections.ConfigDict,
               score: str | None = None) -> Callable[..., dict]:
  """(variables, images, scale, orig_size) -> detections (module docstring), not jitted.

  Args:
    detector: from `detectors.build_detector`, for `data_config.image_size`.
    score: the detector's score to rank by (default its first, as evaluation).
  """
  mean, std = tuple(data_config.mean), tuple(data_config.std)

  def infer(variables, images, scale, orig_size):
    x = normalize(images, scale, orig_size, mean, std)
    # scale and orig_size: boxes are clipped to each image's content, as in evaluation.
    dets = detector.predict(variables, {'image': x, 'scale': scale, 'orig_size': orig_size},
                            score=score)
    dets = {k: dets[k] for k in OUTPUT_KEYS}
    dets['boxes'] = to_original(dets['boxes'], scale, orig_size)
    return dets

  return infer
