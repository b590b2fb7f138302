"""Shared defaults for detector configs.

Config files in `configs/` call these builders and then set what differs per detector
and dataset, so every field a module reads is defined (and documented) in one place.
"""

import importlib.util
import os

import ml_collections

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config that `train.py --config=SPEC` reads, for notebooks and scripts.

  Args:
    spec: `path/to/config.py` or `path/to/config.py:VARIANT` (e.g. `:smoke`).
  Raises:
    FileNotFoundError naming the file; ValueError when it has no `get_config`.
  """
  path, _, variant = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such config file (from {spec!r})')
  name = 'jaxdet_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path}: a config file defines get_config(arg=None)')
  return module.get_config(variant) if variant else module.get_config()


def data_config() -> ml_collections.ConfigDict:
  """Input-pipeline fields shared by every detector."""
  return ml_collections.ConfigDict(dict(
      # shapes | coco_folder | tfds_coco | tfds_voc
      source='shapes',
      num_classes=0,  # filled from the source when 0
      # coco_folder: an images folder and a COCO instances json per split.
      train_images='', train_annotations='',
      eval_images='', eval_annotations='',
      # tfds_coco / tfds_voc: tfds data dir ('' = tfds default, ~/tensorflow_datasets).
      tfds_data_dir='',
      # Resize keeping aspect ratio so the short side is `short_side` and the long side
      # at most `max_size`, then pad bottom/right to the static `image_size` (H, W).
      short_side=800, max_size=1333, image_size=(1344, 1344),
      random_flip=True,
      max_boxes=100,
      min_box_size=1.0,  # boxes narrower/shorter than this (resized px) are dropped
      skip_bad_examples=False,  # False: raise naming file+field; True: log and skip
      shuffle_buffer=1024,
      mean=IMAGENET_MEAN, std=IMAGENET_STD,
      prefetch=2,
      shapes=ml_collections.ConfigDict(dict(
          num_train=3000, num_val=300, image_size=256, seed=0,
          cache_dir='',  # '' = ~/.cache/jaxdet/shapes
      )),
  ))


def retinanet_config() -> ml_collections.ConfigDict:
  """RetinaNet R50-FPN 1x defaults (Lin et al. 2017; mmdetection retinanet_r50_fpn_1x)."""
  c = ml_collections.ConfigDict()
  c.detector = 'retinanet'
  c.seed = 0
  c.data = data_config()
  c.model = ml_collections.ConfigDict(dict(
      # style: pytorch (stride in the bottleneck's 3x3 conv, torchvision) | caffe (in
      # its first 1x1 conv, Keras ResNet50 / MSRA). pretrained: '' (random init) or a
      # torchvision .pth / .npz or Keras .h5 file of ImageNet weights, loaded by
      # Detector.init (docs/pretrained.md).
      backbone=dict(depth=50, width=64, norm='frozen_bn', freeze_at=1, style='pytorch',
                    pretrained=''),
      # extra_from: P6 from C5 ('input', RetinaNet) or from P5 ('output', FCOS).
      fpn=dict(channels=256, min_level=3, max_level=7, extra_from='input'),
      # iou_branch: the IoU-prediction conv of the IoU-aware detector (iou_aware_config).
      head=dict(channels=256, num_convs=4, prior_prob=0.01, norm='none',
                iou_branch=False),
      anchors=dict(octave_base_scale=4.0, scales_per_octave=3,
                   ratios=(0.5, 1.0, 2.0), center_offset=0.5),
      dtype='float32',  # compute dtype: float32 | bfloat16 (params stay float32)
  ))
  c.assign = ml_collections.ConfigDict(dict(
      pos_iou=0.5, neg_iou=0.4, allow_low_quality=True, min_low_quality_iou=0.0))
  c.box_coder = ml_collections.ConfigDict(dict(
      means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)))
  c.loss = ml_collections.ConfigDict(dict(
      focal_alpha=0.25, focal_gamma=2.0,
      box_loss='smooth_l1',  # smooth_l1 | l1 | giou
      smooth_l1_beta=0.11, box_weight=1.0, giou_weight=2.0))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=16,  # global
      optimizer='sgd',  # sgd (papers) | adamw (from-scratch CPU runs)
      base_lr=0.01, base_batch_size=16,  # lr = base_lr * batch_size / base_batch_size
      momentum=0.9, weight_decay=1e-4,
      lr_decay='step',  # step (papers) | cosine
      epochs=12.0, lr_drop_epochs=(8.0, 11.0), lr_drop_factor=0.1,
      num_steps=-1,  # > 0 overrides epochs
      warmup_steps=500, warmup_factor=0.001,
      grad_clip_norm=35.0,
      # lr multiplier of the offset convs of deformable convs (MMMC's RFA; see
      # optimizer.OFFSET_PARAMS); 1: as every other layer.
      offset_lr_mult=1.0,
      log_every=50, checkpoint_every=1000, keep_checkpoints=3,
      eval_every=-1,  # -1: only at the end
  ))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=8, score_threshold=0.05, pre_nms_top_k=1000, nms_iou=0.5,
      max_detections=100, num_images=-1,  # -1: whole split
      # Class-aware suppression, for every detector (CLE Table 3 compares all three):
      # standard (greedy) | soft (Gaussian Soft-NMS) | cl_balanced (CLE eqs. 8-9).
      nms='standard',
      # Soft-NMS: score *= exp(-IoU^2 / sigma); dropped below min_score (Bodla et al.
      # 2017 and mmcv defaults). nms_iou is not used.
      soft_nms_sigma=0.5, soft_nms_min_score=0.001,
      # CL-balanced NMS: clusters of IoU > nms_iou around the top box, softmax(p / T)-
      # weighted centre, selection by p + loc_weight * (1 - normalized centre
      # distance); cl_nms_score: what a kept box reports (classification | cluster_max
      # | balanced). See docs/methods.md, CLE.
      cl_nms_temperature=1.0, cl_nms_loc_weight=1.0, cl_nms_score='classification'))
  return c


def iou_aware_config() -> ml_collections.ConfigDict:
  """IoU-aware RetinaNet (Wu et al. 2020, papers/iou_aware_single_stage.md): RetinaNet
  plus an IoU-prediction conv on the box tower, trained on positives, and the detection
  score p^alpha * IoU^(1 - alpha) at inference (eq. 3-5)."""
  c = retinanet_config()
  c.detector = 'iou_aware_retinanet'
  c.model.head.iou_branch = True
  c.loss.update(dict(
      iou_loss='bce',  # bce (paper, Table 2) | l2: (sigmoid(logit) - IoU)^2
      iou_weight=1.0,  # eq. 4: L_cls + L_loc + L_IoU
      # False as the official code: the IoU loss also trains the box deltas through
      # its target IoU(decoded box, GT). True treats the target as a constant.
      iou_stop_gradient=False))
  # alpha of eq. 5 (0.5: Tables 3-4 and the official code). `None` is the plain product
  # p * IoU (Table 3, "none"); 1.0 ranks by the classification score alone. An
  # untyped reference so that `--config.eval.iou_alpha=None` parses to None (a float
  # field rejects it); the detector checks the value.
  c.eval.iou_alpha = ml_collections.FieldReference(0.5, field_type=object)
  return c


def cle_config() -> ml_collections.ConfigDict:
  """CLE RetinaNet (Zhang et al., papers/cle_classification_localization_equilibrated.md):
  the RetinaNet baseline plus its three parts, each a switch (Table 2 adds them in this
  order): IoU-classification-aware assignment (`assign.cle`, eqs. 5-7), Dynamic
  Coefficient loss (`loss.dynamic_coefficient`, eqs. 2-4) and CL-balanced NMS
  (`eval.nms='cl_balanced'`, eqs. 8-9). With the first two off and `eval.nms='standard'`
  it is the baseline."""
  c = retinanet_config()
  c.detector = 'cle_retinanet'
  # Sec. 3.1: alpha 0.75 and score_threshold 0.5 (eq. 6-7); fg 0.5 / bg 0.4 are
  # RetinaNet's pos_iou / neg_iou, inherited. Low-quality matches stay on (RetinaNet's).
  c.assign.update(dict(cle=True, cle_alpha=0.75, cle_score_threshold=0.5))
  c.loss.update(dict(
      dynamic_coefficient=True,
      # Unit of eq. 2's centre distance: gt_size (offsets / GT width, height: the box
      # coder's units) | gt_diagonal | none (pixels, as printed; saturates the sigmoid).
      dc_center_norm='gt_size',
      dc_eps=1e-6))  # eq. 2's epsilon (the paper gives no value)
  c.eval.nms = 'cl_balanced'
  return c


def fcos_config() -> ml_collections.ConfigDict:
  """FCOS R50-FPN 1x, the baseline of MMMC (papers/mmmc_minimal_misalignment_fcos.md,
  Sec. 4.1 and Table 2): mmdetection 2.x's FCOS with center sampling, distances in
  strides (norm_on_bbox), the quality branch on the regression tower and the GIoU loss
  (its `fcos_center-normbbox-centeronreg-giou` config). `model.head.quality` switches
  Table 2's rows: 'giou' (FCOS, the paper's baseline) or 'centerness' (FCOS*).
  MMMC's RFA is `model.head.first_conv='deform'`. Choices: docs/methods.md, FCOS."""
  c = retinanet_config()
  c.detector = 'fcos'
  # P6 from P5 (the FCOS code and mmdetection's add_extra_convs='on_output').
  c.model.fpn.extra_from = 'output'
  c.model.head = ml_collections.ConfigDict(dict(
      channels=256, num_convs=4, prior_prob=0.01, norm='gn',
      # giou: BCE to the GIoU of the predicted box (MMMC's FCOS) | centerness (FCOS*).
      quality='giou',
      # relu(s x) * stride distances (mmdetection norm_on_bbox) | exp(s x) (FCOS paper).
      norm_on_bbox=True,
      # The kind of one conv in each tower: conv | deform | deform_v2 (MMMC's RFA, Sec.
      # 3.1, "the first convolution"), at position rfa_position (1-based; Table 3
      # compares 1-4, the same position in both towers).
      first_conv='conv', rfa_position=1))
  # FCOS has no anchors; the points' counterpart is assign.regress_ranges.
  del c.model['anchors']
  c.assign = ml_collections.ConfigDict(dict(
      # Per level P3..P7, the (low, high) range px of a positive point's largest
      # distance to its box sides (mmdetection's regress_ranges; 1e8 is its INF).
      regress_ranges=((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0),
                      (512.0, 1e8)),
      center_sampling=True, center_radius=1.5))  # radius in strides of the level
  del c['box_coder']
  c.loss = ml_collections.ConfigDict(dict(
      focal_alpha=0.25, focal_gamma=2.0,
      box_weight=1.0,  # GIoU loss weight (mmdetection's FCOS: 1)
      # Weights of the per-positive GIoU losses (normalized by their sum):
      # centerness (mmdetection: the centerness target, for both qualities) | quality
      # (the quality target) | none.
      box_weighting='centerness',
      quality_weight=1.0,  # BCE of the quality branch, over positives / num positives
      # GIoU quality: target max(GIoU, 0) (clamp) or (GIoU + 1) / 2 (rescale); a
      # constant for autodiff unless quality_stop_gradient=False.
      giou_target='clamp', quality_stop_gradient=True))
  c.eval.update(dict(
      nms_iou=0.6,  # the FCOS code and mmdetection's improved-FCOS config
      # Detection score p * q (product, mmdetection) | sqrt(p * q) (sqrt, the FCOS code's
      # reported score); q the predicted quality. Same ranking; matters for Soft-NMS
      # and CL-balanced NMS only.
      quality_fusion='product',
      # eval.score_threshold on the class probability (classification: mmdetection,
      # the FCOS code) or on the fused score (fused).
      score_threshold_on='classification'))
  return c


