"""`shapes`: a procedurally drawn detection dataset that ships as code.

Each image has a textured background with thin distractor strokes and 1-6 flat-coloured
shapes of 8 classes with random colour, size (about 6-90 % of the side), aspect ratio,
rotation, overlaps and truncation at the borders. Boxes are the tight bounds of each
object's *visible* pixels (later objects occlude earlier ones); objects with less than
60 % of their pixels visible, or a tiny visible extent, are removed from the image
altogether, so that no unannotated fragment remains.

`generate` writes the dataset once as a COCO-format folder and returns its paths; the
same COCO-folder source that reads users' own data reads it.
"""

import colorsys
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
import tqdm

CLASS_NAMES = ('ellipse', 'rectangle', 'triangle', 'ring', 'cross', 'star',
               'crescent', 'arrow')

# Bump when the drawing changes, so caches of older versions are not reused.
_VERSION = 2
_MIN_SIZE, _MAX_SIZE = 0.06, 0.9  # object extent, fraction of the image side
_MAX_OBJECTS = 6
_MIN_VISIBLE_FRACTION = 0.6
_MIN_VISIBLE_EXTENT = 4  # px; a visible part thinner than this is dropped
_MIN_VISIBLE_PIXELS = 20
_JPEG_QUALITY = 95
_SPLITS = ('train', 'val')


def _circle(n=48):
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  return np.stack([np.cos(t), np.sin(t)], -1)


def _outline(label: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
  """Polygons of one shape in unit coordinates ([-1, 1]²), each with fill 1 or 0.

  Later polygons are drawn over earlier ones, so a fill-0 polygon cuts a hole.
  """
  name = CLASS_NAMES[label]
  if name == 'ellipse':
    return [(_circle(), 1)]
  if name == 'rectangle':
    return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1)]
  if name == 'triangle':
    a = np.deg2rad(np.array([90, 210, 330]) + rng.uniform(-15, 15, 3))
    return [(np.stack([np.cos(a), np.sin(a)], -1), 1)]
  if name == 'ring':
    # The hole is at least a third of the radius so the ring never looks like a disc.
    return [(_circle(), 1), (_circle() * rng.uniform(0.4, 0.7), 0)]
  if name == 'cross':
    t = rng.uniform(0.18, 0.35)  # half-thickness of the arms
    pts = [[t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t], [-t, -1],
           [t, -1], [t, -t], [1, -t], [1, t]]
    return [(np.array(pts, float), 1)]
  if name == 'star':
    r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    a = np.pi / 2 + np.arange(10) * np.pi / 5
    return [(np.stack([r * np.cos(a), r * np.sin(a)], -1), 1)]
  if name == 'crescent':
    d = rng.uniform(0.4, 0.65)
    return [(_circle(), 1), (_circle() * 0.95 + [d, 0.0], 0)]
  if name == 'arrow':
    t = rng.uniform(0.15, 0.25)  # half-thickness of the shaft
    hx, hh = rng.uniform(0.0, 0.3), rng.uniform(0.6, 0.9)  # head start and half-height
    pts = [[-1, -t], [hx, -t], [hx, -hh], [1, 0], [hx, hh], [hx, t], [-1, t]]
    return [(np.array(pts, float), 1)]
  raise ValueError(f'unknown class {name}')


def _random_color(rng, avoid, min_dist):
  """An RGB colour at least `min_dist` (L2, 0-255) from every colour in `avoid`."""
  for _ in range(100):
    c = 255 * np.array(colorsys.hsv_to_rgb(
        rng.uniform(0, 1), rng.uniform(0.35, 1), rng.uniform(0.3, 1)))
    if all(np.linalg.norm(c - a) >= min_dist for a in avoid):
      return c
  return c


