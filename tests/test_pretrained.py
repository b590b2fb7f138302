"""Pretrained ResNet weights: Keras and torchvision networks with random weights (and
random BN statistics, so that the BN conversion is exercised) converted to jaxdet's
ResNet give the same C2..C5 features; wrong files fail naming the file and the field;
`config.model.backbone.pretrained` loads them at Detector.init."""

import functools
import os
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import config_base
from jaxdet import detectors
from jaxdet.models import pretrained
from jaxdet.models import resnet
from jaxdet.training import optimizer, sharding, step as step_lib

SIZE = 64  # input side for feature comparisons: C5 is 2x2


def torchvision_state_dict(depth: int, width: int = 64, seed: int = 0,
                           zero_convs: bool = False) -> dict:
  """Random {name: array} with the names and shapes of torchvision's ResNet-`depth`
  (stem of `width` channels) state dict, including fc and num_batches_tracked.
  `zero_convs`: zero conv kernels, quicker where only the shapes matter."""
  rng = np.random.default_rng(seed)
  block, counts = resnet.SPECS[depth]
  sd = {}

  def conv(name, cout, cin, k):
    if zero_convs:
      sd[f'{name}.weight'] = np.zeros((cout, cin, k, k), np.float32)
      return
    std = (2 / (cin * k * k))**0.5
    sd[f'{name}.weight'] = std * rng.standard_normal((cout, cin, k, k), np.float32)

  def bn(name, c):
    sd[f'{name}.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f'{name}.bias'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f'{name}.running_mean'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f'{name}.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f'{name}.num_batches_tracked'] = np.array(7)

  conv('conv1', width, 3, 7)
  bn('bn1', width)
  cin = width
  for i, count in enumerate(counts):
    c = width * 2**i
    out = c * block.expansion
    for j in range(count):
      p = f'layer{i + 1}.{j}'
      if block is resnet.Bottleneck:
        shapes = [(c, cin, 1), (c, c, 3), (out, c, 1)]
      else:
        shapes = [(c, cin, 3), (c, c, 3)]
      for k, shape in enumerate(shapes, 1):
        conv(f'{p}.conv{k}', *shape)
        bn(f'{p}.bn{k}', shape[0])
      if j == 0 and (i > 0 or cin != out):
        conv(f'{p}.downsample.0', out, cin, 1)
        bn(f'{p}.downsample.1', out)
      cin = out
  sd['fc.weight'] = np.zeros((10, cin), np.float32)
  sd['fc.bias'] = np.zeros((10,), np.float32)
  return sd


def jaxdet_features(flat: dict, depth: int, style: str, image: np.ndarray,
                    width: int = 64) -> dict:
  """C2..C5 of jaxdet's frozen-BN ResNet with the converted weights `flat`."""
  model = resnet.ResNet(depth=depth, width=width, norm='frozen_bn', freeze_at=0,
                        style=style)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(image))
  variables = pretrained.merge_backbone(shapes, flat, 'test', prefix=())
  out = jax.jit(model.apply)(variables, jnp.asarray(image))
  return {k: np.asarray(v) for k, v in out.items()}


def assert_features_close(ours: dict, theirs: dict) -> None:
  for level in ('C2', 'C3', 'C4', 'C5'):
    a, b = ours[level], theirs[level]
    assert a.shape == b.shape, (level, a.shape, b.shape)
    scale = float(np.abs(b).max())
    assert scale > 0 and np.std(b) > 1e-3 * scale, f'{level}: degenerate features'
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * scale, err_msg=level)


def caffe_image(seed: int = 0) -> np.ndarray:
  """[1,SIZE,SIZE,3] RGB image normalized as Keras' caffe mode (in RGB order)."""
  rgb = np.random.default_rng(seed).uniform(0, 255, (1, SIZE, SIZE, 3))
  return (rgb - np.array(pretrained.KERAS_CAFFE_MEAN_RGB)).astype(np.float32)


# ---- Keras ResNet50 ('caffe') ----------------------------------------------------------