def mmmc_config() -> ml_collections.ConfigDict:
  """MMMC (papers/mmmc_minimal_misalignment_fcos.md): the FCOS baseline of
  `fcos_config` (GIoU quality) plus the receptive field adaptor (RFA, Sec. 3.1: a
  deformable conv first in each tower) and the aligned feature points sampler (APS,
  Sec. 3.2), each a switch: Table 2's RFA row is `assign.aps=False`, its APS row
  `model.head.first_conv='conv'`. Readings: docs/methods.md, MMMC."""
  c = fcos_config()
  c.detector = 'mmmc'
  c.model.head.first_conv = 'deform'  # DCN v1: the paper says "deformable convolution"
  c.assign.update(dict(
      aps=True,
      # full | scale (Table 6: levels by loss, then FCOS center sampling) | spatial
      # (levels by regress_ranges, then APS's candidates and split).
      aps_mode='full',
      aps_candidates=9,  # K of eq. 4 (Sec. 4.1)
      aps_levels=2,  # levels kept per box (eq. 6, "two scale levels")
      # topk: the aps_positives best scores (static; DESIGN.md's default) | gmm: the
      # paper's 2-component GMM (eq. 10), aps_gmm_iterations EM steps.
      aps_split='topk', aps_positives=9, aps_gmm_iterations=10))
  return c


