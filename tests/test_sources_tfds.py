"""tfds sources (coco/2017, voc/2007 + voc/2012) on mocked tfds data.

`tfds.testing.mock_data`'s random examples give each per-object field a different
length, so `_as_dataset` is replaced with hand-written examples that go through tfds's
real encoding and decoding (`features.encode_example` / `decode_example`) and then
through the real conversion code and pipeline.
"""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxdet import config_base
from jaxdet.data import pipeline
from jaxdet.data import sources


def _jpeg(h, w, seed):
  rng = np.random.default_rng(seed)
  img = np.full((h, w, 3), 40, np.uint8) + rng.integers(0, 20, (h, w, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='jpeg', quality=95)
  return buf.getvalue()


def _bbox(x1, y1, x2, y2, h, w):
  """Absolute xyxy -> tfds BBox (normalized ymin, xmin, ymax, xmax)."""
  return tfds.features.BBox(ymin=y1 / h, xmin=x1 / w, ymax=y2 / h, xmax=x2 / w)


# (height, width, [(x1, y1, x2, y2, label, crowd/difficult)]) per image.
COCO = {
    'train': [
        (48, 64, [(4, 8, 36, 40, 0, False), (0, 0, 64, 48, 17, True)]),
        (40, 32, [(2, 4, 30, 20, 79, False)]),
        (32, 48, []),
    ],
    'validation': [
        (60, 80, [(10, 20, 50, 50, 0, False), (0, 0, 80, 60, 2, True),
                  (60, 5, 79, 25, 56, False)]),
        (30, 40, []),
        (50, 30, [(1, 1, 29, 49, 11, False)]),
    ],
}
COCO_IDS = {'train': [9, 25, 30], 'validation': [139, 285, 632]}

VOC = {
    ('2007', 'train+validation'): [
        ('000005.jpg', 50, 70, [(10, 10, 40, 45, 8, False), (50, 5, 69, 30, 8, True)]),
        ('000007.jpg', 40, 40, [(3, 3, 37, 37, 6, False)]),
    ],
    ('2012', 'train+validation'): [
        ('2008_000008.jpg', 60, 40, [(5, 6, 35, 50, 12, False)]),
        ('2008_000015.jpg', 30, 50, [(0, 0, 20, 20, 4, True)]),
        ('2012_004331.jpg', 30, 30, []),
    ],
    ('2007', 'test'): [
        ('000001.jpg', 40, 60, [(8, 12, 50, 38, 11, False), (1, 1, 9, 9, 14, True)]),
        ('000002.jpg', 36, 36, [(4, 4, 30, 30, 18, False)]),
    ],
}


def _coco_examples(split):
  for k, (h, w, objs) in enumerate(COCO[split]):
    yield {
        'image': _jpeg(h, w, k), 'image/filename': f'{COCO_IDS[split][k]:012d}.jpg',
        'image/id': COCO_IDS[split][k],
        'objects': {
            'id': np.arange(len(objs), dtype=np.int64) + 1,
            'area': np.array([(o[2] - o[0]) * (o[3] - o[1]) // 2 for o in objs],
                             np.int64),
            'bbox': [_bbox(*o[:4], h, w) for o in objs],
            'label': np.array([o[4] for o in objs], np.int64),
            'is_crowd': np.array([o[5] for o in objs], bool),
        },
    }


def _voc_examples(year, split):
  for k, (name, h, w, objs) in enumerate(VOC[(year, split)]):
    labels = np.array([o[4] for o in objs], np.int64)
    yield {
        'image': _jpeg(h, w, k), 'image/filename': name,
        'objects': {
            'label': labels, 'bbox': [_bbox(*o[:4], h, w) for o in objs],
            'pose': np.zeros(len(objs), np.int64),
            'is_truncated': np.zeros(len(objs), bool),
            'is_difficult': np.array([o[5] for o in objs], bool),
        },
        'labels': sorted(set(labels.tolist())),
        'labels_no_difficult': sorted({o[4] for o in objs if not o[5]}),
    }


def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False,
                **kwargs):
  """Replaces `FileReaderBuilder._as_dataset` the way `mock_data` does by default."""
  del read_config, shuffle_files, kwargs
  if self.name == 'coco':
    examples = list(_coco_examples(str(split)))
  else:
    examples = list(_voc_examples(self.builder_config.name, str(split)))
  features = self.info.features
  encoded = [features.encode_example(ex) for ex in examples]
  specs = features.get_serialized_info()
  ds = tf.data.Dataset.from_generator(
      lambda: iter(encoded),
      output_signature=tf.nest.map_structure(
          lambda t: tf.TensorSpec(t.shape, t.tf_dtype), specs))
  ds = ds.apply(tf.data.experimental.assert_cardinality(len(encoded)))
  return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))


@pytest.fixture
def mocked():
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    yield


def _config(**kw):
  c = config_base.data_config()
  c.update(dict(short_side=64, max_size=100, image_size=(96, 112), max_boxes=6,
                random_flip=False, min_box_size=1.0, shuffle_buffer=4), **kw)
  return c


