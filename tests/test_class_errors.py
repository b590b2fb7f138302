"""Top-detection classes and the confusion matrix on hand-built detections, and the
tools/class_errors.py command."""

import json

import numpy as np
import pytest

from jaxdet import config_base
from jaxdet import visualize
from jaxdet.data import sources
from jaxdet.evaluation import class_errors
from tests import cli


def _gt(*boxes):
  """COCO ground truth from (image_id, category_id, [x, y, w, h], iscrowd) tuples."""
  return dict(images=[dict(id=i) for i in sorted({b[0] for b in boxes})],
              annotations=[dict(id=k + 1, image_id=i, category_id=c, bbox=list(b),
                                iscrowd=crowd, area=b[2] * b[3])
                           for k, (i, c, b, crowd) in enumerate(boxes)])


def _det(image_id, category_id, bbox, score):
  return dict(image_id=image_id, category_id=category_id, bbox=list(bbox), score=score)


def test_top_detection_picks_highest_score_over_iou_threshold():
  gt = _gt((1, 1, (0, 0, 10, 10), 0),     # right class wins over a lower-scored wrong one
           (1, 2, (50, 50, 20, 20), 0),   # wrong class scores higher: confused
           (2, 1, (0, 0, 10, 10), 0),     # only a detection at IoU 0.25: missed
           (2, 3, (30, 30, 10, 10), 1),   # crowd: left out
           (3, 2, (0, 0, 8, 8), 0))       # image without detections: missed
  dets = [_det(1, 1, (0, 0, 10, 10), 0.9), _det(1, 2, (1, 0, 10, 10), 0.4),
          _det(1, 1, (50, 50, 20, 20), 0.7), _det(1, 2, (52, 50, 20, 20), 0.3),
          # a high score far from every object changes nothing
          _det(1, 3, (200, 200, 5, 5), 0.99),
          _det(2, 1, (0, 0, 5, 5), 0.8), _det(2, 3, (30, 30, 10, 10), 0.9)]
  gt_cls, top_cls, top_scores = class_errors.top_detection_classes(dets, gt, 0.5)
  np.testing.assert_array_equal(gt_cls, [1, 2, 1, 2])
  np.testing.assert_array_equal(top_cls, [1, 1, class_errors.MISSED, class_errors.MISSED])
  np.testing.assert_allclose(top_scores, [0.9, 0.7, 0.0, 0.0])
  # IoU 0.25 counts at a lower threshold.
  assert class_errors.top_detection_classes(dets, gt, 0.2)[1][2] == 1

  matrix = class_errors.confusion_matrix(gt_cls, top_cls, [1, 2, 3])
  np.testing.assert_array_equal(matrix, [[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
  s = class_errors.summary(matrix, ['a', 'b', 'c'])
  assert s['num_objects'] == 4 and s['accuracy'] == 0.25 and s['found'] == 0.5
  assert s['per_class'] == dict(a=0.5, b=0.0, c=0.0)
  assert s['top_confusions'] == [dict(truth='b', called='a', count=1)]


def test_no_detections_and_no_objects(tmp_path):
  gt = _gt((1, 1, (0, 0, 10, 10), 0))
  gt_cls, top_cls, _ = class_errors.top_detection_classes([], gt)
  assert list(top_cls) == [class_errors.MISSED]
  empty = class_errors.top_detection_classes([], dict(images=[], annotations=[]))
  assert all(a.size == 0 for a in empty)
  matrix = class_errors.confusion_matrix(*empty[:2], [1, 2])
  assert matrix.shape == (2, 3) and matrix.sum() == 0
  assert class_errors.summary(matrix, ['a', 'b'])['accuracy'] == 0.0
  path = tmp_path / 'confusion.png'
  visualize.confusion_plot(class_errors.confusion_matrix(gt_cls, top_cls, [1, 2]),
                           ['a', 'b'], str(path), title='t')
  assert path.stat().st_size > 1000


def test_class_errors_cli(repo_root, shapes_cache, tmp_path):
  """tools/class_errors.py on detections made from the `shapes` smoke val split: every
  object detected, every third one with the next class."""
  config = config_base.load_config_file(f'{repo_root}/configs/retinanet_shapes.py:smoke')
  config.data.shapes.cache_dir = shapes_cache
  source = sources.build_source(config.data)
  gt = source.coco_ground_truth('eval')
  cats = list(source.category_ids)
  dets = []
  for k, a in enumerate(gt['annotations']):
    cat = a['category_id']
    if k % 3 == 2:  # called the next class
      cat = cats[(cats.index(cat) + 1) % len(cats)]
    dets.append(_det(a['image_id'], cat, a['bbox'], 0.9))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'detections_val.json').write_text(json.dumps(dets))

  log = cli.run_script(repo_root, shapes_cache, 'tools/class_errors.py',
                       '--config=configs/retinanet_shapes.py:smoke',
                       f'--workdir={workdir}',
                       f'--config.data.shapes.cache_dir={shapes_cache}',
                       '--config.eval.num_images=-1')
  result = json.loads((workdir / 'class_errors.json').read_text())
  n = len(gt['annotations'])
  assert result['num_objects'] == n and result['found'] == 1.0
  assert result['accuracy'] == pytest.approx(1 - (n // 3) / n)
  assert np.sum(result['confusion']) == n
  assert f"top-1 class accuracy {result['accuracy']:.3f}" in log
  assert (workdir / 'class_confusion.png').stat().st_size > 5000
