"""Detections for image files: COCO-style JSON and pictures with labelled boxes.

  python -m jaxdet.predict --config=configs/retinanet_shapes.py --workdir=DIR \\
      --images=FOLDER_OR_GLOB_OR_COMMA_LIST --out=OUTDIR [--score_threshold=0.3]

restores the latest checkpoint of DIR (as `train.py --mode=eval`), runs the detector
over the images in batches (resized and padded as in evaluation, see
`jaxdet.inference`) and writes

  OUTDIR/detections.json  a list of {file_name, image_id, category_id, category_name,
                          bbox [x, y, w, h], score}, boxes in original-image pixels;
                          image_id is the image's position in the sorted list, from 1
  OUTDIR/<stem>.png       each image with its detections drawn and labelled
"""

import glob
import json
import logging
import os
from typing import Callable, Iterator, Sequence

from absl import flags
import jax
import ml_collections
import numpy as np
import tqdm

from jaxdet import cli
from jaxdet import inference
from jaxdet.training import sharding

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')
JSON_FILE = 'detections.json'


def find_images(spec: str) -> list[str]:
  """Image files named by `spec`: a folder (its files with an image extension), a
  glob pattern, a file, or a comma-separated list of these; sorted, no duplicates.

  Raises FileNotFoundError naming the part of `spec` that matches no image.
  """
  paths = []
  for part in (p.strip() for p in spec.split(',')):
    if not part:
      continue
    if os.path.isdir(part):
      found = [os.path.join(part, f) for f in os.listdir(part)
               if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif glob.has_magic(part):
      found = [p for p in glob.glob(part) if os.path.isfile(p)]
    else:
      found = [part] if os.path.isfile(part) else []
    if not found:
      raise FileNotFoundError(f'--images: no image file matches {part!r}')
    paths.extend(sorted(found))
  if not paths:
    raise FileNotFoundError(f'--images: no image file matches {spec!r}')
  return list(dict.fromkeys(paths))


# (config, number of classes) -> jitted inference function, so that calling
# `predict_images` again (a notebook) does not compile again.
_COMPILED: dict[tuple[str, int], Callable] = {}


def compiled_infer(config: ml_collections.ConfigDict, detector) -> Callable:
  """`jax.jit(inference.make_infer(detector, config.data))`, one per config."""
  key = (config.to_json_best_effort(sort_keys=True), detector.num_classes)
  if key not in _COMPILED:
    if len(_COMPILED) >= 4:
      _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = jax.jit(inference.make_infer(detector, config.data))
  return _COMPILED[key]


def _batches(paths: Sequence[str], batch_size: int) -> Iterator[list[str]]:
  for start in range(0, len(paths), batch_size):
    yield list(paths[start:start + batch_size])


def iter_detections(config: ml_collections.ConfigDict, detector, variables: dict,
                    paths: Sequence[str], *, batch_size: int | None = None,
                    progress: bool = True
                    ) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
  """Runs the detector over image files, one fixed-size batch at a time (the last
  one padded, so there is one compilation), split over this host's devices (`batch_size`,
  default `config.eval.batch_size`, rounded up to a multiple of their number).

  Yields:
    (path, uint8 image [h, w, 3], detections of the image: boxes [n, 4] x1y1x2y2 in
    its pixels, scores [n], classes [n], only the valid ones, by descending score).
  """
  mesh = sharding.make_mesh(jax.local_devices())
  batch_size = -(-(batch_size or config.eval.batch_size) // mesh.size) * mesh.size
  images_sharding = sharding.batch_sharding(mesh)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  infer = compiled_infer(config, detector)
  with tqdm.tqdm(total=len(paths), desc='predict', unit='img',
                 disable=not progress) as bar:
    for batch_paths in _batches(paths, batch_size):
      images = [inference.read_image(p) for p in batch_paths]
      batch = inference.make_batch(images, config.data, batch_size)
      inputs = jax.device_put((batch['images'], batch['scale'], batch['orig_size']),
                              images_sharding)
      dets = jax.device_get(infer(variables, *inputs))
      for i, (path, image) in enumerate(zip(batch_paths, images)):
        keep = dets['valid'][i]
        yield path, image, {k: dets[k][i][keep] for k in ('boxes', 'scores', 'classes')}
      bar.update(len(batch_paths))


def to_results(dets: dict[str, np.ndarray], class_names: Sequence[str],
               category_ids: Sequence[int], score_threshold: float = 0.0
               ) -> list[dict]:
  """One image's detections (from `iter_detections`) with score >= `score_threshold`
  as COCO-style dicts {category_id, category_name, bbox [x, y, w, h], score}."""
  results = []
  for box, score, label in zip(dets['boxes'], dets['scores'], dets['classes']):
    if score < score_threshold:
      continue
    x1, y1, x2, y2 = (float(v) for v in box)
    results.append(dict(category_id=int(category_ids[label]),
                        category_name=class_names[label],
                        bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score)))
  return results


def predict_images(config: ml_collections.ConfigDict, variables: dict,
                   paths: Sequence[str], *, class_names: Sequence[str],
                   category_ids: Sequence[int] | None = None,
                   score_threshold: float = 0.0, batch_size: int | None = None,
                   progress: bool = False) -> list[list[dict]]:
  """Detections of each image file, as `to_results` dicts, in the order of `paths`.

  Args:
    config: the detector's config (`detectors.build_detector`, data and eval fields).
    variables: its Flax variables (e.g. `training.loop.restore_for_inference`).
    class_names: name of each label; category_ids: the dataset's id of each label
      (default 1..C).
    score_threshold: detections below it are left out (after the detector's own
      `config.eval.score_threshold`).
  """
  from jaxdet import detectors  # pylint: disable=g-import-not-at-top
  num_classes = config.data.num_classes or len(class_names)
  category_ids = category_ids or range(1, num_classes + 1)
  detector = detectors.build_detector(config, num_classes)
  return [to_results(dets, class_names, category_ids, score_threshold)
          for _, _, dets in iter_detections(config, detector, variables, paths,
                                            batch_size=batch_size, progress=progress)]


def picture_names(paths: Sequence[str]) -> list[str]:
  """<stem>.png for each path: the pictures `predict_to_folder` draws. ValueError
  naming both files if two stems collide."""
  names = {}
  for path in paths:
    name = os.path.splitext(os.path.basename(path))[0] + '.png'
    if name in names:
      raise ValueError(f'{names[name]} and {path} would both be drawn to {name}; '
                       'predict them in separate runs (--out)')
    names[name] = path
  return list(names)


def predict_to_folder(config: ml_collections.ConfigDict, restored, paths: Sequence[str],
                      out_dir: str, *, score_threshold: float = 0.3,
                      batch_size: int | None = None, progress: bool = True
                      ) -> list[dict]:
  """Writes out_dir/detections.json and one picture per image (module docstring).

  Args:
    restored: `training.loop.Restored` (detector, variables, class names, category ids).
  Returns:
    The detections written to the JSON file.
  """
  from jaxdet import visualize  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  pictures = picture_names(paths)
  results = []
  for image_id, (picture, (path, image, dets)) in enumerate(zip(pictures, iter_detections(
      config, restored.detector, restored.variables, paths, batch_size=batch_size,
      progress=progress)), start=1):
    keep = dets['scores'] >= score_threshold
    visualize.draw_detections(image, dets['boxes'][keep], dets['classes'][keep],
                              dets['scores'][keep], restored.class_names).save(
                                  os.path.join(out_dir, picture))
    results.extend(dict(file_name=path, image_id=image_id, **r) for r in to_results(
        dets, restored.class_names, restored.category_ids, score_threshold))
  json_path = os.path.join(out_dir, JSON_FILE)
  with open(json_path, 'w') as f:
    json.dump(results, f)
  logging.info('Wrote %d detections of %d images to %s, pictures to %s/<name>.png',
               len(results), len(paths), json_path, out_dir)
  return results


def run(config: ml_collections.ConfigDict, workdir: str, images: str, out_dir: str,
        **kwargs) -> list[dict]:
  """The command: restores the latest checkpoint of `workdir` and predicts the images
  `images` names (`find_images`) into `out_dir`; `kwargs` go to `predict_to_folder`."""
  from jaxdet.training import loop  # pylint: disable=g-import-not-at-top
  paths = find_images(images)  # before the restore: a typo fails fast
  restored = loop.restore_for_inference(config, workdir, 'jaxdet.predict')
  logging.info('Restored step %d of %s; predicting %d images', restored.step, workdir,
               len(paths))
  return predict_to_folder(config, restored, paths, out_dir, **kwargs)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: Sequence[str] | None = None) -> flags.FlagValues:
  """The command's flags, in `flag_values`; `argv` (default sys.argv) tells
  config_flags which `--config.field=value` overrides to expect."""
  cli.define_checkpoint_flags(flag_values, argv)
  flags.DEFINE_string('images', None, 'A folder, a glob pattern (quoted) or a '
                      'comma-separated list of these and image files.',
                      flag_values=flag_values)
  flags.DEFINE_string('out', None, 'Output folder for detections.json and pictures.',
                      flag_values=flag_values)
  flags.DEFINE_float('score_threshold', 0.3, 'Detections below this score are left out '
                     'of the JSON and the pictures (0: all the detector returns).',
                     flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 0, 'Images per batch (0: config.eval.batch_size).',
                       flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir', 'images', 'out'],
                               flag_values=flag_values)
  return flag_values


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> list[dict]:
  """The command, once `define_flags`' flags are parsed."""
  del argv
  f = flag_values
  return run(f.config, f.workdir, f.images, f.out, score_threshold=f.score_threshold,
             batch_size=f.batch_size or None)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(cli.command(main))
