"""What the command-line programs share (train.py, `python -m jaxdet.export`,
`python -m jaxdet.predict`): TensorFlow kept off the accelerators, readable logs."""

import logging as py_logging
from typing import Sequence

from absl import flags, logging
from ml_collections import config_flags


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO records of libraries that narrate every checkpoint and compilation."""
  NOISY = ('orbax', 'jax/_src', 'absl/', 'tensorflow')

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def quiet_library_logs():
  for handler in py_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_LibraryInfoFilter())


def hide_accelerators_from_tensorflow():
  """TensorFlow only reads data (and builds SavedModels) here: keep it off the GPUs JAX
  uses, where it would reserve their memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')


def setup_logging():
  """INFO logs of jaxdet, without the libraries' INFO chatter."""
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()


def command(main):
  """`main(argv)` for `absl.app.run`, after the setup every command shares. Returns
  None (app.run exits with main's return value)."""

  def run(argv):
    hide_accelerators_from_tensorflow()
    setup_logging()
    main(argv)

  return run


def define_checkpoint_flags(flag_values: flags.FlagValues,
                            argv: Sequence[str] | None) -> None:
  """--config and --workdir of the commands that read a trained workdir (export,
  predict); `argv` (default sys.argv) tells config_flags which `--config.field=value`
  overrides to expect."""
  config_flags.DEFINE_config_file(
      'config', None, 'Config file the workdir was trained with '
      '(configs/NAME.py[:VARIANT]); --config.field=value overrides it.',
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Workdir with checkpoints/ (from train.py).',
                      flag_values=flag_values)
