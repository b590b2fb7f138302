"""notebooks/quickstart.ipynb runs top to bottom (smoke settings) and shows real results."""

import json
import os

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow


def test_quickstart_notebook_runs(repo_root, shapes_cache, tmp_path, monkeypatch):
  monkeypatch.setenv('JAXDET_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('JAXDET_REPO', repo_root)
  monkeypatch.setenv('JAXDET_SHAPES_CACHE', shapes_cache)
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', os.path.join(shapes_cache, 'xla'))
  notebook = nbformat.read(os.path.join(repo_root, 'notebooks', 'quickstart.ipynb'),
                           as_version=4)
  # Kernel cwd = tmp_path: the notebook finds the checkout through JAXDET_REPO.
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()

  runs = tmp_path / 'quickstart_runs'
  for name in ('retinanet', 'iou_aware_retinanet'):
    with open(runs / name / 'eval_metrics.jsonl') as f:
      (metrics,) = [json.loads(line) for line in f]
    assert metrics['step'] == 30 and metrics['num_images'] == 16, metrics
    assert 0.0 <= metrics['AP'] <= metrics['AP50'] <= 1.0, metrics
  assert len(list((runs / 'retinanet_predictions').glob('*.png'))) == 8
  assert os.path.getsize(runs / 'ap_vs_iou.png') > 10_000

  def outputs(index):
    return notebook.cells[index].get('outputs', [])

  # Every picture cell displayed an image; the metric cells printed numbers.
  images = [i for i, cell in enumerate(notebook.cells)
            if any('image/png' in o.get('data', {}) for o in outputs(i))]
  assert len(images) == 3, images
  printed = '\n'.join(o.get('text', '') for cell in notebook.cells
                      for o in cell.get('outputs', []) if o.get('name') == 'stdout')
  assert 'AP50' in printed and 'IoU-aware RetinaNet' in printed, printed[-2000:]
