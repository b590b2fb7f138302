"""The COCO and VOC configs train and evaluate through the real trainer on mocked tfds."""

import json
import os

import pytest

from jaxdet import config_base
from jaxdet.training import loop
from tests.test_sources_tfds import mocked  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def _config(repo_root, name):
  return config_base.load_config_file(os.path.join(repo_root, 'configs', f'{name}.py:smoke'))


# obc_coco takes the COCO path through the trainer and retinanet_voc RetinaNet on tfds;
# retinanet_coco, their cross product, would add compile time and no code path.
@pytest.mark.parametrize('name, num_eval_images', [('obc_coco', 3),
                                                   ('retinanet_voc', 2)])
def test_real_data_config_trains_and_evaluates(mocked, repo_root, tmp_path, name,  # noqa: F811
                                               num_eval_images):
  config = _config(repo_root, name)
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  config.train.update(num_steps=2, batch_size=2, log_every=1, checkpoint_every=2)
  config.eval.update(batch_size=2, num_images=-1)
  metrics = loop.run(config, str(tmp_path / 'run'), 'train_and_eval')
  assert metrics['num_images'] == num_eval_images
  assert 0.0 <= metrics['AP50'] <= 1.0
  assert ('mAP_VOC07' in metrics) == (name == 'retinanet_voc')
  with open(tmp_path / 'run' / 'eval_metrics.jsonl') as f:
    assert json.loads(f.readline())['step'] == 2
  assert os.listdir(tmp_path / 'run' / 'checkpoints') == ['2']
