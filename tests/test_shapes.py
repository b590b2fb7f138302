"""The built-in `shapes` dataset: determinism, tight boxes, ranges, cache."""

import json
import os
import time

import numpy as np
import pytest

from jaxdet.data import shapes


def _read_all(paths):
  out = {}
  for split in ('train', 'val'):
    with open(paths[f'{split}_annotations'], 'rb') as f:
      out[f'{split}.json'] = f.read()
    folder = paths[f'{split}_images']
    for name in sorted(os.listdir(folder)):
      with open(os.path.join(folder, name), 'rb') as f:
        out[f'{split}/{name}'] = f.read()
  return out


def test_deterministic_across_cache_dirs_and_worker_counts(tmp_path):
  a = shapes.generate(60, 20, 128, seed=3, cache_dir=str(tmp_path / 'a'),
                      num_workers=2)
  b = shapes.generate(60, 20, 128, seed=3, cache_dir=str(tmp_path / 'b'),
                      num_workers=1)
  files_a, files_b = _read_all(a), _read_all(b)
  assert len(files_a) == 60 + 20 + 2
  assert files_a.keys() == files_b.keys()
  for k in files_a:
    assert files_a[k] == files_b[k], k
  # A different seed is a different dataset.
  c = shapes.generate(60, 20, 128, seed=4, cache_dir=str(tmp_path / 'a'))
  assert c['root'] != a['root']
  assert _read_all(c)['train.json'] != files_a['train.json']


def test_cache_is_reused_and_leaves_no_temporary_folders(tmp_path):
  a = shapes.generate(10, 5, 128, seed=0, cache_dir=str(tmp_path))
  mtime = os.path.getmtime(a['train_annotations'])
  b = shapes.generate(10, 5, 128, seed=0, cache_dir=str(tmp_path))
  assert a == b and os.path.getmtime(b['train_annotations']) == mtime
  assert os.listdir(tmp_path) == [os.path.basename(a['root'])]
  assert sorted(os.listdir(a['root'])) == ['annotations', 'images']


@pytest.mark.parametrize('seed', range(12))
def test_boxes_are_tight_bounds_of_visible_pixels(seed):
  ex = shapes.render_example((7, 0, seed), 192)
  n = len(ex['labels'])
  assert ex['boxes'].shape == (n, 4) and ex['visible'].shape == (n, 192, 192)
  # Visible masks never overlap: each pixel shows at most one object.
  assert ex['visible'].sum(0).max(initial=0) <= 1
  for box, vis, area in zip(ex['boxes'], ex['visible'], ex['area']):
    ys, xs = np.nonzero(vis)
    np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert area == vis.sum()
    # The visible pixels carry the object's flat colour (plus mild noise): their colour
    # spread is small compared with the contrast the drawing enforces.
    assert ex['image'][vis].astype(float).std(0).max() < 12


def test_annotations_in_range():
  size = 160
  counts = []
  for i in range(150):
    ex = shapes.render_example((1, 0, i), size)
    counts.append(len(ex['labels']))
    assert ex['image'].shape == (size, size, 3) and ex['image'].dtype == np.uint8
    b = ex['boxes']
    assert np.all(b >= 0) and np.all(b <= size)
    wh = b[:, 2:] - b[:, :2]
    assert np.all(wh >= shapes._MIN_VISIBLE_EXTENT)
    assert np.all(wh <= size)
    assert np.all((ex['labels'] >= 0) & (ex['labels'] < len(shapes.CLASS_NAMES)))
  counts = np.array(counts)
  assert counts.max() <= 6 and counts.mean() > 2
  assert len(shapes.CLASS_NAMES) >= 6


def test_generate_1000_images_coco_format(tmp_path):
  t = time.time()
  paths = shapes.generate(900, 100, 256, seed=0, cache_dir=str(tmp_path))
  print(f'generated 1000 images of 256x256 in {time.time() - t:.1f} s')
  with open(paths['train_annotations']) as f:
    gt = json.load(f)
  assert [c['id'] for c in gt['categories']] == list(range(1, 9))
  assert len(gt['images']) == 900
  image_ids = {im['id'] for im in gt['images']}
  assert all(im['width'] == im['height'] == 256 for im in gt['images'])
  ann_ids = [a['id'] for a in gt['annotations']]
  assert min(ann_ids) >= 1 and len(set(ann_ids)) == len(ann_ids)
  labels = np.array([a['category_id'] for a in gt['annotations']])
  assert set(labels) == set(range(1, 9))  # every class appears
  sides = []
  for a in gt['annotations']:
    assert a['image_id'] in image_ids and a['iscrowd'] == 0
    x, y, w, h = a['bbox']
    assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
    assert 0 < a['area'] <= w * h
    sides.append(max(w, h) / 256)
  sides = np.array(sides)
  # Sizes span small to nearly the whole image.
  assert sides.min() < 0.1 and sides.max() > 0.8
  for split in ('train', 'val'):
    names = os.listdir(paths[f'{split}_images'])
    assert len(names) == (900 if split == 'train' else 100)
