"""Where examples come from: a COCO-format folder, or tfds COCO 2017 / VOC 07+12.

Every source yields *raw* examples, one dict per image:

  image      tf.string, the encoded file (decoding happens in the pipeline)
  image_id   int64, the id used in `coco_ground_truth`
  boxes      float32 [N, 4] x1y1x2y2 in absolute pixels of the original image
  labels     int32 [N] in 0..C-1
  is_crowd   bool [N] (COCO iscrowd, VOC difficult: ignored by evaluation)
  file_name  tf.string, for error messages

(`epochs` adds `position`, the example's index in the training stream; TfdsCocoSource
adds `area`, COCO's segment areas for the ground truth) and offers the same methods:

  class_names, category_ids   label -> name, label -> category id of the ground truth
  num_examples(split)
  dataset(split, shard)              one pass in a fixed order (evaluation)
  epochs(split, seed, start, shard)  the endless training stream, see `_epoch_stream`
  coco_ground_truth(split)           COCO-format dict for pycocotools

`shard=(index, count)` keeps every count-th example from index on, chosen on cheap
records before images are read (COCO folder) or converted (tfds, whose records hold
the encoded image), so each host handles only its own images.

Splits are 'train' and 'eval'.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, ClassVar

from absl import logging
import numpy as np
import tensorflow as tf

from jaxdet.data import shapes

TRAIN, EVAL = 'train', 'eval'
_SPLITS = (TRAIN, EVAL)
_MAX_WARNINGS = 20  # per annotation file; the rest are only counted

COCO_CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck',
    'boat', 'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench',
    'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra',
    'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis',
    'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
    'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife',
    'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
    'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
    'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book',
    'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')
# The official ids (1..90 with gaps), so that detections can go to the COCO server.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74,
    75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
VOC_CLASS_NAMES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep',
    'sofa', 'train', 'tvmonitor')


def _check_split(split):
  if split not in _SPLITS:
    raise ValueError(f'split must be one of {_SPLITS}, got {split!r}')


def _epoch_stream(num_examples: int,
                  make_pass: Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset],
                  seed: int, start: int) -> tf.data.Dataset:
  """Endless stream of (position, record), epoch after epoch.

  Epoch e is `make_pass(seed_pair=[seed, e], skip)`: one pass over the split in an order
  fixed by its seed pair. The stream starts at global `position` `start`: whole epochs
  before it are never built and the rest of the way is skipped inside `make_pass`, on
  cheap records before any image is read. So the stream from `start` is exactly the
  tail of the stream from 0, which is what makes a resumed run see the same data.
  """
  if num_examples <= 0:
    raise ValueError('the training split has no examples')
  n = tf.constant(num_examples, tf.int64)
  first_epoch, offset = divmod(int(start), num_examples)

  def one_epoch(epoch):
    skip = tf.where(tf.equal(epoch, first_epoch), tf.constant(offset, tf.int64), 0)
    positions = tf.data.Dataset.range(epoch * n + skip, (epoch + 1) * n)
    seed_pair = tf.stack([tf.constant(seed, tf.int64), epoch])
    return tf.data.Dataset.zip((positions, make_pass(seed_pair, skip)))

  return tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)


def _with_position(stream, to_example, shard):
  return stream.shard(shard[1], shard[0]).map(
      lambda pos, rec: dict(to_example(rec), position=pos),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# --------------------------------------------------------------------------------------
# COCO-format folder (users' own data and the built-in `shapes`).


@dataclasses.dataclass(frozen=True)
class _Annotations:
  """One split of a COCO json, validated, as flat arrays (boxes of image k are
  `boxes[splits[k]:splits[k+1]]`)."""
  file_names: list[str]
  image_ids: np.ndarray  # int64 [I]
  sizes: np.ndarray  # int64 [I, 2] (height, width)
  boxes: np.ndarray  # float64 [M, 4] x, y, w, h exactly as in the json
  labels: np.ndarray  # int32 [M]
  is_crowd: np.ndarray  # bool [M]
  areas: np.ndarray  # float64 [M]
  ann_ids: np.ndarray  # int64 [M]
  splits: np.ndarray  # int64 [I + 1]
  categories: list[dict[str, Any]]  # sorted by id


def _number(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _parse_coco_json(path: str, skip_bad: bool) -> _Annotations:
  """Reads and validates a COCO instances json; see `CocoFolderSource`."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read COCO annotations: {e}') from e
  for key in ('images', 'annotations', 'categories'):
    if not isinstance(data.get(key), list):
      raise ValueError(f'{path}: missing or non-list top-level field "{key}"')

  categories = []
  for c in data['categories']:
    if not isinstance(c, dict) or not isinstance(c.get('id'), int):
      raise ValueError(f'{path}: category {c!r}: field "id" missing or not an integer')
    categories.append(dict(id=c['id'], name=str(c.get('name', c['id']))))
  categories.sort(key=lambda c: c['id'])
  label_of = {c['id']: i for i, c in enumerate(categories)}
  if len(label_of) != len(categories):
    raise ValueError(f'{path}: duplicate category ids')

  problems = []  # (image id or None, message)

  def bad(image_id, msg):
    if not skip_bad:
      raise ValueError(f'{path}: {msg}')
    problems.append((image_id, msg))

  images = {}
  for img in data['images']:
    iid = img.get('id') if isinstance(img, dict) else None
    if not isinstance(iid, int) or isinstance(iid, bool):
      bad(None, f'image {img!r}: field "id" missing or not an integer')
      continue
    if not isinstance(img.get('file_name'), str) or not img['file_name']:
      bad(iid, f'image id {iid}: field "file_name" missing or not a string')
      continue
    if not all(_number(img.get(k)) and img[k] > 0 for k in ('width', 'height')):
      bad(iid, f'image id {iid} ({img["file_name"]}): field "width"/"height" missing '
          'or not a positive number')
      continue
    if iid in images:
      bad(iid, f'image id {iid}: duplicate image id')
      continue
    images[iid] = img

  per_image = {iid: [] for iid in images}
  bad_images = set()
  for ann in data['annotations']:
    aid = ann.get('id') if isinstance(ann, dict) else None
    where = f'annotation id {aid}'
    if not isinstance(ann, dict):
      bad(None, f'annotation {ann!r} is not an object')
      continue
    iid = ann.get('image_id')
    if iid not in images:
      bad(None, f'{where}: field "image_id" ({iid!r}) is not the id of an image')
      continue
    box = ann.get('bbox')
    msg = None
    if not isinstance(box, (list, tuple)) or len(box) != 4:
      msg = (f'{where}: field "bbox" must be a list of 4 numbers [x, y, w, h], '
             f'got {box!r}')
    elif not all(_number(v) for v in box):
      msg = f'{where}: field "bbox" has a non-numeric or non-finite value: {box!r}'
    elif box[2] < 0 or box[3] < 0:
      msg = f'{where}: field "bbox" has a negative width or height: {box!r}'
    elif ann.get('category_id') not in label_of:
      msg = (f'{where}: field "category_id" ({ann.get("category_id")!r}) is not in '
             '"categories"')
    elif 'area' in ann and not _number(ann['area']):
      msg = f'{where}: field "area" is not a number: {ann["area"]!r}'
    if msg:
      bad(iid, msg)
      # Skip the whole image: dropping only the box would make a false negative.
      bad_images.add(iid)
      continue
    per_image[iid].append(ann)

  if problems:
    for iid, msg in problems[:_MAX_WARNINGS]:
      logging.warning('skipping bad example: %s: %s', path, msg)
    logging.warning('%s: skipped %d images because of %d bad records (see above)',
                    path, len(bad_images), len(problems))

  file_names, ids, sizes, boxes, labels, crowd, areas, ann_ids, splits = (
      [], [], [], [], [], [], [], [], [0])
  for iid, img in images.items():
    if iid in bad_images:
      continue
    file_names.append(img['file_name'])
    ids.append(iid)
    sizes.append((img['height'], img['width']))
    for a in per_image[iid]:
      boxes.append([float(v) for v in a['bbox']])
      labels.append(label_of[a['category_id']])
      crowd.append(bool(a.get('iscrowd', 0)))
      areas.append(float(a.get('area', boxes[-1][2] * boxes[-1][3])))
      ann_ids.append(a.get('id') if isinstance(a.get('id'), int) else -1)
    splits.append(len(boxes))
  return _Annotations(
      file_names=file_names, image_ids=np.array(ids, np.int64),
      sizes=np.array(sizes, np.int64).reshape(-1, 2),
      boxes=np.array(boxes, np.float64).reshape(-1, 4),
      labels=np.array(labels, np.int32), is_crowd=np.array(crowd, bool),
      areas=np.array(areas, np.float64), ann_ids=np.array(ann_ids, np.int64),
      splits=np.array(splits, np.int64), categories=categories)