@pytest.fixture(scope='module')
def keras_resnet50(tmp_path_factory):
  """A Keras ResNet50 with random weights, conv biases and BN statistics, its
  C2..C5 outputs on a BGR image, and its weights saved as .weights.h5 and as the
  Keras 2 layout .h5 (the downloadable ImageNet files)."""
  keras = pytest.importorskip('keras')
  model = keras.applications.ResNet50(weights=None, include_top=False,
                                      input_shape=(SIZE, SIZE, 3))
  rng = np.random.default_rng(1)
  for layer in model.layers:
    ws = layer.get_weights()
    if isinstance(layer, keras.layers.BatchNormalization):
      c = ws[0].shape
      layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                         rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])
    elif isinstance(layer, keras.layers.Conv2D):
      layer.set_weights([ws[0], rng.normal(0, 0.2, ws[1].shape)])
  path = tmp_path_factory.mktemp('keras')
  model.save_weights(str(path / 'r50.weights.h5'))
  names = {l.name: l.get_weights() for l in model.layers if l.weights}
  with h5py.File(path / 'r50_legacy.h5', 'w') as f:
    f.attrs['layer_names'] = [n.encode() for n in names]
    for name, ws in names.items():
      kinds = (['kernel', 'bias'] if len(ws) == 2
               else ['gamma', 'beta', 'moving_mean', 'moving_variance'])
      wnames = [f'{name}/{k}:0' for k in kinds]
      g = f.create_group(name)
      g.attrs['weight_names'] = [w.encode() for w in wnames]
      for w, a in zip(wnames, ws):
        g[w] = a
  image = caffe_image()
  outs = ['conv2_block3_out', 'conv3_block4_out', 'conv4_block6_out', 'conv5_block3_out']
  features = keras.Model(model.input, [model.get_layer(n).output for n in outs])
  # Keras' ResNet takes BGR.
  ref = features(image[..., ::-1].copy())
  ref = {f'C{i + 2}': np.asarray(r) for i, r in enumerate(ref)}
  return dict(dir=path, weights=names, image=image, features=ref)


@pytest.fixture(scope='module')
def keras_flat(keras_resnet50):
  """The Keras 3 .weights.h5 file through `load_pretrained` (rebuilds the Keras model)."""
  return pretrained.load_pretrained(str(keras_resnet50['dir'] / 'r50.weights.h5'), 50,
                                    'caffe')


def test_keras_resnet50_features_match(keras_resnet50, keras_flat):
  ours = jaxdet_features(keras_flat, 50, 'caffe', keras_resnet50['image'])
  assert_features_close(ours, keras_resnet50['features'])


def test_keras_legacy_h5_and_weights_dict_convert_alike(keras_resnet50, keras_flat):
  legacy = pretrained.load_pretrained(str(keras_resnet50['dir'] / 'r50_legacy.h5'), 50,
                                      'caffe')
  direct = pretrained.from_keras_resnet50(keras_resnet50['weights'])
  assert set(keras_flat) == set(legacy) == set(direct)
  for k in keras_flat:
    np.testing.assert_array_equal(keras_flat[k], legacy[k], err_msg=k)
    np.testing.assert_array_equal(keras_flat[k], direct[k], err_msg=k)


def test_keras_file_without_resnet_layer_names_fails(tmp_path):
  path = tmp_path / 'old.h5'
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [b'res2a_branch2a']
    g = f.create_group('res2a_branch2a')
    g.attrs['weight_names'] = [b'res2a_branch2a/kernel:0']
    g['res2a_branch2a/kernel:0'] = np.zeros((1, 1, 64, 64), np.float32)
  with pytest.raises(ValueError, match=r'old\.h5: no layer conv1_conv.*res2a_branch2a'):
    pretrained.load_pretrained(str(path), 50, 'caffe')


def test_keras_weights_of_another_depth_fail(keras_resnet50):
  with pytest.raises(ValueError, match=r'r50_legacy\.h5.*ResNet-50.*'
                     r'config\.model\.backbone\.depth=101'):
    pretrained.load_pretrained(str(keras_resnet50['dir'] / 'r50_legacy.h5'), 101,
                               'caffe')


