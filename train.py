"""Train and/or evaluate a jaxdet detector.

  python train.py --config=configs/retinanet_shapes.py --workdir=workdirs/shapes
  python train.py --config=configs/retinanet_coco.py --workdir=DIR --config.train.batch_size=8
  python train.py --config=configs/retinanet_shapes.py:smoke --workdir=DIR --mode=eval
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxdet import cli

config_flags.DEFINE_config_file('config', None, 'Config file (configs/NAME.py[:VARIANT]).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and pictures go here.')
flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval'],
                  'train: train only; eval: evaluate the latest checkpoint.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (multi-host GPU/TPU runs). On TPU '
                  'pods and SLURM/Kubernetes clusters JAX finds the cluster itself; '
                  'elsewhere give the three flags below.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (--distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (--distributed).')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (--distributed).')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  cli.hide_accelerators_from_tensorflow()
  if FLAGS.distributed:
    # CPU processes reduce over gloo; accelerators use their own collectives.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  cli.setup_logging()
  from jaxdet.training import loop
  logging.info('JAX devices: %s', jax.devices())
  loop.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == '__main__':
  app.run(main)