def _background(rng, size):
  """Low-contrast textured background, its mean colour, and distractor strokes."""
  base = 255 * np.array(colorsys.hsv_to_rgb(
      rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.25, 0.8)))
  # Smooth colour blotches: a coarse random grid upsampled, about +-20 levels.
  grid = rng.uniform(-127.5, 127.5, (rng.integers(3, 9), rng.integers(3, 9), 3))
  grid = np.clip(base + grid * rng.uniform(0.08, 0.16), 0, 255).astype(np.uint8)
  img = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  # Thin strokes: lines and arcs 1-2 px wide, so they are clutter but never a shape.
  for _ in range(rng.integers(1, 6)):
    color = tuple(int(v) for v in np.clip(base + rng.uniform(-90, 90, 3), 0, 255))
    width = int(rng.integers(1, 3))
    p = rng.uniform(-0.1, 1.1, 4) * size
    if rng.uniform() < 0.6:
      draw.line([tuple(p[:2]), tuple(p[2:])], fill=color, width=width)
    else:
      (x0, x1), (y0, y1) = sorted(p[:2]), sorted(p[2:])
      start = rng.uniform(0, 360)
      draw.arc([x0, y0, x1 + 1, y1 + 1], start, start + rng.uniform(40, 200),
               fill=color, width=width)
  return np.asarray(img, np.float32), base


def _object_mask(label, rng, size):
  """Rasterizes one random object: (local mask uint8 [h, w], top-left (x, y))."""
  # Triangular in log-size: the whole range occurs, but mid sizes are the most common,
  # so tiny and image-filling objects do not dominate a small training budget.
  t = rng.uniform(0, 1, 2).mean()
  extent = size * np.exp(np.log(_MIN_SIZE) + t * np.log(_MAX_SIZE / _MIN_SIZE))
  aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
  half = extent / 2 * np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
  half /= max(half.max() / (extent / 2), 1.0)  # longest side stays `extent`
  theta = rng.uniform(0, 2 * np.pi)
  rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  center = rng.uniform(0, size, 2)
  polys = [((pts * half) @ rot.T + center, fill) for pts, fill in _outline(label, rng)]
  lo = np.floor(np.min(np.concatenate([p for p, _ in polys]), 0)).astype(int) - 1
  hi = np.ceil(np.max(np.concatenate([p for p, _ in polys]), 0)).astype(int) + 2
  canvas = Image.new('L', tuple(hi - lo), 0)
  draw = ImageDraw.Draw(canvas)
  for pts, fill in polys:
    draw.polygon([tuple(q) for q in pts - lo], fill=fill)
  return np.asarray(canvas), lo


def render_example(seed: Any, image_size: int) -> dict[str, np.ndarray]:
  """Draws one image (deterministic for `seed`, anything `np.random.default_rng` takes).

  Returns dict(image uint8 [S,S,3], boxes float32 [N,4] x1y1x2y2 pixels (tight bounds
  of the visible pixels, continuous coordinates: pixel i spans [i, i+1)), labels int32
  [N] in 0..7, visible bool [N,S,S] (each object's visible mask), area int64 [N]
  (visible pixel count)).
  """
  rng = np.random.default_rng(seed)
  s = image_size
  image, bg = _background(rng, s)
  n = int(rng.integers(1, _MAX_OBJECTS + 1))
  labels = rng.integers(0, len(CLASS_NAMES), n)
  objects = []  # (window slices, mask inside the window, full pixel count)
  for label in labels:
    local, (x0, y0) = _object_mask(label, rng, s)
    h, w = local.shape
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, s), max(x0, 0), min(x0 + w, s)
    window = (slice(ya, max(yb, ya)), slice(xa, max(xb, xa)))
    crop = local[ya - y0:max(yb, ya) - y0, xa - x0:max(xb, xa) - x0] > 0
    objects.append((window, crop, max(int(local.sum()), 1)))  # count includes off-image
  colors = []
  for _ in range(n):
    colors.append(_random_color(rng, [bg] + colors[-2:], 110))

  # Removing an object only uncovers the others, so repeating until nothing more is
  # dropped converges and every kept object passes the visibility rules.
  keep = list(range(n))
  while True:
    owner = np.full((s, s), -1, np.int16)
    for i in keep:
      window, crop, _ = objects[i]
      owner[window][crop] = i
    visible, bounds, bad = {}, {}, []
    for i in keep:
      window, crop, full_count = objects[i]
      v = (owner[window] == i) & crop
      cnt = int(v.sum())
      if cnt < _MIN_VISIBLE_PIXELS or cnt < _MIN_VISIBLE_FRACTION * full_count:
        bad.append(i)
        continue
      ys, xs = np.nonzero(v.any(1))[0], np.nonzero(v.any(0))[0]
      if min(ys[-1] - ys[0], xs[-1] - xs[0]) + 1 < _MIN_VISIBLE_EXTENT:
        bad.append(i)
        continue
      visible[i] = v
      y0, x0 = window[0].start, window[1].start
      bounds[i] = [x0 + xs[0], y0 + ys[0], x0 + xs[-1] + 1, y0 + ys[-1] + 1]
    if not bad:
      break
    keep = [i for i in keep if i not in bad]

  vis = np.zeros((len(keep), s, s), bool)
  for k, i in enumerate(keep):
    window = objects[i][0]
    vis[k][window] = visible[i]
    image[window][visible[i]] = colors[i]
  # Mild sensor noise so that flat regions are not perfectly flat.
  image += 3 * rng.standard_normal((s, s, 1), dtype=np.float32)
  return dict(
      image=np.clip(np.round(image), 0, 255).astype(np.uint8),
      boxes=np.array([bounds[i] for i in keep], np.float32).reshape(-1, 4),
      labels=labels[keep].astype(np.int32),
      visible=vis,
      area=np.array([int(visible[i].sum()) for i in keep], np.int64))