def faster_rcnn_config() -> ml_collections.ConfigDict:
  """Faster R-CNN R50-FPN 1x (Ren et al. 2015; Lin et al. 2017), the baseline of OBC
  (papers/obc_offset_bin_classification.md, Sec. 4: mmdetection's faster_rcnn_r50_fpn_1x
  of the paper's time): P2-P6 (P6 by subsampling P5), RPN with 3 anchors per location
  (MaxIoU 0.7 / 0.3, 256 sampled anchors, half positive), 2000 / 1000 proposals per
  level before NMS 0.7 and 1000 after (train / test), 512 RoIs per image with 25 %
  positives (IoU >= 0.5), RoIAlign 7x7 from the level of each RoI's size, shared 2-fc
  head (1024), softmax classification, class-specific delta regression with target
  stds (0.1, 0.1, 0.2, 0.2) and Smooth L1 (beta 1). SGD lr 0.02 for 16 images.
  Cascade R-CNN and OBC are this plus `roi` / `roi_head` switches."""
  c = retinanet_config()
  c.detector = 'faster_rcnn'
  c.model.fpn.update(min_level=2, max_level=6, extra_from='pool')
  del c.model['head'], c.model['anchors']
  c.model.roi_head = ml_collections.ConfigDict(dict(
      # RoIAlign (aligned) output size and samples per bin; RoIs pooled from P2..P
      # max_level, the level floor(log2(sqrt(wh) / finest_scale)) (mmdetection).
      pool_size=7, sampling_ratio=2, finest_scale=56.0, max_level=5,
      fc_channels=1024, num_fcs=2,
      # regression: deltas (Faster / Cascade R-CNN) | bins: OBC (Sec. 3.2).
      box_output='regression',
      class_agnostic=False,  # regression only; bins are always class-agnostic
      # OBC: m inner bins of (-a, a) plus 2 outer ones (eq. 5), K hierarchical stages
      # (eq. 11; stage k+1 spans one bin of stage k). Defaults: Sec. 4, a=3, n=20, K=2.
      bin_range=3.0, num_bins=20, bin_stages=1))
  c.rpn = ml_collections.ConfigDict(dict(
      anchors=dict(octave_base_scale=8.0, scales_per_octave=1, ratios=(0.5, 1.0, 2.0),
                   center_offset=0.0),
      pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3,  # low-quality matches above 0.3
      num_samples=256, positive_fraction=0.5,
      smooth_l1_beta=1.0 / 9.0, box_weight=1.0,
      train_pre_nms=2000, train_post_nms=1000, test_pre_nms=1000, test_post_nms=1000,
      nms_iou=0.7, min_size=0.0))
  c.roi = ml_collections.ConfigDict(dict(
      # One entry per box-head stage: positive IoU, loss weight, target stds.
      stage_ious=(0.5,), stage_weights=(1.0,),
      stage_stds=((0.1, 0.1, 0.2, 0.2),),
      num_samples=512, positive_fraction=0.25, add_gt_as_proposals=True))
  del c['assign'], c['box_coder']
  c.loss = ml_collections.ConfigDict(dict(
      box_loss='smooth_l1',  # smooth_l1 | l1 | l2 (Table 2); regression heads only
      smooth_l1_beta=1.0,
      box_weight=1.0))  # regression loss or OBC's lambda_bin (eq. 9)
  c.train.update(base_lr=0.02, grad_clip_norm=0.0)
  c.eval.update(
      # Top (RoI, class) pairs over the 0.05 threshold that enter NMS (mmdetection keeps
      # all of them; a static cap, far above the 100 kept).
      pre_nms_top_k=1000,
      bin_decoding='expectation')  # OBC: expectation (eq. 10) | argmax
  return c


