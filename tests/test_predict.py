"""Prediction from a workdir's checkpoint: detections.json and labelled pictures, as
`python -m jaxdet.predict` writes them; clear errors for bad or missing images."""

import json
import os
import re

import numpy as np
from PIL import Image
import pytest

from jaxdet import export as export_lib
from jaxdet import predict
from jaxdet.data import shapes
from jaxdet.data import sources
from tests.inference_utils import (SIZES, run_command, save_random_checkpoint,
                                   shapes_images, smoke_config, smoke_flags)

NAMES = ('b_portrait', 'a_landscape', 'c_small')  # sorted: a, b, c
CONFIG = 'faster_rcnn_shapes'  # a two-stage detector; tests/test_export.py runs RetinaNet


def test_predict_writes_json_and_pictures(repo_root, shapes_cache, tmp_path):
  config = smoke_config(repo_root, CONFIG, shapes_cache)
  workdir = str(tmp_path / 'run')
  state = save_random_checkpoint(config, workdir)

  folder = tmp_path / 'images'
  folder.mkdir()
  for name, image in zip(NAMES, shapes_images()):
    Image.fromarray(image).save(folder / f'{name}.png')
  (folder / 'notes.txt').write_text('not an image')
  out = str(tmp_path / 'out')
  # Batches of 2: the second is padded.
  results = run_command(predict, *smoke_flags(repo_root, CONFIG, shapes_cache),
                        f'--workdir={workdir}', f'--images={folder}', f'--out={out}',
                        '--score_threshold=0', '--batch_size=2')

  with open(os.path.join(out, predict.JSON_FILE)) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(results))
  paths = sorted(str(folder / f'{n}.png') for n in NAMES)
  per_image = predict.predict_images(
      config, state.variables(), paths, class_names=shapes.CLASS_NAMES, batch_size=2)
  assert [len(d) for d in per_image] == [
      sum(r['image_id'] == i for r in written) for i in (1, 2, 3)]
  assert min(len(d) for d in per_image) > 10
  sizes = {str(folder / f'{n}.png'): hw for n, hw in zip(NAMES, SIZES)}
  for r in written:
    h, w = sizes[r['file_name']]
    x, y, bw, bh = r['bbox']
    assert 0 <= x <= x + bw <= w + 1e-3 and 0 <= y <= y + bh <= h + 1e-3
    assert shapes.CLASS_NAMES[r['category_id'] - 1] == r['category_name']
    assert 0 <= r['score'] <= 1
  for image_id, (path, dets) in enumerate(zip(paths, per_image), start=1):
    assert [dict(r, file_name=path, image_id=image_id) for r in dets] == [
        r for r in written if r['image_id'] == image_id]
  for name, (h, w) in zip(NAMES, SIZES):
    with Image.open(os.path.join(out, f'{name}.png')) as picture:
      assert picture.size == (w, h)
      assert not np.array_equal(np.asarray(picture.convert('RGB')),
                                np.asarray(Image.open(folder / f'{name}.png')))

  # The threshold leaves detections out of the JSON.
  some = predict.run(config, workdir, paths[0], str(tmp_path / 'out2'),
                     score_threshold=float(np.median([r['score'] for r in per_image[0]])),
                     batch_size=2, progress=False)
  assert 0 < len(some) < len(per_image[0])

  # Errors name the file or the pattern.
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'')
  with pytest.raises(ValueError, match=str(broken)):
    predict.run(config, workdir, f'{paths[0]},{broken}', str(tmp_path / 'out3'),
                progress=False)
  with pytest.raises(FileNotFoundError, match='nothing'):
    predict.run(config, workdir, str(tmp_path / 'nothing*.jpg'), out)
  with pytest.raises(ValueError, match='would both be drawn to x.png'):
    predict.picture_names(['a/x.png', 'b/x.jpg'])


def test_find_images(tmp_path):
  for name in ('b.JPG', 'a.png', 'c.txt'):
    (tmp_path / name).write_bytes(b'x')
  (tmp_path / 'sub').mkdir()
  found = predict.find_images(str(tmp_path))
  assert found == [str(tmp_path / 'a.png'), str(tmp_path / 'b.JPG')]
  assert predict.find_images(f'{tmp_path}/*.png,{tmp_path / "b.JPG"},{tmp_path}') == found
  with pytest.raises(FileNotFoundError, match='missing.png'):
    predict.find_images(f'{tmp_path / "a.png"},{tmp_path / "missing.png"}')


def test_commands_name_what_is_missing(repo_root, shapes_cache, tmp_path):
  common = [*smoke_flags(repo_root, 'retinanet_shapes', shapes_cache),
            f'--workdir={tmp_path}']
  with pytest.raises(FileNotFoundError, match=r'none\*\.jpg'):
    run_command(predict, *common, f'--images={tmp_path}/none*.jpg',
                f'--out={tmp_path}/out')
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'checkpoints'))):
    run_command(export_lib, *common)


def test_pictures_put_the_best_label_on_top():
  from jaxdet import visualize
  image = np.zeros((60, 80, 3), np.uint8)
  box = [10.0, 30.0, 70.0, 55.0]  # both labels land on the same pixels
  picture = np.asarray(visualize.draw_detections(
      image, np.array([box, box]), np.array([0, 1]), np.array([0.9, 0.4]), ['a', 'b']))
  colors = visualize._palette(2)
  label = picture[20, 10]  # the label's fill, above the box
  assert tuple(label) == colors[0]


def test_shapes_categories_without_generating_the_dataset(repo_root, shapes_cache,
                                                          tmp_path):
  config = smoke_config(repo_root, CONFIG, str(tmp_path / 'empty_cache'))
  names, ids = sources.categories(config.data)
  assert not os.path.exists(tmp_path / 'empty_cache')  # nothing generated
  # The same as the generated dataset's annotations say.
  config.data.shapes.cache_dir = shapes_cache
  source = sources.build_source(config.data)
  assert names == source.class_names == shapes.CLASS_NAMES
  assert ids == source.category_ids == tuple(range(1, len(names) + 1))