def _render_chunk(split, start, stop, image_size, seed, images_dir):
  """Renders images [start, stop) of a split into `images_dir`; returns records."""
  out = []
  for i in range(start, stop):
    ex = render_example((seed, _SPLITS.index(split), i), image_size)
    file_name = f'{i:06d}.jpg'
    Image.fromarray(ex['image']).save(os.path.join(images_dir, file_name),
                                      quality=_JPEG_QUALITY)
    out.append((file_name, ex['boxes'].tolist(), ex['labels'].tolist(),
                ex['area'].tolist()))
  return out


def _worker_main(spec_path: str, worker: int, num_workers: int) -> None:
  """Entry point of a drawing subprocess: every `num_workers`-th chunk of the spec,
  each written to `<chunk>.json`, one progress line per chunk on stdout."""
  with open(spec_path) as f:
    jobs = json.load(f)
  for job in jobs[worker::num_workers]:
    records = _render_chunk(*job['args'])
    with open(job['out'] + '.tmp', 'w') as f:
      json.dump(records, f)
    os.rename(job['out'] + '.tmp', job['out'])
    print(len(records), flush=True)


def _run_workers(jobs, num_workers, tmp, bar):
  """Runs the chunks in `num_workers` fresh interpreters.

  Subprocesses rather than multiprocessing: the caller usually has TF/JAX threads
  running (fork is unsafe) and may be a script without a __main__ guard (spawn would
  re-run it).
  """
  spec = os.path.join(tmp, 'parts', 'jobs.json')
  with open(spec, 'w') as f:
    json.dump(jobs, f)
  # This file is loaded on its own, not through the `jaxdet` package, whose __init__
  # may one day import JAX (slow, and it may grab accelerators).
  code = ('import sys, importlib.util as u; '
          's = u.spec_from_file_location("jaxdet_shapes_worker", sys.argv[1]); '
          'm = u.module_from_spec(s); s.loader.exec_module(m); '
          'm._worker_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))')
  procs = [subprocess.Popen(
      [sys.executable, '-c', code, os.path.abspath(__file__), spec, str(k),
       str(num_workers)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for k in range(num_workers)]

  def follow(proc):
    for line in proc.stdout:
      bar.update(int(line))

  threads = [threading.Thread(target=follow, args=(p,), daemon=True) for p in procs]
  for t in threads:
    t.start()
  errors = []
  for p, t in zip(procs, threads):
    stderr = p.stderr.read()
    t.join()
    if p.wait() != 0:
      errors.append(stderr[-2000:])
  if errors:
    raise RuntimeError('drawing the shapes dataset failed:\n' + '\n'.join(errors))


def _coco_json(records, image_size):
  images, annotations = [], []
  for image_id, (file_name, boxes, labels, areas) in enumerate(records, start=1):
    images.append(dict(id=image_id, file_name=file_name, width=image_size,
                       height=image_size))
    for (x1, y1, x2, y2), label, area in zip(boxes, labels, areas):
      annotations.append(dict(
          id=len(annotations) + 1,  # pycocotools treats id 0 as "unmatched"
          image_id=image_id, category_id=label + 1,
          bbox=[x1, y1, x2 - x1, y2 - y1], area=area, iscrowd=0))
  categories = [dict(id=i + 1, name=n, supercategory='shape')
                for i, n in enumerate(CLASS_NAMES)]
  return dict(info=dict(description='jaxdet shapes', version=_VERSION),
              images=images, annotations=annotations, categories=categories)


def _paths(root):
  return dict(
      root=root,
      train_images=os.path.join(root, 'images', 'train'),
      train_annotations=os.path.join(root, 'annotations', 'instances_train.json'),
      val_images=os.path.join(root, 'images', 'val'),
      val_annotations=os.path.join(root, 'annotations', 'instances_val.json'))


def generate(num_train: int, num_val: int, image_size: int, seed: int,
             cache_dir: str = '', num_workers: int = 0) -> dict[str, str]:
  """Writes the dataset once (or finds it in the cache) and returns its paths.

  Args:
    num_train, num_val: number of images per split.
    image_size: side of the square images in pixels (128-512 is sensible).
    seed: the dataset is a pure function of (num_train, num_val, image_size, seed).
    cache_dir: parent folder; '' means ~/.cache/jaxdet/shapes.
    num_workers: processes to draw with; 0 means one per core, at most 8.

  Returns:
    dict(root, train_images, train_annotations, val_images, val_annotations) paths.
  """
  params = dict(num_train=int(num_train), num_val=int(num_val),
                image_size=int(image_size), seed=int(seed), version=_VERSION)
  digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  cache_dir = os.path.expanduser(cache_dir or '~/.cache/jaxdet/shapes')
  root = os.path.join(cache_dir, f'shapes_{digest}')
  if os.path.isdir(root):
    return _paths(root)

  os.makedirs(cache_dir, exist_ok=True)
  # Everything is written into a private temporary folder that is renamed into place
  # in one atomic step, so an interrupted or concurrent run never leaves half a dataset.
  tmp = tempfile.mkdtemp(prefix=f'.tmp_shapes_{digest}_', dir=cache_dir)
  try:
    tmp_paths = _paths(tmp)
    if not num_workers:
      cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
               else os.cpu_count() or 1)
      num_workers = min(8, cores)
    chunk = 50
    jobs = []
    os.makedirs(os.path.join(tmp, 'parts'))
    for split, n in (('train', num_train), ('val', num_val)):
      os.makedirs(tmp_paths[f'{split}_images'])
      jobs += [dict(args=(split, a, min(a + chunk, n), image_size, seed,
                          tmp_paths[f'{split}_images']),
                    out=os.path.join(tmp, 'parts', f'{split}_{a:08d}.json'))
               for a in range(0, n, chunk)]
    os.makedirs(os.path.dirname(tmp_paths['train_annotations']))
    bar = tqdm.tqdm(total=num_train + num_val, desc='drawing shapes dataset',
                    unit='img')
    if num_workers > 1 and len(jobs) > 1:
      _run_workers(jobs, min(num_workers, len(jobs)), tmp, bar)
    else:
      for job in jobs:
        records = _render_chunk(*job['args'])
        with open(job['out'], 'w') as f:
          json.dump(records, f)
        bar.update(len(records))
    bar.close()
    records = {s: [] for s in _SPLITS}
    for job in jobs:  # in order, so image ids do not depend on the worker count
      with open(job['out']) as f:
        records[job['args'][0]] += json.load(f)
    shutil.rmtree(os.path.join(tmp, 'parts'))
    for split in _SPLITS:
      with open(tmp_paths[f'{split}_annotations'], 'w') as f:
        json.dump(_coco_json(records[split], image_size), f)
    try:
      os.rename(tmp, root)
    except OSError:
      if not os.path.isdir(root):  # not a concurrent run that finished first
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return _paths(root)
