"""jaxdet.plots: run specs, the points drawn, and the figure."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxdet import plots


def _write(workdir, lines):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'eval_metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  return str(workdir)


def _line(step, ap, decoding='expectation', thresholds=10):
  names = [n for _, n in plots.IOU_POINTS][:thresholds]
  line = {'step': step, 'AP': ap, 'eval': {'bin_decoding': decoding, 'nms_iou': 0.5}}
  line.update({n: ap * (1 - 0.08 * i) for i, n in enumerate(names)})
  return line


def test_run_specs_labels_and_filters(tmp_path):
  wd = _write(tmp_path / 'obc', [_line(100, 0.2), _line(200, 0.4),
                                 _line(200, 0.3, decoding='argmax')])
  run = plots.load_run(f'OBC K=2={wd}@bin_decoding=argmax')
  assert run.label == 'OBC K=2' and [l['AP'] for l in run.lines] == [0.3]
  run = plots.load_run(f'{wd}@bin_decoding=expectation@nms_iou=0.5')
  assert run.label == 'obc' and plots.ap_over_steps(run) == ([100, 200], [0.2, 0.4])
  ious, aps = plots.ap_vs_iou(run)
  np.testing.assert_allclose(ious, np.linspace(0.5, 0.95, 10))
  np.testing.assert_allclose(aps, [0.4 * (1 - 0.08 * i) for i in range(10)])
  # No filter: every line, the latest step last (the argmax line ties at 200).
  assert len(plots.load_run(wd).lines) == 3


def test_old_files_with_fewer_thresholds(tmp_path):
  line = {'step': 5, 'AP': 0.5, 'AP50': 0.8, 'AP75': 0.6, 'AP60': 0.75, 'AP70': 0.7,
          'AP80': 0.4, 'AP90': 0.1, 'APl': -1.0}
  run = plots.load_run(_write(tmp_path / 'old', [line]))
  ious, aps = plots.ap_vs_iou(run)
  np.testing.assert_allclose(ious, [0.5, 0.6, 0.7, 0.75, 0.8, 0.9])
  np.testing.assert_allclose(aps, [0.8, 0.75, 0.7, 0.6, 0.4, 0.1])


def test_errors_name_the_file(tmp_path):
  with pytest.raises(ValueError, match='eval_metrics.jsonl: no such file'):
    plots.load_run(str(tmp_path / 'missing'))
  wd = _write(tmp_path / 'a', [_line(1, 0.1)])
  with pytest.raises(ValueError, match='no line matches'):
    plots.load_run(f'{wd}@bin_decoding=argmax')
  (tmp_path / 'a' / 'eval_metrics.jsonl').write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r'eval_metrics.jsonl:2: not JSON'):
    plots.load_run(wd)


def test_plot_writes_a_figure(tmp_path):
  runs = [plots.load_run(_write(tmp_path / name, [_line(100, ap / 2), _line(200, ap)]))
          for name, ap in (('a', 0.5), ('b', 0.3))]
  out = tmp_path / 'fig' / 'ap.png'
  plots.plot_runs(runs, str(out), title='test')
  image = np.asarray(Image.open(out).convert('RGB'))
  assert image.shape[0] > 300 and image.shape[1] > 800
  # Two coloured curves, not a blank canvas: many non-grey pixels.
  colourful = np.ptp(image.astype(int), axis=-1) > 60
  assert colourful.sum() > 500


def test_single_evaluations_draw_one_panel(tmp_path):
  # One step, evaluated twice (a re-evaluation with other settings): still one panel.
  runs = [plots.load_run(_write(tmp_path / 'one', [_line(100, 0.5), _line(100, 0.4)]))]
  out = tmp_path / 'one.png'
  plots.plot_runs(runs, str(out))
  two = tmp_path / 'two.png'
  plots.plot_runs([plots.load_run(_write(tmp_path / 'b', [_line(1, .2), _line(2, .4)]))],
                  str(two))
  assert Image.open(out).size[0] < 0.6 * Image.open(two).size[0]