def obc_config() -> ml_collections.ConfigDict:
  """Faster R-CNN with the Offset Bin Classification box head (Qiu et al. 2020): bins
  a=3, 20 inner bins, expectation decoding, K=2 hierarchical stages (Sec. 4 and
  Table 1's last row); lambda_bin = 1 (eq. 9)."""
  c = faster_rcnn_config()
  c.model.roi_head.update(box_output='bins', bin_stages=2)
  return c


def cascade_rcnn_config(box_output: str = 'regression') -> ml_collections.ConfigDict:
  """Cascade R-CNN (Cai & Vasconcelos 2018) as the OBC paper runs it (Table 4): two
  stages at IoU 0.5 and 0.7 (loss weights 1, 0.5; stds halved in the second stage, as
  mmdetection's cascade), class-agnostic box heads; `box_output='bins'` puts an OBC
  head in every stage, without hierarchy (Sec. 4.2)."""
  c = faster_rcnn_config()
  c.detector = 'cascade_rcnn'
  c.model.roi_head.update(class_agnostic=True, box_output=box_output, bin_stages=1)
  c.roi.update(stage_ious=(0.5, 0.7), stage_weights=(1.0, 0.5),
               stage_stds=((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1)))
  return c


def use_coco(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """COCO 2017 from tfds at the papers' 1333x800 scale (every *_coco config)."""
  c.data.source = 'tfds_coco'
  c.data.num_classes = 80
  c.data.short_side, c.data.max_size = 800, 1333
  # Static canvas: either orientation of a 1333x800 image fits.
  c.data.image_size = (1344, 1344)
  c.data.max_boxes = 100
  return c


def use_voc(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """VOC 07+12 trainval / 07 test at [600, 1000] (IoU-aware paper Sec. 4.1, Table 5).

  mmdetection's voc0712 schedule: 4 epochs over 07+12 repeated 3 times, i.e. 12 epochs
  with the lr drop after 9.
  """
  c.data.source = 'tfds_voc'
  c.data.num_classes = 20
  c.data.short_side, c.data.max_size = 600, 1000
  c.data.image_size = (1024, 1024)
  c.data.max_boxes = 64
  c.train.epochs = 12.0
  c.train.lr_drop_epochs = (9.0,)
  return c


def use_shapes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The built-in `shapes` dataset with the CPU-sized model and schedule of the quick
  start (every *_shapes config). Not a paper setting: a small ResNet-18-FPN with
  GroupNorm, trained from scratch, that trains and evaluates in minutes on 2 cores."""
  c.data.source = 'shapes'
  c.data.shapes.update(num_train=3000, num_val=300, image_size=128, seed=0)
  _cpu_sizes(c, width=32, channels=64, num_convs=4, fc_channels=256, rois=128)
  # AdamW: from scratch and in a few thousand steps it gets much further than SGD.
  c.train.update(optimizer='adamw', batch_size=8, base_batch_size=8, base_lr=0.004,
                 weight_decay=1e-4, epochs=7.0, lr_drop_epochs=(5.25, 6.5),
                 warmup_steps=200, log_every=50, checkpoint_every=500,
                 # AdamW moves every weight by about the lr per step whatever its
                 # gradient: at 1x, RFA's zero-initialized offset convs grew to offsets
                 # of many cells within the warmup and the detector never learned
                 # (docs/RESULTS.md, MMMC). Only deformable convs are affected.
                 offset_lr_mult=0.1)
  c.eval.update(batch_size=20)
  return c


def make_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any detector config to a run of about a minute on a 2-core CPU.

  Keeps the method's switches; changes only sizes and schedule.
  """
  c.data.shuffle_buffer = 64
  c.data.shapes.num_train, c.data.shapes.num_val = 64, 16
  c.data.shapes.image_size = 128
  _cpu_sizes(c, width=16, channels=32, num_convs=2, fc_channels=64, rois=32)
  # base_batch_size = batch_size: the config's own base_lr is used as is.
  c.train.update(batch_size=4, base_batch_size=4, num_steps=30, warmup_steps=5,
                 log_every=10, checkpoint_every=15, keep_checkpoints=2)
  c.eval.update(batch_size=4, num_images=16)
  return c


def _cpu_sizes(c: ml_collections.ConfigDict, width: int, channels: int, num_convs: int,
               fc_channels: int, rois: int) -> None:
  """128x128 inputs (16 boxes at most) and a ResNet-18 of `width` with GroupNorm, nothing
  frozen (from scratch), FPN and dense heads of `channels` with `num_convs` convs,
  anchors from 2x the stride (objects are 8-115 px); for two-stage detectors the sizes
  of `_shrink_two_stage`. What every detector's shapes and smoke configs share."""
  c.data.short_side, c.data.max_size = 128, 128
  c.data.image_size = (128, 128)
  c.data.max_boxes = 16
  c.model.backbone.update(depth=18, width=width, norm='gn', freeze_at=0)
  c.model.fpn.channels = channels
  if 'head' in c.model:
    c.model.head.update(channels=channels, num_convs=num_convs, norm='gn')
  if 'anchors' in c.model:
    c.model.anchors.octave_base_scale = 2.0
  if 'rpn' in c:
    _shrink_two_stage(c, fc_channels=fc_channels, rois=rois)


def _shrink_two_stage(c: ml_collections.ConfigDict, fc_channels: int, rois: int) -> None:
  """Two-stage sizes for 128-pixel images: 8-128 px RPN anchors on P2-P6 (objects are
  8-115 px), RoI levels by size with the finest scale scaled as the images (56 / 4),
  fewer proposals and RoIs, a narrower fc head."""
  c.rpn.anchors.octave_base_scale = 2.0
  c.rpn.update(train_pre_nms=1000, train_post_nms=300, test_pre_nms=500,
               test_post_nms=150)
  c.model.roi_head.update(finest_scale=14.0, fc_channels=fc_channels)
  c.roi.num_samples = rois
