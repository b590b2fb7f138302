"""Boxes are clipped to each image's content, not to the padded canvas (mmdetection
clips to img_shape): proposals, cascade refinements and final detections."""

import jax
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet import inference
from jaxdet.data import shapes
from jaxdet.ops import boxes as box_ops
from tests.inference_utils import smoke_config, spread_scores

# Two images in a 128 x 128 canvas: 64 x 96 content (scale 1) and 100 x 50 px shrunk
# by 0.8 to 80 x 40; the rest is padding.
ORIG_SIZE = np.array([[64, 96], [100, 50]], np.int32)
SCALE = np.array([1.0, 0.8], np.float32)


def test_content_size_rounds_as_the_pipeline():
  hw = box_ops.content_size(SCALE, ORIG_SIZE, (128, 128))
  np.testing.assert_array_equal(hw, [[64, 96], [80, 40]])
  np.testing.assert_array_equal(
      box_ops.content_size(np.float32([2.0]), np.int32([[100, 30]]), (128, 128)),
      [[128, 60]])  # clipped to the canvas


# Faster R-CNN: class-specific [B, R, C, 4] boxes; Cascade OBC: refined RoIs and bins.
@pytest.mark.parametrize('name', ['retinanet_shapes', 'fcos_shapes', 'faster_rcnn_shapes',
                                  'cascade_obc_shapes'])
def test_detections_stay_inside_the_content(repo_root, name):
  config = smoke_config(repo_root, name)
  detector = detectors.build_detector(config, len(shapes.CLASS_NAMES))
  variables = detector.init(jax.random.key(0))
  variables = {**variables, 'params': spread_scores(variables['params'])}
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 128, 128, 3)).astype(np.float32)
  batch = dict(image=image, scale=SCALE, orig_size=ORIG_SIZE)
  dets = jax.jit(detector.predict)(variables, batch)
  boxes, valid = np.asarray(dets['boxes']), np.asarray(dets['valid'])
  assert valid.sum(1).min() >= 20  # score threshold 0: plenty of detections
  for b, (h, w) in enumerate([(64, 96), (80, 40)]):
    x1, y1, x2, y2 = boxes[b][valid[b]].T
    assert x1.min() >= 0 and y1.min() >= 0
    assert x2.max() <= w + 1e-3 and y2.max() <= h + 1e-3, (b, x2.max(), y2.max())
  # Some boxes touch the content's edge: the clip acted (random boxes cover the canvas).
  x2 = boxes[1][valid[1]][:, 2]
  assert np.any(np.isclose(x2, 40.0)), x2.max()


def test_inference_function_clips_as_evaluation(repo_root):
  """`inference.make_infer` (predict, export) passes each image's size to the detector,
  so its boxes are those of evaluation's `detector.predict` on the pipeline's batch."""
  config = smoke_config(repo_root, 'retinanet_shapes')
  detector = detectors.build_detector(config, len(shapes.CLASS_NAMES))
  variables = detector.init(jax.random.key(0))
  variables = {**variables, 'params': spread_scores(variables['params'])}
  images = np.random.default_rng(1).integers(0, 256, (2, 128, 128, 3), np.uint8)
  dets = jax.jit(inference.make_infer(detector, config.data))(variables, images, SCALE,
                                                              ORIG_SIZE)
  x = inference.normalize(images, SCALE, ORIG_SIZE, config.data.mean, config.data.std)
  want = jax.jit(detector.predict)(variables, dict(image=x, scale=SCALE,
                                                   orig_size=ORIG_SIZE))
  np.testing.assert_array_equal(dets['valid'], want['valid'])
  np.testing.assert_allclose(
      dets['boxes'], inference.to_original(want['boxes'], SCALE, ORIG_SIZE), atol=1e-4)
