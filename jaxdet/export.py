"""Export a trained detector's whole inference function, weights included.

  python -m jaxdet.export --config=configs/retinanet_shapes.py --workdir=DIR \\
      [--out=DIR/export] [--batch_size=N] [--platforms=cpu,cuda]

restores the latest checkpoint of DIR (as `train.py --mode=eval`) and writes to --out:

  model.jax_exported  `jax.export` artifact (serialized StableHLO, weights as constants):
                      `jax.export.deserialize(data).call(images, scale, orig_size)`
  saved_model/        TF SavedModel (jax2tf; weights as variables), signature
                      'serving_default' = `tf.saved_model.load(path).serve(images,
                      scale, orig_size)`
  export.json         what a caller needs to know: inputs and outputs, canvas, resize
                      and normalization settings, class names, batch sizes, platforms

Both compute `inference.make_infer` (normalize, network, decoding, NMS) on inputs that
`inference.preprocess` made (see `jaxdet.inference` for the shapes). The canvas (H, W)
is fixed; the batch is symbolic (1 <= b <= --max_batch_size) where the detector traces
with a symbolic batch, else fixed (a warning says so). docs/export_predict.md has more.
"""

import json
import logging
import os
from typing import Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet import cli
from jaxdet import inference
from jaxdet.ops import topk

JAX_FILE = 'model.jax_exported'
SAVED_MODEL_DIR = 'saved_model'
METADATA_FILE = 'export.json'
# The default bound of the symbolic batch. Some ops check at trace time that their
# int32 gather indices cannot overflow (e.g. `roi_align`: batch x pyramid cells < 2^31),
# which is undecidable for an unbounded batch.
MAX_BATCH_SIZE = 1024


def symbolic_batch(max_batch_size: int = MAX_BATCH_SIZE):
  """The symbolic batch dimension 'b', 1 <= b <= max_batch_size."""
  b, = jax.export.symbolic_shape('b', constraints=(f'b <= {int(max_batch_size)}',))
  return b


def input_specs(canvas: Sequence[int], batch) -> tuple[jax.ShapeDtypeStruct, ...]:
  """(images uint8 [b, H, W, 3], scale float32 [b], orig_size int32 [b, 2]) for a batch
  size `batch` (int or symbolic)."""
  h, w = canvas
  return (jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch,), jnp.float32),
          jax.ShapeDtypeStruct((batch, 2), jnp.int32))


def export_jax(infer: Callable, variables: dict, canvas: Sequence[int], *,
               batch_size: int | None = None, max_batch_size: int = MAX_BATCH_SIZE,
               fallback_batch_size: int = 1, platforms: Sequence[str] | None = None
               ) -> tuple[jax.export.Exported, int | None]:
  """`jax.export` of `infer(variables, images, scale, orig_size)` with the variables
  baked in.

  Args:
    batch_size: a fixed batch; None: a symbolic one (1 <= b <= `max_batch_size`), or
      `fallback_batch_size` with a warning if the function does not trace with it.
    platforms: e.g. ('cpu', 'cuda'); None: the platform JAX runs on.
  Returns:
    (the Exported, its fixed batch size or None if the batch is symbolic).
  """
  fn = jax.jit(lambda images, scale, orig_size: infer(variables, images, scale, orig_size))
  export = jax.export.export(fn, platforms=platforms)
  if batch_size is None:
    try:
      return export(*input_specs(canvas, symbolic_batch(max_batch_size))), None
    except Exception as e:  # pylint: disable=broad-except
      # Which op fails depends on the detector (and on jax); the fixed export below
      # raises again if the failure is not about the batch.
      logging.warning(
          'The inference function does not trace with a symbolic batch (%s: %s); '
          'exporting it for a fixed batch of %d instead.', type(e).__name__,
          str(e).splitlines()[0] if str(e) else '', fallback_batch_size)
      batch_size = fallback_batch_size
  return export(*input_specs(canvas, batch_size)), batch_size


