"""Pictures of detections, for people who would rather look than read."""

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def _palette(n: int) -> list[tuple[int, int, int]]:
  return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0))
          for i in range(n)]


def draw_detections(image: np.ndarray, boxes, classes, scores, class_names,
                    gt_boxes=None) -> Image.Image:
  """One image with labelled boxes.

  Args:
    image: uint8 [H, W, 3].
    boxes: [N, 4] xyxy pixels of `image`; classes [N] int; scores [N] in [0, 1], or
      None for boxes without scores (ground truth): labelled with the name alone.
    class_names: names indexed by class.
    gt_boxes: optional [M, 4] ground truth, drawn thin and white.
  """
  pil = Image.fromarray(image)
  draw = ImageDraw.Draw(pil)
  colors = _palette(len(class_names))
  for box in ([] if gt_boxes is None else gt_boxes):
    draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
  # Lowest score first: where boxes (and so labels) coincide, the best is drawn on top.
  order = (range(len(boxes)) if scores is None else
           np.argsort(-np.asarray(scores, np.float32), kind='stable')[::-1])
  for i in order:
    box, cls = boxes[i], classes[i]
    color = colors[int(cls) % len(colors)]
    x1, y1, x2, y2 = (float(v) for v in box)
    draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
    text = class_names[int(cls)] + ('' if scores is None else f' {scores[i]:.2f}')
    tw, th = draw.textbbox((0, 0), text)[2:]
    ty = max(y1 - th - 2, 0)
    draw.rectangle([x1, ty, x1 + tw + 2, ty + th + 2], fill=color)
    draw.text((x1 + 1, ty + 1), text, fill=(0, 0, 0))
  return pil


def denormalize(image: np.ndarray, mean, std) -> np.ndarray:
  """Network input [H, W, 3] float -> uint8 RGB."""
  return np.clip(image * np.asarray(std) + np.asarray(mean), 0, 255).astype(np.uint8)


def detection_grid(batch: dict, detections: dict, class_names, mean, std, *,
                   score_threshold=0.3, columns=4, max_images=8,
                   min_side=320) -> Image.Image:
  """A grid of the batch's images (cropped to their content) with detections above
  `score_threshold`; ground truth in thin white. Images smaller than `min_side` are
  enlarged (nearest neighbour) so that labels stay readable."""
  tiles = []
  for b in np.flatnonzero(batch['valid'])[:max_images]:
    h, w = np.round(batch['orig_size'][b] * batch['scale'][b]).astype(int)
    image = denormalize(batch['image'][b], mean, std)[:h, :w]
    zoom = max(1, int(np.ceil(min_side / max(h, w, 1))))
    image = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
    keep = detections['valid'][b] & (detections['scores'][b] >= score_threshold)
    tiles.append(draw_detections(
        np.ascontiguousarray(image), detections['boxes'][b][keep] * zoom,
        detections['classes'][b][keep], detections['scores'][b][keep], class_names,
        gt_boxes=batch['boxes'][b][batch['gt_mask'][b]] * zoom))
  if not tiles:
    return Image.new('RGB', (64, 64))
  tw = max(t.width for t in tiles)
  th = max(t.height for t in tiles)
  cols = min(columns, len(tiles))
  rows = -(-len(tiles) // cols)
  grid = Image.new('RGB', (cols * tw, rows * th))
  for i, t in enumerate(tiles):
    grid.paste(t, ((i % cols) * tw, (i // cols) * th))
  return grid


def score_iou_scatter(panels: dict, path: str, max_points: int = 20000) -> None:
  """Scatter plots of detection score (x) against IoU with the ground truth (y).

  Args:
    panels: {title: (scores [N], ious [N], summary dict with 'pearson', 'spearman')},
      one panel each, side by side.
    path: PNG to write.
    max_points: plot at most this many points per panel (an evenly spaced subset of
      the detections sorted by score), so that full COCO stays drawable.
  """
  import matplotlib  # Only the analysis tools draw plots; keep training imports light.
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2),
                           squeeze=False, constrained_layout=True)
  for ax, (title, (scores, ious, summary)) in zip(axes[0], panels.items()):
    scores, ious = np.asarray(scores), np.asarray(ious)
    if len(scores) > max_points:
      keep = np.argsort(scores)[np.linspace(0, len(scores) - 1, max_points).astype(int)]
      scores, ious = scores[keep], ious[keep]
    ax.scatter(scores, ious, s=4, alpha=0.3, linewidths=0)
    fmt = lambda v: 'n/a' if v is None else f'{v:.3f}'
    ax.set_title(f"{title}\nPearson {fmt(summary['pearson'])}, "
                 f"Spearman {fmt(summary['spearman'])}, n={summary['num_detections']}",
                 fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('detection score')
    ax.set_ylabel('IoU with best same-class ground truth')
    ax.grid(alpha=0.3)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def confusion_plot(matrix: np.ndarray, names: list[str], path: str,
                   title: str = '') -> None:
  """Confusion matrix picture: rows = ground-truth class, columns = class of the
  top-scoring detection on the object plus 'missed' (`class_errors.confusion_matrix`,
  [C, C + 1] counts); cells show counts, coloured by each row's fraction."""
  import matplotlib  # Only the analysis tools draw plots; keep training imports light.
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  matrix = np.asarray(matrix)
  fractions = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  c = len(names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.6 * (c + 1), 1.0 + 0.55 * c),
                         constrained_layout=True)
  ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
  for i in range(c):
    for j in range(c + 1):
      if matrix[i, j]:
        ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=8,
                color='white' if fractions[i, j] > 0.5 else 'black')
  ax.set_xticks(range(c + 1), list(names) + ['missed'], rotation=45, ha='right')
  ax.set_yticks(range(c), names)
  ax.set_xlabel('class of the top-scoring detection on the object')
  ax.set_ylabel('ground-truth class')
  if title:
    ax.set_title(title, fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)
