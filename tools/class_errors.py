"""Which class the detector gives each object: top-1 class accuracy and confusion matrix.

Reads the detections the last evaluation wrote (WORKDIR/detections_val.json, from
`train.py` or `--mode=eval`) and the eval split's ground truth, takes on every object
the highest-scoring detection of any class with IoU >= --iou, and writes
OUT/class_errors.json (accuracy over all objects and per class, found fraction, most
frequent confusions) and OUT/class_confusion.png (ground-truth class against the top
detection's class; `jaxdet.evaluation.class_errors`).

  python tools/class_errors.py --config=configs/retinanet_shapes.py \
      --workdir=workdirs/retinanet_shapes [--out=DIR] [--iou=0.5]
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None,
                                'Config file the workdir was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Workdir whose detections_val.json to read.')
flags.DEFINE_string('out', None, 'Output folder (default: the workdir).')
flags.DEFINE_float('iou', 0.5, 'IoU a detection needs with an object to count on it.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')  # tf.data only
  from jaxdet import visualize
  from jaxdet.data import sources
  from jaxdet.evaluation import class_errors
  from jaxdet.training import loop

  if FLAGS.config.eval.num_images > 0:
    # Objects of the images the evaluation skipped would count as missed.
    raise SystemExit(f'config.eval.num_images={FLAGS.config.eval.num_images}: '
                     'tools/class_errors.py needs detections on the whole eval split; '
                     'evaluate with --config.eval.num_images=-1 (train.py --mode=eval) '
                     'and pass the same flag here')
  path = os.path.join(FLAGS.workdir, 'detections_val.json')
  if not os.path.exists(path):
    raise SystemExit(f'{path} not found: evaluate first (python train.py '
                     f'--config=... --workdir={FLAGS.workdir} --mode=eval)')
  with open(path) as f:
    detections = json.load(f)
  source = sources.build_source(FLAGS.config.data)
  ground_truth = source.coco_ground_truth(loop.EVAL_SPLIT)
  names = list(source.class_names)
  gt, top, _ = class_errors.top_detection_classes(detections, ground_truth, FLAGS.iou)
  matrix = class_errors.confusion_matrix(gt, top, list(source.category_ids))
  result = class_errors.summary(matrix, names)
  result.update(iou=FLAGS.iou, confusion=matrix.tolist(), classes=names)

  out = FLAGS.out or FLAGS.workdir
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'class_errors.json'), 'w') as f:
    json.dump(result, f, indent=2)
  visualize.confusion_plot(
      matrix, names, os.path.join(out, 'class_confusion.png'),
      title=f"top-1 class accuracy {result['accuracy']:.3f} over "
            f"{result['num_objects']} objects (IoU >= {FLAGS.iou:g})")
  print(f"top-1 class accuracy {result['accuracy']:.3f}, found {result['found']:.3f} "
        f"of {result['num_objects']} objects (IoU >= {FLAGS.iou:g})")
  for name, acc in result['per_class'].items():
    print(f'  {name:12s} {acc:.3f}')
  confusions = [f"{c['truth']} -> {c['called']} ({c['count']})"
                for c in result['top_confusions'][:5]]
  print('most frequent confusions:', ', '.join(confusions))
  print(f"Wrote {os.path.join(out, 'class_errors.json')} and "
        f"{os.path.join(out, 'class_confusion.png')}")


if __name__ == '__main__':
  app.run(main)