def export_saved_model(infer: Callable, variables: dict, canvas: Sequence[int],
                       path: str, *, batch_size: int | None = None,
                       max_batch_size: int = MAX_BATCH_SIZE,
                       platforms: Sequence[str] | None = None) -> None:
  """Writes a TF SavedModel of `infer` to `path` (jax2tf): a tf.Module whose `serve`
  (also the 'serving_default' signature) maps images, scale, orig_size to the
  detections dict; the variables are tf.Variables of the module.

  `batch_size`: fixed, or None for a symbolic batch (1 <= b <= `max_batch_size`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  h, w = canvas
  leaves, treedef = jax.tree.flatten(variables)
  dim = 'b' if batch_size is None else str(int(batch_size))
  tf_infer = jax2tf.convert(
      lambda leaves, images, scale, orig_size: infer(
          jax.tree.unflatten(treedef, leaves), images, scale, orig_size),
      polymorphic_shapes=[None, f'{dim}, {h}, {w}, 3', dim, f'{dim}, 2'],
      polymorphic_constraints=(() if batch_size is not None
                               else (f'b <= {int(max_batch_size)}',)),
      native_serialization_platforms=platforms, with_gradient=False)
  module = tf.Module()
  module.variables_list = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]
  signature = [tf.TensorSpec([batch_size, h, w, 3], tf.uint8, name='images'),
               tf.TensorSpec([batch_size], tf.float32, name='scale'),
               tf.TensorSpec([batch_size, 2], tf.int32, name='orig_size')]
  module.serve = tf.function(
      lambda images, scale, orig_size: tf_infer(module.variables_list, images, scale,
                                                orig_size),
      input_signature=signature, autograph=False)
  # TF's XlaCallModule reads an older StableHLO than jax writes: trace (and save,
  # which traces again) with the sort-based top-k that it can read.
  with topk.portable():
    serve = module.serve.get_concrete_function()
    tf.saved_model.save(module, path, signatures={'serving_default': serve})


def _describe_batch(batch_size: int | None, max_batch_size: int) -> str:
  return (f'symbolic: any 1 <= b <= {max_batch_size}' if batch_size is None
          else f'fixed: {batch_size}')


def export(config: ml_collections.ConfigDict, restored, out_dir: str, *,
           batch_size: int | None = None, max_batch_size: int = MAX_BATCH_SIZE,
           platforms: Sequence[str] | None = None) -> dict:
  """Writes both artifacts and export.json for a restored detector to `out_dir`.

  Args:
    restored: `training.loop.Restored` (detector, variables, step, class names).
    batch_size: a fixed batch; None: symbolic if the detector allows it, else
      `config.eval.batch_size` (with a warning).
    max_batch_size, platforms: as in `export_jax`.
  Returns:
    The contents of export.json.
  """
  os.makedirs(out_dir, exist_ok=True)
  canvas = inference.canvas_size(config.data)
  infer = inference.make_infer(restored.detector, config.data)
  variables = restored.variables
  platforms = tuple(platforms) if platforms else None  # None: where JAX runs

  exported, batch_size = export_jax(
      infer, variables, canvas, batch_size=batch_size, max_batch_size=max_batch_size,
      fallback_batch_size=config.eval.batch_size, platforms=platforms)
  jax_path = os.path.join(out_dir, JAX_FILE)
  with open(jax_path, 'wb') as f:
    f.write(exported.serialize())
  logging.info('Wrote %s (jax.export, batch %s, %.1f MB)', jax_path,
               _describe_batch(batch_size, max_batch_size),
               os.path.getsize(jax_path) / 2**20)

  saved_model_path = os.path.join(out_dir, SAVED_MODEL_DIR)
  export_saved_model(infer, variables, canvas, saved_model_path, batch_size=batch_size,
                     max_batch_size=max_batch_size, platforms=platforms)
  logging.info('Wrote %s (TF SavedModel, signature serving_default)', saved_model_path)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  h, w = canvas
  b = 'b' if batch_size is None else batch_size
  metadata = dict(
      detector=config.detector, step=restored.step,
      files=dict(jax=JAX_FILE, saved_model=SAVED_MODEL_DIR),
      platforms=list(exported.platforms),
      batch=_describe_batch(batch_size, max_batch_size),
      batch_size=batch_size, max_batch_size=max_batch_size if batch_size is None else None,
      image_size=[h, w], short_side=config.data.short_side,
      max_size=config.data.max_size, mean=list(config.data.mean),
      std=list(config.data.std),
      inputs=dict(
          images=f'uint8 [{b}, {h}, {w}, 3] RGB, resized keeping the aspect ratio '
                 '(jaxdet.inference.preprocess) and zero-padded bottom/right',
          scale=f'float32 [{b}] resized / original size',
          orig_size=f'int32 [{b}, 2] original (height, width)'),
      outputs=dict(
          boxes=f'float32 [{b}, {config.eval.max_detections}, 4] x1y1x2y2 in '
                'original-image pixels',
          scores=f'float32 [{b}, {config.eval.max_detections}]',
          classes=f'int32 [{b}, {config.eval.max_detections}] index into class_names',
          valid=f'bool [{b}, {config.eval.max_detections}] False on empty slots'),
      eval={k: v for k, v in config.eval.to_dict().items()
            if k not in ('batch_size', 'num_images')},
      class_names=list(restored.class_names),
      category_ids=list(restored.category_ids),
      versions=dict(jax=jax.__version__, tensorflow=tf.__version__))
  meta_path = os.path.join(out_dir, METADATA_FILE)
  with open(meta_path, 'w') as f:
    json.dump(metadata, f, indent=2)
  logging.info('Wrote %s', meta_path)
  return metadata


def run(config: ml_collections.ConfigDict, workdir: str, out_dir: str | None = None,
        **kwargs) -> dict:
  """The command: exports the latest checkpoint of `workdir` to `out_dir` (default
  workdir/export); `kwargs` go to `export`. Returns export.json's contents."""
  from jaxdet.training import loop  # pylint: disable=g-import-not-at-top
  restored = loop.restore_for_inference(config, workdir, 'jaxdet.export')
  logging.info('Restored step %d of %s', restored.step, workdir)
  return export(config, restored, out_dir or os.path.join(workdir, 'export'), **kwargs)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: Sequence[str] | None = None) -> flags.FlagValues:
  """The command's flags, in `flag_values`; `argv` (default sys.argv) tells
  config_flags which `--config.field=value` overrides to expect."""
  cli.define_checkpoint_flags(flag_values, argv)
  flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/export).',
                      flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 0, 'Fixed batch size; 0: symbolic where the '
                       'detector allows it, else config.eval.batch_size.',
                       flag_values=flag_values)
  flags.DEFINE_integer('max_batch_size', MAX_BATCH_SIZE,
                       'Upper bound of the symbolic batch.', flag_values=flag_values)
  flags.DEFINE_list('platforms', None, 'Platforms to lower for, e.g. cpu,cuda '
                    '(default: the one JAX runs on).', flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)
  return flag_values


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """The command, once `define_flags`' flags are parsed."""
  del argv
  f = flag_values
  return run(f.config, f.workdir, f.out, batch_size=f.batch_size or None,
             max_batch_size=f.max_batch_size, platforms=f.platforms)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(cli.command(main))
