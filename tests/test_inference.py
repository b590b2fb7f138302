"""Inference on uint8 images: the same pixels and box mapping as the eval pipeline;
the sort-based top-k of exported SavedModels equals lax.top_k. No network here
(tests/test_export.py and tests/test_predict.py run detectors)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jaxdet import config_base
from jaxdet import inference
from jaxdet.data import pipeline
from jaxdet.data import sources
from jaxdet.evaluation import evaluator
from jaxdet.ops import topk
from tests.inference_utils import SIZES, shapes_images


def _data_config():
  c = config_base.data_config()
  c.short_side, c.max_size, c.image_size = 100, 120, (128, 128)
  c.max_boxes = 4
  return c


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """The images as PNGs (lossless: the files decode to the arrays) in a COCO folder."""
  root = tmp_path_factory.mktemp('coco_folder')
  images = shapes_images()
  records = []
  for i, image in enumerate(images, start=1):
    Image.fromarray(image).save(root / f'{i:03d}.png')
    h, w = image.shape[:2]
    records.append(dict(id=i, file_name=f'{i:03d}.png', height=h, width=w))
  annotations = [dict(id=r['id'], image_id=r['id'], category_id=1, bbox=[2, 2, 20, 20],
                      area=400, iscrowd=0) for r in records]
  path = root / 'instances.json'
  path.write_text(json.dumps(dict(images=records, annotations=annotations,
                                  categories=[dict(id=1, name='thing')])))
  return str(root), str(path), images


def test_preprocess_gives_the_eval_pipelines_pixels(folder):
  root, annotations, images = folder
  c = _data_config()
  c.update(source='coco_folder', eval_images=root, eval_annotations=annotations)
  ds = pipeline.make_dataset(c, sources.build_source(c), 'eval', batch_size=len(images),
                             training=False, seed=0)
  batch = next(ds.as_numpy_iterator())
  ours = inference.make_batch(images, c)
  np.testing.assert_allclose(ours['scale'], batch['scale'], rtol=0)
  np.testing.assert_array_equal(ours['orig_size'], batch['orig_size'])
  assert sorted(set(np.round(batch['scale'], 4))) == [0.9375, 1.6667]
  # The network input: equal up to rounding to uint8 (half a grey level), and 0 in
  # the padding exactly.
  x = np.asarray(inference.normalize(ours['images'], ours['scale'], ours['orig_size'],
                                     c.mean, c.std))
  tolerance = 0.5 / min(c.std) + 1e-5
  np.testing.assert_allclose(x, batch['image'], atol=tolerance, rtol=0)
  inside = (batch['image'] != 0).any(-1)
  np.testing.assert_array_equal((x != 0).any(-1), inside)
  pipeline_pixels = batch['image'] * np.asarray(c.std) + np.asarray(c.mean)
  assert np.abs(ours['images'] - pipeline_pixels)[inside].max() <= 0.5 + 1e-3


def test_make_batch_pads_to_the_batch_size():
  c = _data_config()
  images = shapes_images(SIZES[:2])
  batch = inference.make_batch(images, c, batch_size=4)
  assert batch['images'].shape == (4, 128, 128, 3) and batch['images'].dtype == np.uint8
  np.testing.assert_array_equal(batch['valid'], [True, True, False, False])
  np.testing.assert_array_equal(batch['orig_size'][:2], [[128, 96], [80, 128]])
  assert not batch['images'][2:].any()
  with pytest.raises(ValueError, match='3 images for batch_size=2'):
    inference.make_batch(shapes_images(), c, batch_size=2)
  with pytest.raises(ValueError, match='uint8'):
    inference.preprocess(images[0].astype(np.float32), c)


def test_boxes_go_back_to_original_pixels_as_in_evaluation():
  rng = np.random.default_rng(0)
  scale = np.array([0.5, 2.0], np.float32)
  orig_size = np.array([[100, 60], [30, 50]], np.int32)
  boxes = rng.uniform(-10, 130, (2, 5, 4)).astype(np.float32)
  dets = dict(boxes=boxes, scores=rng.uniform(size=(2, 5)).astype(np.float32),
              classes=rng.integers(0, 3, (2, 5)), valid=np.ones((2, 5), bool))
  batch = dict(image_id=np.array([1, 2]), scale=scale, orig_size=orig_size,
               valid=np.array([True, True]))
  expected = evaluator.to_coco_results(dets, batch, [1, 2, 3])
  ours = np.asarray(inference.to_original(jnp.asarray(boxes), scale, orig_size))
  xywh = np.concatenate([ours[..., :2], ours[..., 2:] - ours[..., :2]], -1)
  np.testing.assert_allclose(xywh.reshape(-1, 4), [r['bbox'] for r in expected],
                             rtol=1e-6, atol=1e-5)


def test_read_image_names_the_file(tmp_path):
  bad = tmp_path / 'broken.jpg'
  bad.write_bytes(b'not an image')
  with pytest.raises(ValueError, match=str(bad)):
    inference.read_image(str(bad))
  with pytest.raises(ValueError, match='missing.png'):
    inference.read_image(str(tmp_path / 'missing.png'))
  gray = tmp_path / 'gray.png'
  Image.fromarray(np.full((5, 7), 9, np.uint8)).save(gray)
  image = inference.read_image(str(gray))
  assert image.shape == (5, 7, 3) and image.dtype == np.uint8 and (image == 9).all()


@pytest.mark.parametrize('shape,k', [((3, 50), 7), ((2, 4, 9), 9), ((6,), 1)])
def test_portable_top_k_equals_lax_top_k(shape, k):
  rng = np.random.default_rng(k)
  # Repeated values: ties must go to the lower index, as in lax.top_k.
  x = jnp.asarray(rng.integers(0, 5, shape).astype(np.float32))
  x = x.at[..., 0].set(-jnp.inf)
  expected = jax.lax.top_k(x, k)
  with topk.portable():
    values, indices = jax.jit(topk.top_k, static_argnums=1)(x, k)
  np.testing.assert_array_equal(values, expected[0])
  np.testing.assert_array_equal(indices, expected[1])
  assert indices.dtype == jnp.int32
  # Outside the context, lax.top_k again (a fresh trace).
  hlo = jax.jit(lambda v: topk.top_k(v, k)).lower(x).as_text()
  assert 'sort' not in hlo


def test_portable_top_k_lowers_without_top_k():
  x = jnp.zeros((2, 10))
  with topk.portable():
    hlo = jax.jit(lambda v: topk.top_k(v, 3)).lower(x).as_text()
  assert 'top_k' not in hlo and 'sort' in hlo
