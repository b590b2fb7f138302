"""`python -m jaxdet.export`: the artifacts reload and give the Python inference
function's detections (the jax.export artifact for two batch sizes, the TF SavedModel),
for RetinaNet with random weights, every detection kept so that there are many; other
detectors trace with a symbolic batch too."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import detectors
from jaxdet import export as export_lib
from jaxdet import inference
from tests.inference_utils import (NUM_CLASSES, run_command, save_random_checkpoint,
                                   shapes_images, smoke_config, smoke_flags)


def inputs(config, batch_size=None):
  batch = inference.make_batch(shapes_images(), config.data, batch_size)
  return batch['images'], batch['scale'], batch['orig_size']


def assert_same_detections(got, want, rows=slice(None), box_atol=0.0, score_atol=0.0):
  got = {k: np.asarray(v) for k, v in got.items()}
  want = {k: np.asarray(v)[rows] for k, v in want.items()}
  assert set(got) == set(inference.OUTPUT_KEYS)
  assert want['valid'].sum() > 10  # detections to compare
  np.testing.assert_array_equal(got['valid'], want['valid'])
  np.testing.assert_array_equal(got['classes'], want['classes'])
  assert got['classes'].dtype == np.int32 and got['valid'].dtype == bool
  np.testing.assert_allclose(got['scores'], want['scores'], atol=score_atol, rtol=0)
  np.testing.assert_allclose(got['boxes'], want['boxes'], atol=box_atol, rtol=0)


def test_retinanet_artifacts_reload_and_match(repo_root, shapes_cache, tmp_path):
  config = smoke_config(repo_root, 'retinanet_shapes', shapes_cache)
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'export')
  # Saved with SGD, exported with the config's AdamW: the optimizer state is not read.
  trained_with = config.copy_and_resolve_references()
  trained_with.train.optimizer = 'sgd'
  state = save_random_checkpoint(trained_with, workdir, step=5)
  metadata = run_command(export_lib, *smoke_flags(repo_root, 'retinanet_shapes',
                                                  shapes_cache),
                         f'--workdir={workdir}', f'--out={out}')
  detector = detectors.build_detector(config, NUM_CLASSES)
  images, scale, orig_size = inputs(config)  # a batch of 3
  want = jax.jit(inference.make_infer(detector, config.data))(
      state.variables(), images, scale, orig_size)
  assert sorted(set(scale)) == [1.0, 2.0]
  assert np.asarray(want['boxes'])[2].max() <= 64  # original pixels of the 60x64 image

  with open(os.path.join(out, export_lib.METADATA_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(metadata))
  assert metadata['step'] == 5 and metadata['eval']['score_threshold'] == 0.0
  assert metadata['batch_size'] is None and metadata['image_size'] == [128, 128]
  assert metadata['class_names'][0] == 'ellipse' and metadata['category_ids'][0] == 1

  # jax.export: the same computation, so the same numbers; then another batch size.
  with open(os.path.join(out, export_lib.JAX_FILE), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  assert str(exported.in_avals[0].shape[0]) == 'b'
  assert_same_detections(exported.call(images, scale, orig_size), want)
  assert_same_detections(exported.call(images[1:2], scale[1:2], orig_size[1:2]), want,
                         rows=slice(1, 2), box_atol=1e-3, score_atol=1e-4)

  # The SavedModel runs in TensorFlow's own XLA (and sorts instead of lax.top_k):
  # float-level differences only (measured: 2e-4 px, 1e-5 in score).
  import tensorflow as tf
  loaded = tf.saved_model.load(os.path.join(out, export_lib.SAVED_MODEL_DIR))
  serve = loaded.signatures['serving_default']
  got = serve(images=tf.constant(images[:2]), scale=tf.constant(scale[:2]),
              orig_size=tf.constant(orig_size[:2]))
  assert_same_detections({k: v.numpy() for k, v in got.items()}, want, rows=slice(0, 2),
                         box_atol=1e-2, score_atol=1e-4)


# CL-balanced NMS, FCOS with deformable convs (MMMC), a two-stage cascade with OBC
# heads. (All nine shapes configs export and reload, docs/export_predict.md.)
@pytest.mark.parametrize('name', ['cle_retinanet_shapes', 'mmmc_shapes',
                                  'cascade_obc_shapes'])
def test_every_detector_exports_with_a_symbolic_batch(repo_root, name):
  """Tracing only (zero weights, nothing compiled); tests/test_predict.py runs a
  two-stage detector."""
  config = smoke_config(repo_root, name)
  detector = detectors.build_detector(config, NUM_CLASSES)
  shapes_of = jax.eval_shape(detector.init, jax.random.key(0, impl='rbg'))
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes_of)
  infer = inference.make_infer(detector, config.data)
  exported, batch_size = export_lib.export_jax(infer, variables, (128, 128))
  assert batch_size is None
  assert str(exported.in_avals[0].shape[0]) == 'b'
  out = jax.tree.unflatten(exported.out_tree, exported.out_avals)
  d = config.eval.max_detections
  assert {k: str(a.shape) for k, a in out.items()} == dict(
      boxes=f'(b, {d}, 4)', scores=f'(b, {d})', classes=f'(b, {d})', valid=f'(b, {d})')


def test_falls_back_to_a_fixed_batch_with_a_warning(caplog):
  def infer(variables, images, scale, orig_size):
    del scale, orig_size
    n = int(images.shape[0])  # a Python int of the batch: fails when it is symbolic
    return {'boxes': jnp.zeros((n, 1, 4)) + variables['w']}

  with caplog.at_level(logging.WARNING):
    exported, batch_size = export_lib.export_jax(
        infer, {'w': jnp.ones(())}, (8, 8), fallback_batch_size=3)
  assert batch_size == 3 and exported.in_avals[0].shape == (3, 8, 8, 3)
  assert 'fixed batch of 3' in caplog.text
  out = exported.call(np.zeros((3, 8, 8, 3), np.uint8), np.ones(3, np.float32),
                      np.ones((3, 2), np.int32))
  np.testing.assert_array_equal(out['boxes'], np.ones((3, 1, 4)))
