"""Plots of evaluation results from workdirs' `eval_metrics.jsonl`: AP against the IoU
threshold (0.5-0.95) and AP over training steps, several runs on one figure.

  python -m jaxdet.plots --out=docs/images/obc_ap_vs_iou.png \
      --run="Faster R-CNN=workdirs/faster_rcnn_shapes" \
      --run="OBC K=2=workdirs/obc_shapes" \
      --run="OBC K=2, argmax=workdirs/obc_shapes@bin_decoding=argmax"

A run is `[LABEL=]WORKDIR[@FIELD=VALUE...]`: the `@` filters keep the lines whose
`eval` settings (recorded with each line) have those values, so a re-evaluation of one
checkpoint with other settings can be told apart. Without a filter a run takes every
line; AP against IoU uses the run's last line (the latest step).
"""

import dataclasses
import json
import os
from typing import Sequence

from absl import app, flags

from jaxdet.evaluation import coco as coco_lib

# (IoU threshold, metric name) for the single-threshold APs, 0.5 ... 0.95.
IOU_POINTS = tuple(zip(coco_lib.IOU_THRESHOLDS, coco_lib.SINGLE_IOU_NAMES))


@dataclasses.dataclass(frozen=True)
class Run:
  """One curve: a label and the `eval_metrics.jsonl` lines it plots (by step)."""
  label: str
  lines: tuple


def _parse_value(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text  # unquoted strings: bin_decoding=argmax


def load_run(spec: str) -> Run:
  """A `Run` from `[LABEL=]WORKDIR[@FIELD=VALUE...]` (see the module docstring).

  Raises ValueError naming the file when it is missing, unreadable or nothing matches.
  """
  head, *filters = spec.split('@')
  label, _, workdir = head.rpartition('=')  # a label may itself contain '='
  path = os.path.join(workdir, 'eval_metrics.jsonl')
  if not os.path.exists(path):
    raise ValueError(f'{path}: no such file (run: {spec!r}); evaluate the workdir first '
                     '(train.py --mode=eval)')
  wanted = {}
  for f in filters:
    field, sep, value = f.partition('=')
    if not sep:
      raise ValueError(f'run {spec!r}: filter {f!r} is not FIELD=VALUE')
    wanted[field] = _parse_value(value)
  lines = []
  with open(path) as fh:
    for number, text in enumerate(fh, 1):
      if not text.strip():
        continue
      try:
        line = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{number}: not JSON ({e})') from None
      settings = line.get('eval', {})
      if all(settings.get(k) == v for k, v in wanted.items()):
        lines.append(line)
  if not lines:
    raise ValueError(f'{path}: no line matches {wanted} (run: {spec!r}; lines written '
                     'before jaxdet recorded the eval settings have none to match)')
  lines.sort(key=lambda line: line.get('step', 0))
  return Run(label or os.path.basename(os.path.normpath(workdir)), tuple(lines))


def ap_vs_iou(run: Run) -> tuple[list[float], list[float]]:
  """(IoU thresholds, AP at each) of the run's last line; thresholds the line lacks
  (older files have AP50-AP90 only at 0.5, 0.6, 0.7, 0.75, 0.8, 0.9) are skipped."""
  last = run.lines[-1]
  points = [(t, last[name]) for t, name in IOU_POINTS if last.get(name, -1) >= 0]
  return [p[0] for p in points], [p[1] for p in points]


def ap_over_steps(run: Run, metric: str = 'AP') -> tuple[list[int], list[float]]:
  """(steps, `metric` at each evaluation) of the run."""
  points = [(line['step'], line[metric]) for line in run.lines if metric in line]
  return [p[0] for p in points], [p[1] for p in points]


def plot_runs(runs: Sequence[Run], path: str, metric: str = 'AP',
              title: str = '') -> None:
  """Writes a PNG: AP vs IoU threshold (last evaluation of each run) and, when some
  run has several evaluations, `metric` over training steps beside it."""
  import matplotlib  # Only the analysis tools draw plots; keep training imports light.
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  # The steps panel only where some run was evaluated at several steps (config
  # train.eval_every; re-evaluations share a step); a column of points says nothing.
  over_steps = any(len(set(ap_over_steps(run, metric)[0])) > 1 for run in runs)
  fig, axes = plt.subplots(1, 1 + over_steps, figsize=(5.5 * (1 + over_steps), 4.2),
                           squeeze=False)
  left = axes[0, 0]
  for run in runs:
    left.plot(*ap_vs_iou(run), marker='o', label=run.label)
  left.set(xlabel='IoU threshold', ylabel='AP', title='AP against IoU threshold',
           xlim=(0.48, 0.97), ylim=(0, None))
  if over_steps:
    right = axes[0, 1]
    for run in runs:
      right.plot(*ap_over_steps(run, metric), marker='o', label=run.label)
    right.set(xlabel='training step', ylabel=metric, title=f'{metric} over training',
              ylim=(0, None))
  for ax in axes[0]:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


flags.DEFINE_multi_string('run', [], '[LABEL=]WORKDIR[@FIELD=VALUE...]; repeat per run.')
flags.DEFINE_string('out', 'ap_plots.png', 'Output PNG.')
flags.DEFINE_string('metric', 'AP', 'Metric drawn over training steps.')
flags.DEFINE_string('title', '', 'Figure title.')


def main(argv):
  del argv
  if not flags.FLAGS.run:
    raise app.UsageError('give at least one --run=[LABEL=]WORKDIR')
  runs = [load_run(spec) for spec in flags.FLAGS.run]
  plot_runs(runs, flags.FLAGS.out, flags.FLAGS.metric, flags.FLAGS.title)
  print(f'wrote {flags.FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