def test_coco_conversion_to_absolute_xyxy(mocked, tmp_path):
  src = sources.build_source(_config(source='tfds_coco', tfds_data_dir=str(tmp_path)))
  assert isinstance(src, sources.TfdsCocoSource)
  assert len(src.class_names) == 80 and src.category_ids[:12][-1] == 13
  assert src.num_examples('train') == 3 and src.num_examples('eval') == 3
  ex = next(src.dataset('eval').as_numpy_iterator())
  assert ex['image_id'] == 139
  np.testing.assert_allclose(ex['boxes'], [[10, 20, 50, 50], [0, 0, 80, 60],
                                           [60, 5, 79, 25]], atol=1e-3)
  np.testing.assert_array_equal(ex['labels'], [0, 2, 56])
  np.testing.assert_array_equal(ex['is_crowd'], [False, True, False])

  gt = src.coco_ground_truth('eval')
  assert [im['id'] for im in gt['images']] == COCO_IDS['validation']
  assert [(im['height'], im['width']) for im in gt['images']] == [(60, 80), (30, 40),
                                                                  (50, 30)]
  anns = gt['annotations']
  assert [a['category_id'] for a in anns] == [1, 3, 62, 13]  # official COCO ids
  assert [a['iscrowd'] for a in anns] == [0, 1, 0, 0]
  assert [a['image_id'] for a in anns] == [139, 139, 139, 632]
  np.testing.assert_allclose(anns[0]['bbox'], [10, 20, 40, 30], atol=1e-3)
  assert anns[0]['area'] == 600  # tfds's (segmentation) area, not the box's
  assert len({a['id'] for a in anns}) == 4 and min(a['id'] for a in anns) >= 1


def test_coco_pipeline_drops_crowd_and_matches_gt_ids(mocked, tmp_path):
  c = _config(source='tfds_coco', tfds_data_dir=str(tmp_path))
  src = sources.build_source(c)
  batch = next(pipeline.make_dataset(c, src, 'eval', batch_size=4, training=False,
                                     seed=0).as_numpy_iterator())
  assert list(batch['valid']) == [True, True, True, False]
  assert list(batch['image_id'][:3]) == COCO_IDS['validation']
  # Image 0: 60x80 -> scale min(64/60, 100/80, 96/60, 112/80) = 1.0667; crowd dropped.
  assert np.isclose(batch['scale'][0], 64 / 60)
  np.testing.assert_array_equal(batch['orig_size'][:3], [[60, 80], [30, 40], [50, 30]])
  np.testing.assert_array_equal(batch['labels'][0], [0, 56, -1, -1, -1, -1])
  np.testing.assert_allclose(batch['boxes'][0, :2],
                             np.array([[10, 20, 50, 50], [60, 5, 79, 25]]) * 64 / 60,
                             atol=0.05)
  gt_ids = {im['id'] for im in src.coco_ground_truth('eval')['images']}
  assert set(batch['image_id'][batch['valid']]) == gt_ids

  train = pipeline.make_dataset(c, src, 'train', batch_size=3, training=True, seed=0)
  batches = [b for _, b in zip(range(4), train.as_numpy_iterator())]
  labels = {}
  for b in batches:
    for i, l in zip(b['image_id'], b['labels']):
      labels[int(i)] = sorted(l[l >= 0].tolist())
  assert labels == {9: [0], 25: [79], 30: []}  # crowd (label 17) never a target
  # Deterministic and resumable on tfds too.
  resumed = next(pipeline.make_dataset(c, src, 'train', batch_size=3, training=True,
                                       seed=0, start_step=2).as_numpy_iterator())
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], batches[2][k])


def test_voc_07_12_conversion_difficult_and_ids(mocked, tmp_path):
  c = _config(source='tfds_voc', tfds_data_dir=str(tmp_path))
  src = sources.build_source(c)
  assert src.class_names[14] == 'person' and src.category_ids == tuple(range(1, 21))
  assert src.num_examples('train') == 5 and src.num_examples('eval') == 2
  train = list(src.dataset('train').as_numpy_iterator())
  assert [int(e['image_id']) for e in train] == [5, 7, 2008000008, 2008000015,
                                                 2012004331]
  np.testing.assert_allclose(train[0]['boxes'], [[10, 10, 40, 45], [50, 5, 69, 30]],
                             atol=1e-3)
  np.testing.assert_array_equal(train[0]['is_crowd'], [False, True])

  # Difficult boxes are never training targets.
  batches = pipeline.make_dataset(c, src, 'train', batch_size=5, training=True, seed=3)
  b = next(batches.as_numpy_iterator())
  got = {int(i): sorted(l[l >= 0].tolist()) for i, l in zip(b['image_id'], b['labels'])}
  assert got == {5: [8], 7: [6], 2008000008: [12], 2008000015: [], 2012004331: []}

  # Evaluation: difficult -> iscrowd (ignored), ids consistent with the batches.
  gt = src.coco_ground_truth('eval')
  assert [im['id'] for im in gt['images']] == [1, 2]
  got = [(a['image_id'], a['category_id'], a['iscrowd']) for a in gt['annotations']]
  assert got == [(1, 12, 0), (1, 15, 1), (2, 19, 0)]
  np.testing.assert_allclose(gt['annotations'][0]['bbox'], [8, 12, 42, 26], atol=1e-3)
  assert np.isclose(gt['annotations'][0]['area'], 42 * 26, rtol=1e-4)
  ev = next(pipeline.make_dataset(c, src, 'eval', batch_size=2, training=False,
                                  seed=0).as_numpy_iterator())
  assert list(ev['image_id']) == [1, 2]
  np.testing.assert_array_equal(ev['labels'][0], [11, -1, -1, -1, -1, -1])