@dataclasses.dataclass(frozen=True)
class CocoFolderSource:
  """Images in a folder plus a COCO instances json, per split.

  Category ids may be arbitrary (COCO's 1..90 with gaps): sorted ids map to contiguous
  labels 0..C-1 and `category_ids[label]` maps back. A malformed annotation raises
  ValueError naming the json file, the annotation and the field; with
  `skip_bad_examples` the image it belongs to is logged and skipped instead. Missing or
  undecodable image files fail when they are read, naming the file.
  """
  train_images: str = ''
  train_annotations: str = ''
  eval_images: str = ''
  eval_annotations: str = ''
  skip_bad_examples: bool = False

  def _paths(self, split):
    _check_split(split)
    images, annotations = ((self.train_images, self.train_annotations)
                           if split == TRAIN else
                           (self.eval_images, self.eval_annotations))
    if not images or not annotations:
      raise ValueError(f'coco_folder source: no images folder / annotations json '
                       f'configured for split {split!r}')
    return images, annotations

  @functools.cached_property
  def _cache(self):
    return {}

  def _annotations(self, split) -> _Annotations:
    if split not in self._cache:
      self._cache[split] = _parse_coco_json(self._paths(split)[1],
                                            self.skip_bad_examples)
    return self._cache[split]

  @functools.cached_property
  def _categories(self):
    cats = {}
    for split in _SPLITS:
      try:
        self._paths(split)
      except ValueError:
        continue
      cats[split] = self._annotations(split).categories
    if not cats:
      raise ValueError('coco_folder source: no split is configured')
    first = next(iter(cats.values()))
    for split, c in cats.items():
      if [x['id'] for x in c] != [x['id'] for x in first]:
        raise ValueError(f'{self._paths(split)[1]}: "categories" differ from those of '
                         'the other split')
    return first

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(c['name'] for c in self._categories)

  @property
  def category_ids(self) -> tuple[int, ...]:
    return tuple(c['id'] for c in self._categories)

  def num_examples(self, split: str) -> int:
    return len(self._annotations(split).file_names)

  def _loader(self, split):
    """Returns index (int64 scalar) -> raw example; the image file is read here."""
    images_dir, _ = self._paths(split)
    a = self._annotations(split)
    self._categories  # pylint: disable=pointless-statement  # checks the splits agree
    paths = tf.constant([os.path.join(images_dir, f) for f in a.file_names]
                        or [''], tf.string)
    ids, splits = tf.constant(a.image_ids, tf.int64), tf.constant(a.splits, tf.int64)
    xyxy = np.concatenate([a.boxes[:, :2], a.boxes[:, :2] + a.boxes[:, 2:]], 1)
    boxes = tf.constant(xyxy, tf.float32)
    labels = tf.constant(a.labels)
    crowd = tf.constant(a.is_crowd)

    def load(i):
      lo, hi = splits[i], splits[i + 1]
      return dict(image=tf.io.read_file(paths[i]), image_id=ids[i],
                  boxes=boxes[lo:hi], labels=labels[lo:hi], is_crowd=crowd[lo:hi],
                  file_name=paths[i])
    return load

  def dataset(self, split: str, shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """One pass over `split` in the json's image order."""
    indices = tf.data.Dataset.range(self.num_examples(split))
    return indices.shard(shard[1], shard[0]).map(
        self._loader(split), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def epochs(self, split: str, seed: int, start: int = 0,
             shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """Endless stream of raw examples plus `position`, each epoch a fresh permutation
    of all images keyed by (seed, epoch); starts at global position `start`."""
    n = self.num_examples(split)

    def make_pass(seed_pair, skip):
      order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                       seed=seed_pair)
      return tf.data.Dataset.from_tensor_slices(order).skip(skip)
    return _with_position(_epoch_stream(n, make_pass, seed, start),
                          self._loader(split), shard)

  def coco_ground_truth(self, split: str) -> dict[str, Any]:
    """COCO-format ground truth of the examples this source yields (original ids)."""
    a = self._annotations(split)
    images = [dict(id=int(i), file_name=f, height=int(h), width=int(w))
              for i, f, (h, w) in zip(a.image_ids, a.file_names, a.sizes)]
    image_of = np.repeat(a.image_ids, np.diff(a.splits))
    cat_ids = np.array(self.category_ids)
    annotations = []
    for k in range(len(a.labels)):
      annotations.append(dict(
          id=int(a.ann_ids[k]) if a.ann_ids[k] > 0 else 0, image_id=int(image_of[k]),
          category_id=int(cat_ids[a.labels[k]]), bbox=a.boxes[k].tolist(),
          area=float(a.areas[k]), iscrowd=int(a.is_crowd[k])))
    _renumber_bad_ids(annotations)
    return dict(images=images, annotations=annotations,
                categories=[dict(c) for c in self._categories])


def _renumber_bad_ids(annotations):
  # pycocotools uses annotation id 0 for "unmatched": ids must be positive and unique.
  ids = [a['id'] for a in annotations]
  if min(ids, default=1) <= 0 or len(set(ids)) != len(ids):
    for k, a in enumerate(annotations, start=1):
      a['id'] = k


# --------------------------------------------------------------------------------------
# tfds: coco/2017 and voc/2007 + voc/2012.


def _encoded_size(image):
  """(height, width) float32 of an encoded image, from the JPEG header when possible."""
  hw = tf.cond(
      tf.io.is_jpeg(image),
      lambda: tf.io.extract_jpeg_shape(image)[:2],
      lambda: tf.shape(tf.io.decode_image(image, channels=3,
                                          expand_animations=False))[:2])
  return tf.cast(hw, tf.float32)


def _absolute_xyxy(bbox, hw):
  """tfds BBoxFeature [N, 4] normalized (ymin, xmin, ymax, xmax) -> absolute xyxy."""
  h, w = hw[0], hw[1]
  bbox = tf.reshape(tf.cast(bbox, tf.float32), [-1, 4])
  return tf.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], -1)