# ---- torchvision ResNet-50 ('pytorch') ---------------------------------------------

def _torch_resnet50():
  """torchvision's resnet50, or a module with its structure and parameter names."""
  torch = pytest.importorskip('torch')
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision.models.resnet50()
  except ImportError:
    pass
  nn = torch.nn

  class Bottleneck(nn.Module):

    def __init__(self, cin, c, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(c)
      self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(c)
      self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(4 * c)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or cin != 4 * c:
        self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * c, 1, stride, bias=False),
                                        nn.BatchNorm2d(4 * c))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet50(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = 64
      for i, count in enumerate((3, 4, 6, 3)):
        c = 64 * 2**i
        blocks = []
        for j in range(count):
          blocks.append(Bottleneck(cin, c, 2 if i > 0 and j == 0 else 1))
          cin = 4 * c
        setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
      self.fc = nn.Linear(2048, 1000)

  return ResNet50()


def test_torchvision_resnet50_features_match(tmp_path):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  model = _torch_resnet50()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  model.eval()
  path = tmp_path / 'r50.pth'
  torch.save(model.state_dict(), path)
  image = np.random.default_rng(0).normal(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    ref = {}
    for i in range(4):
      x = getattr(model, f'layer{i + 1}')(x)
      ref[f'C{i + 2}'] = x.numpy().transpose(0, 2, 3, 1)
  flat = pretrained.load_pretrained(str(path), 50, 'pytorch')
  assert_features_close(jaxdet_features(flat, 50, 'pytorch', image), ref)


# ---- errors ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def r18_npz(tmp_path_factory):
  """A torchvision-named ResNet-18 of width 16 (the smoke configs' backbone) as .npz."""
  path = tmp_path_factory.mktemp('npz') / 'r18_w16.npz'
  sd = torchvision_state_dict(18, width=16)
  np.savez(path, **sd)
  return str(path), sd


def test_npz_converts_names_and_layouts(r18_npz):
  path, sd = r18_npz
  flat = pretrained.load_pretrained(path, 18, 'pytorch')
  np.testing.assert_array_equal(flat['stem/conv/kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat['stage2/block0/downsample_norm/var'],
                                sd['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(flat['stage4/block1/norm2/scale'],
                                sd['layer4.1.bn2.weight'])
  # fc and num_batches_tracked are dropped; everything else has a place.
  used = [k for k in sd if not k.startswith('fc.') and 'num_batches' not in k]
  assert len(flat) == len(used)


def test_wrong_depth_names_file_and_field(r18_npz, tmp_path):
  path, _ = r18_npz
  with pytest.raises(ValueError, match=r'r18_w16\.npz: the weights are ResNet-18 .*'
                     r'config\.model\.backbone\.depth=34'):
    pretrained.load_pretrained(path, 34, 'pytorch')
  r50 = tmp_path / 'r50.npz'
  np.savez(r50, **torchvision_state_dict(50, width=8))
  with pytest.raises(ValueError, match=r'r50\.npz: the weights are ResNet-50 .*'
                     r'config\.model\.backbone\.depth=101'):
    pretrained.load_pretrained(str(r50), 101, 'pytorch')


def test_style_mismatch_names_the_field(tmp_path):
  r50 = tmp_path / 'r50.npz'
  np.savez(r50, **torchvision_state_dict(50, width=8))
  with pytest.raises(ValueError, match=r"r50\.npz: torchvision .*'pytorch' style.*"
                     r"config\.model\.backbone\.style='caffe'"):
    pretrained.load_pretrained(str(r50), 50, 'caffe')
  keras_file = tmp_path / 'k.weights.h5'
  keras_file.write_bytes(b'')
  with pytest.raises(ValueError, match=r"k\.weights\.h5: keras .*'caffe' style.*"
                     r"config\.model\.backbone\.style='pytorch'"):
    pretrained.load_pretrained(str(keras_file), 50, 'pytorch')


def test_missing_file_and_unknown_type(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nope\.pth: no such file '
                     r'\(config\.model\.backbone\.pretrained\)'):
    pretrained.load_pretrained(str(tmp_path / 'nope.pth'), 50, 'pytorch')
  odd = tmp_path / 'w.bin'
  odd.write_bytes(b'')
  with pytest.raises(ValueError, match=r'w\.bin: unknown weights file type'):
    pretrained.load_pretrained(str(odd), 50, 'pytorch')


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
  path = tmp_path / 'r.pth'
  path.write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  with pytest.raises(ImportError, match=r'r\.pth: .*pip install torch'):
    pretrained.load_pretrained(str(path), 50, 'pytorch')


def test_unexpected_and_missing_keys(r18_npz):
  _, sd = r18_npz
  with pytest.raises(ValueError, match=r"'layer1\.0\.se\.weight' is not a key"):
    pretrained.from_torchvision({**sd, 'layer1.0.se.weight': np.zeros(3)}, 18)
  partial = {k: v for k, v in sd.items() if k != 'layer3.1.bn1.running_var'}
  with pytest.raises(ValueError, match=r"no 'layer3\.1\.bn1\.running_var'"):
    pretrained.from_torchvision(partial, 18)


def test_merge_backbone_checks_shapes_and_names(r18_npz):
  path, _ = r18_npz
  flat = pretrained.load_pretrained(path, 18, 'pytorch')
  model = resnet.ResNet(depth=18, width=16, norm='bn')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  merged = pretrained.merge_backbone(shapes, flat, path, prefix=())
  # norm='bn': scale and bias are params, the statistics batch_stats.
  np.testing.assert_array_equal(merged['params']['stem']['norm']['scale'],
                                flat['stem/norm/scale'])
  np.testing.assert_array_equal(merged['batch_stats']['stem']['norm']['mean'],
                                flat['stem/norm/mean'])
  bad = {**flat, 'stage2/block0/conv1/kernel': np.zeros((3, 3, 17, 32))}
  with pytest.raises(ValueError, match=r'r18_w16\.npz: stage2/block0/conv1/kernel has '
                     r'shape \(3, 3, 17, 32\) in the file, \(3, 3, 16, 32\) in X'):
    pretrained.merge_backbone(shapes, bad, path, prefix=(), target='X')
  with pytest.raises(ValueError, match=r'r18_w16\.npz: has no stem/conv/bias'):
    no_bn = resnet.ResNet(depth=18, width=16, norm='none')
    pretrained.merge_backbone(
        jax.eval_shape(no_bn.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))),
        flat, path, prefix=())
  with pytest.raises(ValueError, match=r'r18_w16\.npz: extra/kernel \(and 0 more\) has '
                     r'no place in'):
    pretrained.merge_backbone(shapes, {**flat, 'extra/kernel': np.zeros(1)}, path,
                              prefix=())


# ---- Detector.init with config.model.backbone.pretrained -----------------------------

def smoke_config(pretrained_path: str = ''):
  """configs/obc_shapes.py:smoke (Faster R-CNN + OBC, ResNet-18 of width 16) with BN
  statistics (pretrained weights need frozen_bn or bn)."""
  c = config_base.make_smoke(config_base.use_shapes(config_base.obc_config()))
  c.model.backbone.update(norm='frozen_bn', pretrained=pretrained_path)
  return c


def test_every_config_has_style_and_pretrained():
  for build in (config_base.retinanet_config, config_base.fcos_config,
                config_base.faster_rcnn_config, config_base.obc_config,
                functools.partial(config_base.cascade_rcnn_config, 'bins')):
    backbone = build().model.backbone
    assert backbone.style == 'pytorch' and backbone.pretrained == ''


def test_detector_init_loads_the_backbone(r18_npz):
  path, sd = r18_npz
  config = smoke_config(path)
  detector = detectors.build_detector(config, 6)
  state, _ = step_lib.create_train_state(detector, config, optimizer.lr_schedule(
      config.train, 10), sharding.make_mesh())  # what training starts from
  variables = state.variables()
  params, stats = variables['params']['backbone'], variables['batch_stats']['backbone']
  np.testing.assert_array_equal(params['stage3']['block1']['conv2']['kernel'],
                                sd['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats['stage1']['block0']['norm1']['scale'],
                                sd['layer1.0.bn1.weight'])
  np.testing.assert_array_equal(stats['stem']['norm']['var'], sd['bn1.running_var'])
  # The rest stays randomly initialized, and the variables feed the detector.
  assert set(variables['params']) == {'backbone', 'fpn', 'rpn', 'box_heads_0'}
  assert np.abs(np.asarray(
      variables['params']['rpn']['conv']['kernel'])).sum() > 0


def test_detector_init_width_mismatch_fails(r18_npz):
  path, _ = r18_npz
  config = smoke_config(path)
  config.model.backbone.width = 8
  detector = detectors.build_detector(config, 6)
  with pytest.raises(ValueError, match=r'r18_w16\.npz: \S+ has shape \(.*\) in the '
                     r'file, \(.*\) in config\.model\.backbone \(depth=18, width=8\)'):
    detector.with_pretrained(jax.eval_shape(detector.init, jax.random.key(0)))
  config.model.backbone.update(width=16, norm='gn')
  with pytest.raises(ValueError, match=r"config\.model\.backbone\.norm in .*'gn'"):
    detector = detectors.build_detector(config, 6)
    detector.with_pretrained(jax.eval_shape(detector.init, jax.random.key(0)))


def test_obc_coco_takes_a_torchvision_resnet50_by_one_override(tmp_path):
  """configs/obc_coco.py with only `backbone.pretrained` set accepts every tensor of a
  full-size torchvision ResNet-50 (traced, not run)."""
  config = config_base.load_config_file(
      os.path.join(os.path.dirname(__file__), '..', 'configs', 'obc_coco.py'))
  path = tmp_path / 'resnet50.npz'
  np.savez(path, **torchvision_state_dict(50, zero_convs=True))
  config.model.backbone.pretrained = str(path)
  config.data.image_size = (64, 64)  # any size: only the variables' shapes matter here
  detector = detectors.build_detector(config, 80)
  shapes = detector.with_pretrained(jax.eval_shape(detector.init, jax.random.key(0)))
  assert shapes['batch_stats']['backbone']['stage4']['block2']['norm3']['var'].shape == (
      2048,)


def test_caffe_style_moves_the_stride_only():
  x = jnp.zeros((1, 37, 50, 16))  # odd sizes: both styles give ceil(H/2) x ceil(W/2)
  shapes = {}
  for style in resnet.STYLES:
    block = resnet.Bottleneck(channels=8, stride=2, style=style)
    variables = jax.eval_shape(block.init, jax.random.key(0), x)
    shapes[style] = jax.tree.map(lambda a: a.shape,
                                 (variables, jax.eval_shape(block.apply, variables, x)))
  assert shapes['caffe'] == shapes['pytorch']
  assert shapes['caffe'][1] == (1, 19, 25, 32)
  with pytest.raises(ValueError, match='style'):
    jax.eval_shape(resnet.ResNet(depth=50, style='tf').init, jax.random.key(0), x)


def test_resumed_run_does_not_read_the_weights_file(repo_root, shapes_cache, tmp_path):
  """A workdir with a checkpoint resumes from it even when the pretrained file is gone
  (a fresh run would fail on it: the file is only read for a new state)."""
  from jaxdet.training import loop  # pylint: disable=g-import-not-at-top
  from tests.inference_utils import save_random_checkpoint, smoke_config
  config = smoke_config(repo_root, 'retinanet_shapes', shapes_cache)
  config.model.backbone.norm = 'frozen_bn'  # what ImageNet weights come with
  workdir = str(tmp_path / 'run')
  saved = save_random_checkpoint(config, workdir, step=5)
  config.model.backbone.pretrained = str(tmp_path / 'moved_away.npz')
  with pytest.raises(FileNotFoundError, match='moved_away.npz'):
    loop.Experiment(config, str(tmp_path / 'fresh'))
  experiment = loop.Experiment(config, workdir)
  assert experiment.step == 5
  for x, y in zip(jax.tree.leaves(saved.params), jax.tree.leaves(experiment.state.params)):
    np.testing.assert_array_equal(x, y)
