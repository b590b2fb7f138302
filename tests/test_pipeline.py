"""Input pipeline: shapes to batches, transforms, resume, sharding, padding, errors."""

import json
import logging as py_logging
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from jaxdet import config_base
from jaxdet.data import pipeline
from jaxdet.data import sources
from jaxdet.data import transforms

G = 8


def _config(**overrides):
  c = config_base.data_config()
  c.short_side, c.max_size, c.image_size = 96, 120, (112, 128)
  c.max_boxes = G
  c.shapes.update(num_train=48, num_val=20, image_size=128, seed=0)
  c.update(overrides)
  return c


@pytest.fixture(scope='module')
def shapes_source(tmp_path_factory):
  c = _config()
  c.shapes.cache_dir = str(tmp_path_factory.mktemp('shapes'))
  return c, sources.build_source(c)


def _batches(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_shapes_batches_have_static_shapes_and_dtypes(shapes_source):
  c, src = shapes_source
  assert src.class_names[0] == 'ellipse' and src.category_ids == tuple(range(1, 9))
  ds = pipeline.make_dataset(c, src, 'train', batch_size=4, training=True, seed=0)
  spec = ds.element_spec
  expected = dict(image=((4, 112, 128, 3), tf.float32), boxes=((4, G, 4), tf.float32),
                  labels=((4, G), tf.int32), gt_mask=((4, G), tf.bool),
                  image_id=((4,), tf.int32), scale=((4,), tf.float32),
                  orig_size=((4, 2), tf.int32), valid=((4,), tf.bool))
  assert set(spec) == set(expected)
  for k, (shape, dtype) in expected.items():
    assert spec[k].shape == shape and spec[k].dtype == dtype, k
  for b in _batches(ds, 3):
    np.testing.assert_allclose(b['scale'], 0.75)  # min(96/128, 120/128, 112/128, 1)
    np.testing.assert_array_equal(b['orig_size'], 128)
    assert b['valid'].all()
    np.testing.assert_array_equal(b['gt_mask'], b['labels'] >= 0)
    assert np.all(b['boxes'][~b['gt_mask']] == 0)
    boxes = b['boxes'][b['gt_mask']]
    assert np.all(boxes[:, 2:] > boxes[:, :2]) and np.all(boxes <= 96)
    # Normalized content lives in the 96x96 corner; padding is exactly zero.
    assert np.all(b['image'][:, 96:] == 0) and np.all(b['image'][:, :, 96:] == 0)
    assert np.abs(b['image'][:, :96, :96]).max() > 0.5


def test_resume_matches_uninterrupted_run(shapes_source):
  c, src = shapes_source
  # 48 examples / global batch 8 = 6 steps per epoch: steps 4..9 cross an epoch.
  full = _batches(pipeline.make_dataset(c, src, 'train', batch_size=8, training=True,
                                        seed=5), 10)
  resumed = _batches(pipeline.make_dataset(c, src, 'train', batch_size=8,
                                           training=True, seed=5, start_step=4), 6)
  for a, b in zip(full[4:], resumed):
    _assert_batches_equal(a, b)
  # Each epoch is a permutation of all images, different from the previous one.
  epoch0 = np.concatenate([b['image_id'] for b in full[:6]])
  epoch1 = np.concatenate([b['image_id'] for b in full[6:]] +
                          [b['image_id'] for b in resumed[-4:]])[:48]
  assert sorted(epoch0) == list(range(1, 49))
  assert not np.array_equal(epoch0[:16], epoch1[:16])
  other_seed = _batches(pipeline.make_dataset(c, src, 'train', batch_size=8,
                                              training=True, seed=6), 1)[0]
  assert not np.array_equal(other_seed['image_id'], full[0]['image_id'])


def test_host_shards_are_disjoint_and_cover_the_global_batch(shapes_source):
  c, src = shapes_source
  steps = 7  # beyond one epoch
  glob = _batches(pipeline.make_dataset(c, src, 'train', batch_size=6, training=True,
                                        seed=1, start_step=2), steps)
  hosts = [_batches(pipeline.make_dataset(
      c, src, 'train', batch_size=2, training=True, seed=1, process_index=i,
      process_count=3, start_step=2), steps) for i in range(3)]
  for s in range(steps):
    ids = [h[s]['image_id'] for h in hosts]
    assert len(set(np.concatenate(ids))) == 6  # disjoint
    for i in range(3):
      # Host i holds global rows i, i+3, ...: same images, same flips.
      _assert_batches_equal(hosts[i][s],
                            {k: v[i::3] for k, v in glob[s].items()})


def test_eval_single_pass_with_padded_last_batch(shapes_source):
  c, src = shapes_source
  ds = pipeline.make_dataset(c, src, 'eval', batch_size=8, training=False, seed=0)
  batches = list(ds.as_numpy_iterator())
  assert [b['valid'].sum() for b in batches] == [8, 8, 4]
  last = batches[-1]
  assert last['image'].shape == (8, 112, 128, 3)
  assert np.all(last['labels'][~last['valid']] == -1)
  assert np.all(last['image_id'][~last['valid']] == -1)
  ids = np.concatenate([b['image_id'][b['valid']] for b in batches])
  gt = src.coco_ground_truth('eval')
  assert list(ids) == [im['id'] for im in gt['images']]  # fixed order, no flip
  # Two hosts: the same number of batches each, together every image once.
  hosts = [list(pipeline.make_dataset(c, src, 'eval', batch_size=4, training=False,
                                      seed=0, process_index=i, process_count=2)
                .as_numpy_iterator()) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == pipeline.num_eval_batches(20, 4, 2) == 3
  ids = np.concatenate([b['image_id'][b['valid']] for h in hosts for b in h])
  assert sorted(ids) == sorted(im['id'] for im in gt['images'])


# ----------------------------------------------------------------------------------
# Hand-made COCO folders.


def _write_folder(root, images, annotations, categories=None):
  """images: {file_name: uint8 array or raw bytes}; returns (images dir, json path)."""
  img_dir = os.path.join(root, 'images')
  os.makedirs(img_dir, exist_ok=True)
  entries = []
  for k, (name, data) in enumerate(images.items(), start=1):
    path = os.path.join(img_dir, name)
    if isinstance(data, bytes):
      with open(path, 'wb') as f:
        f.write(data)
      h, w = 32, 32
    elif data is not None:
      Image.fromarray(data).save(path)
      h, w = data.shape[:2]
    else:
      h, w = 32, 32  # a missing file
    entries.append(dict(id=k, file_name=name, width=w, height=h))
  gt = dict(images=entries, annotations=annotations,
            categories=categories or [dict(id=3, name='box'), dict(id=17, name='x')])
  path = os.path.join(root, 'instances.json')
  with open(path, 'w') as f:
    json.dump(gt, f)
  return img_dir, path


def _rect_image(h, w, x1, y1, x2, y2):
  img = np.zeros((h, w, 3), np.uint8)
  img[y1:y2, x1:x2] = 255
  return img


def _bright_bounds(image, config):
  """x1y1x2y2 of bright pixels of a normalized image, in continuous coordinates."""
  rgb = image * np.array(config.std) + np.array(config.mean)
  ys, xs = np.nonzero(rgb.mean(-1) > 127)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_transforms_keep_box_on_the_object():
  image = tf.constant(_rect_image(60, 90, 20, 10, 50, 30))
  boxes = tf.constant([[20.0, 10.0, 50.0, 30.0]])
  resized, rboxes, scale = transforms.resize_keep_aspect(image, boxes, 100, 200,
                                                         (128, 160))
  assert resized.shape == (100, 150, 3) and np.isclose(scale, 100 / 60)
  flips = set()
  for s in range(8):
    img, b = transforms.random_horizontal_flip(resized, rboxes, tf.constant([0, s]))
    ys, xs = np.nonzero(img.numpy().mean(-1) > 127)
    np.testing.assert_allclose(b.numpy()[0], [xs.min(), ys.min(), xs.max() + 1,
                                              ys.max() + 1], atol=1.0)
    flips.add(float(b.numpy()[0, 0]) > 50)  # x1 is 33.3 or 150 - 83.3
  assert flips == {True, False}
  # Same seed, same choice.
  a = transforms.random_horizontal_flip(resized, rboxes, tf.constant([3, 9]))[1]
  b = transforms.random_horizontal_flip(resized, rboxes, tf.constant([3, 9]))[1]
  np.testing.assert_array_equal(a, b)


def test_transform_helpers():
  boxes = tf.constant([[-5.0, 2.0, 50.0, 70.0], [1.0, 1.0, 1.5, 9.0],
                       [3.0, 3.0, 3.0, 8.0]])
  clipped = transforms.clip_boxes(boxes, tf.constant([60, 40]))
  np.testing.assert_allclose(clipped[0], [0, 2, 40, 60])
  kept, labels, dropped = transforms.filter_boxes(clipped, tf.constant([0, 1, 2]), 1.0)
  assert kept.shape == (1, 4) and list(labels.numpy()) == [0] and int(dropped) == 2
  # Zero-size boxes go even with min_size 0 (their log-size targets would be inf).
  assert int(transforms.filter_boxes(clipped, tf.constant([0, 1, 2]), 0.0)[2]) == 1
  pb, pl, truncated = transforms.pad_boxes(boxes, tf.constant([0, 1, 2]), 2)
  assert pb.shape == (2, 4) and list(pl.numpy()) == [0, 1] and int(truncated) == 1
  pb, pl, truncated = transforms.pad_boxes(boxes[:1], tf.constant([4]), 3)
  assert list(pl.numpy()) == [4, -1, -1] and np.all(pb.numpy()[1:] == 0)
  padded = transforms.pad_to(tf.ones([5, 7, 3]), (8, 9))
  assert padded.shape == (8, 9, 3) and float(tf.reduce_sum(padded)) == 5 * 7 * 3
  norm = transforms.normalize(tf.fill([1, 1, 3], 255.0), (255, 0, 0), (1, 255, 1))
  np.testing.assert_allclose(norm.numpy().ravel(), [0, 1, 255])


def test_pipeline_flip_and_resize_keep_box_on_object(tmp_path):
  img_dir, path = _write_folder(tmp_path, {'a.png': _rect_image(60, 90, 20, 10, 50, 30),
                                           'b.png': _rect_image(80, 40, 5, 30, 35, 70)},
                                [dict(id=1, image_id=1, category_id=17,
                                      bbox=[20, 10, 30, 20]),
                                 dict(id=2, image_id=2, category_id=3,
                                      bbox=[5, 30, 30, 40])])
  src = sources.CocoFolderSource(train_images=img_dir, train_annotations=path)
  assert src.class_names == ('box', 'x') and src.category_ids == (3, 17)
  c = _config(short_side=100, max_size=150, image_size=(128, 160))
  b = _batches(pipeline.make_dataset(c, src, 'train', batch_size=2, training=True,
                                     seed=0), 6)
  flipped = set()
  for batch in b:
    for i in range(2):
      box = batch['boxes'][i, 0]
      np.testing.assert_allclose(box, _bright_bounds(batch['image'][i], c), atol=1.0)
      label = batch['labels'][i, 0]
      assert label == {1: 1, 2: 0}[batch['image_id'][i]]  # category 17 -> 1, 3 -> 0
      flipped.add((int(batch['image_id'][i]), bool(box[0] > 60)))
  assert len(flipped) > 2  # both images seen flipped and not


def test_image_without_annotations_is_all_negative(tmp_path):
  img_dir, path = _write_folder(
      tmp_path, {'empty.png': _rect_image(32, 32, 0, 0, 0, 0)}, [])
  src = sources.CocoFolderSource(train_images=img_dir, train_annotations=path,
                                 eval_images=img_dir, eval_annotations=path)
  for split, training in (('train', True), ('eval', False)):
    b = _batches(pipeline.make_dataset(_config(), src, split, batch_size=2,
                                       training=training, seed=0), 1)[0]
    assert np.all(b['labels'] == -1) and not b['gt_mask'].any()
    assert np.all(b['boxes'] == 0)


def test_crowd_boxes_are_not_targets(tmp_path):
  img_dir, path = _write_folder(
      tmp_path, {'a.png': _rect_image(40, 40, 5, 5, 20, 20)},
      [dict(id=1, image_id=1, category_id=3, bbox=[5, 5, 15, 15]),
       dict(id=2, image_id=1, category_id=17, iscrowd=1, bbox=[0, 0, 40, 40])])
  src = sources.CocoFolderSource(train_images=img_dir, train_annotations=path,
                                 eval_images=img_dir, eval_annotations=path)
  c = _config(random_flip=False)
  for split, training in (('train', True), ('eval', False)):
    b = _batches(pipeline.make_dataset(c, src, split, batch_size=1, training=training,
                                       seed=0), 1)[0]
    assert list(b['labels'][0]) == [0] + [-1] * (G - 1)
  gt = src.coco_ground_truth('eval')
  assert [a['iscrowd'] for a in gt['annotations']] == [0, 1]
  assert [a['category_id'] for a in gt['annotations']] == [3, 17]
  assert gt['annotations'][1]['area'] == 1600


_GOOD = dict(id=7, image_id=1, category_id=3, bbox=[1, 1, 5, 5])


@pytest.mark.parametrize('change, field', [
    (dict(bbox=None), 'bbox'),
    (dict(bbox=[1, 2, 3]), 'bbox'),
    (dict(bbox=[1, 'a', 3, 4]), 'bbox'),
    (dict(bbox=[1, 2, -3, 4]), 'bbox'),
    (dict(category_id=99), 'category_id'),
    (dict(image_id=42), 'image_id'),
])
def test_malformed_annotation_raises_naming_file_and_field(tmp_path, change, field):
  bad = dict(_GOOD, **change)
  if change.get('bbox', 0) is None:
    del bad['bbox']
  img_dir, path = _write_folder(
      tmp_path, {'a.png': _rect_image(32, 32, 1, 1, 6, 6),
                 'b.png': _rect_image(32, 32, 1, 1, 6, 6)},
      [bad, dict(_GOOD, id=8, image_id=2)])
  src = sources.CocoFolderSource(train_images=img_dir, train_annotations=path)
  with pytest.raises(ValueError) as e:
    src.num_examples('train')
  msg = str(e.value)
  assert path in msg and f'"{field}"' in msg
  if field != 'image_id':
    assert 'annotation id 7' in msg

  # skip_bad_examples: the bad image is skipped with a warning, the good one stays.
  src = sources.CocoFolderSource(train_images=img_dir, train_annotations=path,
                                 eval_images=img_dir, eval_annotations=path,
                                 skip_bad_examples=True)
  assert src.num_examples('train') == (2 if field == 'image_id' else 1)
  gt = src.coco_ground_truth('eval')
  assert [a['id'] for a in gt['annotations']] == [8]


def test_skip_logs_a_warning(tmp_path, caplog):
  img_dir, path = _write_folder(tmp_path, {'a.png': _rect_image(32, 32, 1, 1, 6, 6)},
                                [dict(_GOOD, bbox=[0, 0, 1])])
  src = sources.CocoFolderSource(train_images=img_dir, train_annotations=path,
                                 skip_bad_examples=True)
  with caplog.at_level(py_logging.WARNING):
    assert src.num_examples('train') == 0
  assert 'annotation id 7' in caplog.text and path in caplog.text


def test_bad_json_file_is_named(tmp_path):
  path = tmp_path / 'broken.json'
  path.write_text('{"images": [')
  src = sources.CocoFolderSource(train_images=str(tmp_path),
                                 train_annotations=str(path))
  with pytest.raises(ValueError, match='broken.json'):
    src.num_examples('train')


@pytest.mark.parametrize('bad, data', [('garbage.png', b'not an image'),
                                       ('empty.jpg', b''), ('missing.png', None)])
def test_unreadable_image_error_names_the_file(tmp_path, bad, data):
  img_dir, path = _write_folder(
      tmp_path, {'good.png': _rect_image(32, 32, 1, 1, 9, 9), bad: data}, [])
  src = sources.CocoFolderSource(eval_images=img_dir, eval_annotations=path)
  it = pipeline.make_dataset(_config(), src, 'eval', batch_size=1, training=False,
                             seed=0).as_numpy_iterator()
  next(it)  # good.png
  with pytest.raises(tf.errors.OpError, match=bad):
    next(it)


def test_unreadable_images_skipped(tmp_path):
  good = _rect_image(32, 32, 1, 1, 9, 9)
  img_dir, path = _write_folder(tmp_path, {'good.png': good, 'garbage.png': b'junk',
                                           'missing.png': None, 'good2.png': good}, [])
  c = _config(skip_bad_examples=True)
  src = sources.CocoFolderSource(eval_images=img_dir, eval_annotations=path,
                                 train_images=img_dir, train_annotations=path,
                                 skip_bad_examples=True)
  batches = list(pipeline.make_dataset(c, src, 'eval', batch_size=2, training=False,
                                       seed=0).as_numpy_iterator())
  assert len(batches) == 2  # the number of eval batches stays fixed
  ids = [i for b in batches for i, v in zip(b['image_id'], b['valid']) if v]
  assert ids == [1, 4]
  train = _batches(pipeline.make_dataset(c, src, 'train', batch_size=2, training=True,
                                         seed=0), 4)
  assert set(np.concatenate([b['image_id'] for b in train])) == {1, 4}