def _id_from_file_name(file_name):
  """Stable id (< 2**31, batches carry int32) for an image without one: the digits of
  the file name ('2008_000123.jpg' -> 2008000123), else a 31-bit hash of it."""
  stem = tf.strings.regex_replace(file_name, r'\.[^.]*$', '')
  digits = tf.strings.regex_replace(stem, '_', '')
  hashed = tf.strings.to_hash_bucket_fast(file_name, 2**31 - 1)
  number = tf.cond(tf.strings.regex_full_match(digits, r'[0-9]{1,10}'),
                   lambda: tf.strings.to_number(digits, tf.int64),
                   lambda: tf.constant(2**31, tf.int64))
  return tf.where(number < 2**31, number, hashed)


@dataclasses.dataclass(frozen=True)
class _TfdsSource:
  """Shared reading logic; subclasses say which tfds splits and how to convert."""
  data_dir: str = ''
  shuffle_buffer: int = 1024  # training order: fixed file order + this buffer per epoch

  # {split: ((tfds name, tfds split), ...)}, concatenated in this order.
  _splits: ClassVar[dict[str, tuple[tuple[str, str], ...]]] = {}

  def _convert(self, ex):  # tfds example with encoded image -> raw example
    raise NotImplementedError

  def _load(self, split, file_seed=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    _check_split(split)
    parts = []
    for name, tfds_split in self._splits[split]:
      builder = tfds.builder(name, data_dir=self.data_dir or None)
      builder.download_and_prepare()
      parts.append(builder.as_dataset(
          split=tfds_split, shuffle_files=file_seed is not None,
          decoders={'image': tfds.decode.SkipDecoding()},
          read_config=tfds.ReadConfig(
              shuffle_seed=file_seed, shuffle_reshuffle_each_iteration=False,
              try_autocache=False)))
    ds = parts[0]
    for p in parts[1:]:
      ds = ds.concatenate(p)
    return ds

  @functools.cached_property
  def _num_examples(self):
    return {}

  def num_examples(self, split: str) -> int:
    if split not in self._num_examples:
      n = int(self._load(split).cardinality())
      if n < 0:
        raise ValueError(f'tfds split {self._splits[split]} has an unknown size')
      self._num_examples[split] = n
    return self._num_examples[split]

  def dataset(self, split: str, shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """One pass over `split` in tfds's fixed order."""
    return self._load(split).shard(shard[1], shard[0]).map(
        self._convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def epochs(self, split: str, seed: int, start: int = 0,
             shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """Endless stream of raw examples plus `position`. tfds files cannot be read in a
    random order cheaply, so each epoch reads them in one fixed shuffled order and
    shuffles with a `shuffle_buffer` keyed by (seed, epoch). (Every host reads every
    record to know the global order, but decodes only its shard's images.)"""
    records = self._load(split, file_seed=seed)
    n = self.num_examples(split)
    buffer = max(1, min(self.shuffle_buffer, n))

    def make_pass(seed_pair, skip):
      return records.shuffle(buffer, seed=seed_pair[0] * 1_000_003 + seed_pair[1],
                             reshuffle_each_iteration=False).skip(skip)
    return _with_position(_epoch_stream(n, make_pass, seed, start), self._convert,
                          shard)

  @functools.cached_property
  def _gt_cache(self):
    return {}

  def coco_ground_truth(self, split: str) -> dict[str, Any]:
    """COCO-format ground truth from one pass over the split (kept in memory)."""
    if split in self._gt_cache:
      return self._gt_cache[split]
    images, annotations = [], []
    with_size = self.dataset(split).map(
        lambda ex: dict(ex, size=_encoded_size(ex['image']), image=tf.zeros([0])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    cat_ids = self.category_ids
    for ex in with_size.as_numpy_iterator():
      iid = int(ex['image_id'])
      h, w = (int(v) for v in ex['size'])
      images.append(dict(id=iid, file_name=ex['file_name'].decode(), height=h,
                         width=w))
      areas = ex.get('area')
      for k, ((x1, y1, x2, y2), label, crowd) in enumerate(
          zip(ex['boxes'].tolist(), ex['labels'], ex['is_crowd'])):
        area = float(areas[k]) if areas is not None else (x2 - x1) * (y2 - y1)
        annotations.append(dict(
            id=len(annotations) + 1, image_id=iid, category_id=cat_ids[int(label)],
            bbox=[x1, y1, x2 - x1, y2 - y1], area=area, iscrowd=int(crowd)))
    if len({im['id'] for im in images}) != len(images):
      raise ValueError(f'{self._splits[split]}: image ids are not unique')
    gt = dict(images=images, annotations=annotations,
              categories=[dict(id=i, name=n)
                          for i, n in zip(cat_ids, self.class_names)])
    self._gt_cache[split] = gt
    return gt


@dataclasses.dataclass(frozen=True)
class TfdsCocoSource(_TfdsSource):
  """tfds `coco/2017`: train -> 'train', eval -> 'validation'; 80 classes whose ground
  truth uses the official COCO category ids."""
  _splits = {TRAIN: (('coco/2017', 'train'),), EVAL: (('coco/2017', 'validation'),)}

  class_names = COCO_CLASS_NAMES
  category_ids = COCO_CATEGORY_IDS

  def _convert(self, ex):
    objects = ex['objects']
    return dict(
        image=ex['image'], image_id=tf.cast(ex['image/id'], tf.int64),
        boxes=_absolute_xyxy(objects['bbox'], _encoded_size(ex['image'])),
        labels=tf.cast(objects['label'], tf.int32),
        is_crowd=tf.cast(objects['is_crowd'], tf.bool),
        area=tf.cast(objects['area'], tf.float32),
        file_name=ex['image/filename'])


@dataclasses.dataclass(frozen=True)
class TfdsVocSource(_TfdsSource):
  """tfds VOC: train = voc/2007 trainval + voc/2012 trainval, eval = voc/2007 test.

  `is_difficult` becomes `is_crowd`: ignored by evaluation, dropped from training.
  VOC has no numeric image ids; they come from the file name (`_id_from_file_name`).
  """
  _splits = {
      TRAIN: (('voc/2007', 'train+validation'), ('voc/2012', 'train+validation')),
      EVAL: (('voc/2007', 'test'),)}

  class_names = VOC_CLASS_NAMES
  category_ids = tuple(range(1, len(VOC_CLASS_NAMES) + 1))

  def _convert(self, ex):
    objects = ex['objects']
    return dict(
        image=ex['image'], image_id=_id_from_file_name(ex['image/filename']),
        boxes=_absolute_xyxy(objects['bbox'], _encoded_size(ex['image'])),
        labels=tf.cast(objects['label'], tf.int32),
        is_crowd=tf.cast(objects['is_difficult'], tf.bool),
        file_name=ex['image/filename'])


def categories(data_config) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """(class names, dataset category ids) of labels 0..C-1 of `data_config`'s source,
  for tools that only predict: `shapes` names its classes without generating the
  dataset; other sources read their annotations' or builder's categories."""
  if data_config.source == 'shapes':
    return shapes.CLASS_NAMES, tuple(range(1, len(shapes.CLASS_NAMES) + 1))
  source = build_source(data_config)
  return tuple(source.class_names), tuple(int(i) for i in source.category_ids)


def build_source(data_config) -> Any:
  """The source named by `data_config.source` (shapes | coco_folder | tfds_coco |
  tfds_voc); `shapes` is generated (once, cached) on first use."""
  kind = data_config.source
  if kind == 'shapes':
    c = data_config.shapes
    paths = shapes.generate(num_train=c.num_train, num_val=c.num_val,
                            image_size=c.image_size, seed=c.seed,
                            cache_dir=c.cache_dir)
    source = CocoFolderSource(
        train_images=paths['train_images'],
        train_annotations=paths['train_annotations'],
        eval_images=paths['val_images'], eval_annotations=paths['val_annotations'],
        skip_bad_examples=data_config.skip_bad_examples)
  elif kind == 'coco_folder':
    source = CocoFolderSource(
        train_images=data_config.train_images,
        train_annotations=data_config.train_annotations,
        eval_images=data_config.eval_images,
        eval_annotations=data_config.eval_annotations,
        skip_bad_examples=data_config.skip_bad_examples)
  elif kind == 'tfds_coco':
    source = TfdsCocoSource(data_dir=data_config.tfds_data_dir,
                            shuffle_buffer=data_config.shuffle_buffer)
  elif kind == 'tfds_voc':
    source = TfdsVocSource(data_dir=data_config.tfds_data_dir,
                           shuffle_buffer=data_config.shuffle_buffer)
  else:
    raise ValueError('data.source must be shapes | coco_folder | tfds_coco | tfds_voc, '
                     f'got {kind!r}')
  num_classes = data_config.get('num_classes', 0)
  if num_classes and num_classes != len(source.class_names):
    raise ValueError(f'data.num_classes={num_classes} but source {kind!r} has '
                     f'{len(source.class_names)} classes')
  return source
