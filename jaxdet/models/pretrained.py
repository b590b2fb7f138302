"""ImageNet-pretrained weights for jaxdet's ResNet (`jaxdet.models.resnet`).

Converters map another framework's ResNet weights to a flat dict of NumPy float32
arrays keyed by the leaf's path inside jaxdet's backbone, without the collection:

  'stem/conv/kernel' [7,7,3,64], 'stem/norm/{scale,bias,mean,var}' [64],
  'stage1/block0/conv1/kernel' [1,1,64,64], ..., 'stage1/block0/downsample_conv/kernel',
  'stage1/block0/downsample_norm/{scale,bias,mean,var}', ... up to 'stage4/...'.

Kernels are HWIO, norms as jaxdet's BatchNorm layers compute them (eps `BN_EPS`):
y = scale * (x - mean) / sqrt(var + eps) + bias. The same names fit `norm='frozen_bn'`
(all four in 'batch_stats') and `norm='bn'` (scale, bias in 'params'; mean, var in
'batch_stats'); `merge_backbone` puts each where the detector has it.

Sources:
- torchvision ResNet-18/34/50/101/152 state dicts ('pytorch' style): `.pth` / `.pt`
  (torch.load, torch needed) or `.npz` (the same names as NumPy arrays, no torch).
  Inputs: RGB normalized with the ImageNet mean/std, jaxdet's default `config.data`.
- Keras `keras.applications.ResNet50/101/152` weights ('caffe' style): `.h5` (Keras 2
  layout, e.g. the downloaded `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`)
  or Keras 3 `.weights.h5`. See `from_keras` for the input normalization they need.

`load_pretrained` reads a file and checks it against the backbone config; Detector.init
calls it (through `load_into`) when `config.model.backbone.pretrained` is set.
"""

import os
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jaxdet.models import layers
from jaxdet.models import resnet

# jaxdet's BN epsilon (FrozenBatchNorm and BatchNorm share it); torchvision's is the same.
BN_EPS = layers.FrozenBatchNorm.epsilon
KERAS_BN_EPS = 1.001e-5  # keras.applications.resnet: BatchNormalization(epsilon=1.001e-5)

# Keras 'caffe' preprocessing (BGR, mean subtracted, no division), written for jaxdet's
# RGB images: what config.data.mean / std must be for converted Keras weights.
KERAS_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
KERAS_CAFFE_STD_RGB = (1.0, 1.0, 1.0)

TORCH_SUFFIXES = ('.pth', '.pt')
NPZ_SUFFIXES = ('.npz',)
KERAS_SUFFIXES = ('.h5',)  # also matches '.weights.h5'
# The style each source's weights were trained in.
SOURCE_STYLE = {'torchvision': 'pytorch', 'keras': 'caffe'}

_NORM_LEAVES = (('scale', 'weight'), ('bias', 'bias'), ('mean', 'running_mean'),
                ('var', 'running_var'))  # (jaxdet, torchvision)

Flat = dict[str, np.ndarray]


def _depth_of(counts: tuple[int, ...], bottleneck: bool) -> str:
  """'ResNet-101' for block counts (3, 4, 23, 3) of bottlenecks, else a description."""
  for depth, (block, spec) in resnet.SPECS.items():
    if tuple(spec) == tuple(counts) and (block is resnet.Bottleneck) == bottleneck:
      return f'ResNet-{depth}'
  return f'a ResNet with {counts} {"bottleneck" if bottleneck else "basic"} blocks'


def _check_depth(counts: tuple[int, ...], bottleneck: bool, depth: int) -> None:
  """Raises ValueError unless the weights' blocks per stage are those of `depth`."""
  if depth not in resnet.SPECS:
    raise ValueError(f'config.model.backbone.depth must be one of '
                     f'{sorted(resnet.SPECS)}, got {depth}')
  block, spec = resnet.SPECS[depth]
  if tuple(counts) != tuple(spec) or (block is resnet.Bottleneck) != bottleneck:
    raise ValueError(
        f'the weights are {_depth_of(counts, bottleneck)} (blocks per stage '
        f'{tuple(counts)}), config.model.backbone.depth={depth} expects {tuple(spec)}')


def _torch_norm(state_dict: Mapping[str, np.ndarray], src: str, dst: str) -> Flat:
  return {f'{dst}/{ours}': np.asarray(state_dict[f'{src}.{theirs}'], np.float32)
          for ours, theirs in _NORM_LEAVES}


def _torch_conv(state_dict: Mapping[str, np.ndarray], src: str, dst: str) -> Flat:
  # torch OIHW -> flax HWIO.
  w = np.asarray(state_dict[f'{src}.weight'], np.float32)
  return {f'{dst}/kernel': np.ascontiguousarray(w.transpose(2, 3, 1, 0))}


def from_torchvision(state_dict: Mapping[str, Any], depth: int) -> Flat:
  """torchvision ResNet state dict -> flat backbone variables (module docstring).

  Args:
    state_dict: {name: array} as `torchvision.models.resnet50().state_dict()` (NumPy
      arrays or anything `np.asarray` takes): 'conv1.weight' [64,3,7,7], 'bn1.weight',
      'bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'layer1.0.conv1.weight', ...,
      'layer1.0.downsample.0.weight' (projection conv), 'layer1.0.downsample.1.*' (its
      BN). 'fc.*' and 'num_batches_tracked' are ignored.
    depth: config.model.backbone.depth; the weights' blocks must be that ResNet's.
  Returns:
    {path: float32 array}, conv kernels HWIO [kh,kw,Cin,Cout], norms [C].
  Raises:
    ValueError: a key torchvision's ResNet does not have, a missing one, or blocks per
      stage of another depth.
  """
  keys = [k for k in state_dict
          if not k.startswith('fc.') and not k.endswith('num_batches_tracked')]
  pattern = re.compile(r'(conv1|bn1)\.\w+$|layer([1-4])\.(\d+)\.'
                       r'(conv[1-3]|bn[1-3]|downsample\.[01])\.\w+$')
  unknown = [k for k in keys if not pattern.match(k)]
  if unknown:
    raise ValueError(f'{unknown[0]!r} is not a key of a torchvision ResNet state dict '
                     f'({len(unknown)} such keys; a bare ResNet\'s state dict is needed, '
                     'keys conv1.weight, bn1.*, layer1.0.conv1.weight, ...)')
  counts = tuple(len({k.split('.')[1] for k in keys if k.startswith(f'layer{i}.')})
                 for i in range(1, 5))
  bottleneck = any('.conv3.' in k for k in keys)
  _check_depth(counts, bottleneck, depth)
  convs = ('conv1', 'conv2', 'conv3') if bottleneck else ('conv1', 'conv2')
  out = {}
  try:
    out.update(_torch_conv(state_dict, 'conv1', 'stem/conv'))
    out.update(_torch_norm(state_dict, 'bn1', 'stem/norm'))
    for i, count in enumerate(counts):
      for j in range(count):
        src, dst = f'layer{i + 1}.{j}', f'{resnet.STAGE_NAMES[i]}/block{j}'
        for k, conv in enumerate(convs, 1):
          out.update(_torch_conv(state_dict, f'{src}.{conv}', f'{dst}/conv{k}'))
          out.update(_torch_norm(state_dict, f'{src}.bn{k}', f'{dst}/norm{k}'))
        if f'{src}.downsample.0.weight' in state_dict:
          out.update(_torch_conv(state_dict, f'{src}.downsample.0',
                                 f'{dst}/downsample_conv'))
          out.update(_torch_norm(state_dict, f'{src}.downsample.1',
                                 f'{dst}/downsample_norm'))
  except KeyError as e:
    raise ValueError(f'the state dict has no {e.args[0]!r}') from None
  return out


def _keras_conv_bn(weights: Mapping[str, Any], conv: str, bn: str, dst_conv: str,
                   dst_norm: str, flip_input: bool = False) -> Flat:
  """One Keras Conv2D (with bias) + BatchNormalization pair -> jaxdet's bias-free conv
  and norm with the same output: the conv bias b moves into the mean (BN(x + b) has
  mean - b) and the eps difference into the variance."""
  try:
    kernel, conv_bias = (np.asarray(a, np.float32) for a in weights[conv])
    gamma, beta, mean, var = (np.asarray(a, np.float32) for a in weights[bn])
  except KeyError as e:
    raise ValueError(f'the weights have no layer {e.args[0]!r}') from None
  except ValueError:
    raise ValueError(f'layers {conv!r} / {bn!r} do not hold (kernel, bias) / (gamma, '
                     'beta, moving_mean, moving_variance)') from None
  if flip_input:
    # Keras' ResNet was trained on BGR images: reversing the stem's input channels
    # makes the converted network take RGB, as every jaxdet pipeline gives.
    kernel = kernel[:, :, ::-1, :]
  return {f'{dst_conv}/kernel': np.ascontiguousarray(kernel),
          f'{dst_norm}/scale': gamma, f'{dst_norm}/bias': beta,
          f'{dst_norm}/mean': mean - conv_bias,
          f'{dst_norm}/var': var + np.float32(KERAS_BN_EPS - BN_EPS)}


def from_keras(weights: Mapping[str, Any], depth: int = 50) -> Flat:
  """Keras `keras.applications.ResNet50/101/152` weights -> flat backbone variables.

  The converted backbone (style 'caffe') takes RGB images normalized as Keras' 'caffe'
  preprocessing does, in RGB order: set
    config.data.mean = KERAS_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
    config.data.std = KERAS_CAFFE_STD_RGB = (1.0, 1.0, 1.0)
  (Keras flips RGB to BGR and subtracts [103.939, 116.779, 123.68] without dividing;
  the stem kernel's input channels are reversed here instead of the images.)

  Args:
    weights: {Keras layer name: its `get_weights()` list}: 'conv1_conv' [kernel
      [7,7,3,64], bias [64]], 'conv1_bn' [gamma, beta, moving_mean, moving_variance],
      'conv2_block1_0_conv' (projection shortcut), 'conv2_block1_1_conv', ...,
      'conv5_block3_3_bn'. Other layers (e.g. 'predictions') are ignored.
    depth: 50, 101 or 152 (config.model.backbone.depth); the weights' blocks must be
      that ResNet's.
  Returns:
    {path: float32 array} as `from_torchvision`, for jaxdet's bias-free convs and
    its BN epsilon `BN_EPS` (Keras uses conv biases and eps 1.001e-5).
  """
  if 'conv1_conv' not in weights:
    some = ', '.join(sorted(weights)[:3])
    raise ValueError('no layer conv1_conv: not keras.applications ResNet weights '
                     f'(layers conv1_conv, conv2_block1_1_conv, ...; these have {some})')
  counts = []
  for stage in range(2, 6):
    blocks = {int(m.group(1)) for name in weights
              if (m := re.match(rf'conv{stage}_block(\d+)_', name))}
    counts.append(len(blocks))
  _check_depth(tuple(counts), True, depth)
  out = _keras_conv_bn(weights, 'conv1_conv', 'conv1_bn', 'stem/conv', 'stem/norm',
                       flip_input=True)
  for i, count in enumerate(counts):
    for j in range(count):
      src, dst = f'conv{i + 2}_block{j + 1}', f'{resnet.STAGE_NAMES[i]}/block{j}'
      for k in (1, 2, 3):
        out.update(_keras_conv_bn(weights, f'{src}_{k}_conv', f'{src}_{k}_bn',
                                  f'{dst}/conv{k}', f'{dst}/norm{k}'))
      if f'{src}_0_conv' in weights:
        out.update(_keras_conv_bn(weights, f'{src}_0_conv', f'{src}_0_bn',
                                  f'{dst}/downsample_conv', f'{dst}/downsample_norm'))
  return out


def from_keras_resnet50(weights: Mapping[str, Any]) -> Flat:
  """`from_keras` for `keras.applications.ResNet50` weights."""
  return from_keras(weights, 50)


# ---- files --------------------------------------------------------------------------

def source_of(path: str) -> str:
  """'torchvision' or 'keras', from the file name's suffix."""
  lower = path.lower()
  if lower.endswith(TORCH_SUFFIXES + NPZ_SUFFIXES):
    return 'torchvision'
  if lower.endswith(KERAS_SUFFIXES):
    return 'keras'
  raise ValueError(
      f'{path}: unknown weights file type; config.model.backbone.pretrained takes a '
      f'torchvision state dict ({", ".join(TORCH_SUFFIXES + NPZ_SUFFIXES)}) or Keras '
      'ResNet weights (.h5, .weights.h5)')


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        f'{path}: reading a .pth/.pt file needs PyTorch (pip install torch), which '
        'jaxdet does not require. Without it, save the state dict as .npz elsewhere: '
        'np.savez(out, **{k: v.numpy() for k, v in state_dict.items()})') from None
  obj = torch.load(path, map_location='cpu', weights_only=True)
  # Training checkpoints often wrap the state dict, and DataParallel prefixes 'module.'.
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  out = {}
  for k, v in obj.items():
    k = k[len('module.'):] if k.startswith('module.') else k
    if torch.is_tensor(v):
      v = v.detach().cpu()
      v = (v.float() if v.is_floating_point() else v).numpy()
    out[k] = v
  return out


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _read_keras(path: str, depth: int) -> dict[str, list[np.ndarray]]:
  """{layer name: [arrays]} from a Keras 2 `.h5` (read by name with h5py) or a Keras 3
  `.weights.h5` (whose groups are named by layer class and position, not by layer
  name: loaded into `keras.applications.ResNet{depth}` instead)."""
  import h5py  # pylint: disable=g-import-not-at-top  (keras depends on it)
  with h5py.File(path, 'r') as f:
    group = f['model_weights'] if 'model_weights' in f else f  # a whole-model .h5
    if 'layer_names' in group.attrs:
      out = {}
      for name in group.attrs['layer_names']:
        name = name.decode() if isinstance(name, bytes) else name
        layer = group[name]
        arrays = [np.asarray(layer[w.decode() if isinstance(w, bytes) else w])
                  for w in layer.attrs['weight_names']]
        if arrays:
          out[name] = arrays
      return out
    if 'layers' not in f:
      raise ValueError(f'{path}: not a Keras weights file (no layer_names, no layers)')
    include_top = any(k.startswith('dense') for k in f['layers'])
  try:
    import keras  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'{path}: a Keras 3 .weights.h5 file needs keras to read') from None
  builders = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101,
              152: keras.applications.ResNet152}
  if depth not in builders:
    raise ValueError(f'{path}: Keras ResNets have depth 50, 101 or 152, '
                     f'config.model.backbone.depth={depth}')
  model = builders[depth](weights=None, include_top=include_top)
  try:
    model.load_weights(path)
  except ValueError as e:
    raise ValueError(f'{path}: does not load into keras.applications.ResNet{depth} '
                     f'(config.model.backbone.depth={depth}): {e}') from None
  return {l.name: [np.asarray(w) for w in l.get_weights()]
          for l in model.layers if l.weights}


def load_pretrained(path: str, depth: int, style: str) -> Flat:
  """Reads ImageNet ResNet weights and converts them to flat backbone variables.

  Args:
    path: a torchvision state dict (.pth / .pt, or .npz of its arrays) or Keras ResNet
      weights (.h5 / .weights.h5); see the module docstring.
    depth: config.model.backbone.depth; the file must hold that ResNet.
    style: config.model.backbone.style; must be the weights' ('pytorch' for
      torchvision, 'caffe' for Keras; not checked for the basic-block ResNet-18/34,
      which have one style).
  Returns:
    {path in the backbone: float32 array}, for `merge_backbone`.
  Raises:
    FileNotFoundError, ImportError (torch missing for .pth), ValueError (wrong file
    type, style or depth, unexpected contents), each naming the file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file (config.model.backbone.pretrained)')
  source = source_of(path)
  want = SOURCE_STYLE[source]
  bottleneck = resnet.SPECS.get(depth, (None,))[0] is resnet.Bottleneck
  if bottleneck and style != want:
    raise ValueError(
        f'{path}: {source} ResNet weights are {want!r} style (stride in the '
        f'{"3x3" if want == "pytorch" else "first 1x1"} conv) but '
        f'config.model.backbone.style={style!r}; set '
        f'--config.model.backbone.style={want}')
  try:
    if source == 'keras':
      return from_keras(_read_keras(path, depth), depth)
    if path.lower().endswith(NPZ_SUFFIXES):
      return from_torchvision(_read_npz(path), depth)
    return from_torchvision(_read_torch(path), depth)
  except ValueError as e:
    if str(e).startswith(path):
      raise
    raise ValueError(f'{path}: {e}') from None


def _shape(x) -> tuple[int, ...]:
  return tuple(int(d) for d in x.shape)


def _model_order(key: str) -> tuple:
  """Sort key of backbone paths in the network's order: the stem first, then stages and
  blocks numerically (a pytree's dicts come back sorted by name: 'stage1' < 'stem')."""
  parts = re.split(r'(\d+)', key)
  return (not key.startswith('stem/'),) + tuple(int(p) if p.isdigit() else p
                                                  for p in parts)


def _replace(tree: Mapping[str, Any], prefix: tuple[str, ...], subtree: dict) -> dict:
  """`tree` (copied along `prefix`, as plain dicts) with `subtree` at `prefix`."""
  if not prefix:
    return subtree
  return {**tree, prefix[0]: _replace(tree[prefix[0]], prefix[1:], subtree)}


def merge_backbone(variables: Mapping[str, Any], backbone_vars: Mapping[str, Any],
                   path: str, prefix: tuple[str, ...] = ('backbone',),
                   target: str = 'config.model.backbone') -> dict:
  """A detector's variables with the backbone's leaves replaced by the converted ones.

  Args:
    variables: {collection: tree} as `Detector.init` (or `module.init`) returns; the
      backbone is under `prefix` in each collection that has it ('params' and, with
      BN, 'batch_stats').
    backbone_vars: {path in the backbone: array}, from `load_pretrained` or a
      converter.
    path: the weights file, for error messages.
    prefix: where the backbone sits in each collection's tree (() for a bare
      `ResNet`'s variables).
    target: what the backbone was built from, for error messages (e.g.
      'config.model.backbone (depth=50, width=64)').
  Returns:
    The same structure (plain dicts), each backbone leaf the file's array in the
    leaf's dtype; other leaves unchanged.
  Raises:
    ValueError naming the file and the first offending key: a backbone leaf the file
    lacks, a shape mismatch (both shapes), or a file entry the backbone has no place
    for.
  """
  used = set()
  out = {}
  for collection, tree in variables.items():
    node = tree
    for key in prefix:
      node = node.get(key) if isinstance(node, Mapping) else None
    if node is None:
      out[collection] = tree
      continue
    flat = traverse_util.flatten_dict(node, sep='/')
    new = {}
    for key in sorted(flat, key=_model_order):
      leaf = flat[key]
      if key not in backbone_vars:
        raise ValueError(f'{path}: has no {key} ({collection!r} of {target}; '
                         'another norm, depth or model?)')
      value = backbone_vars[key]
      if _shape(value) != _shape(leaf):
        raise ValueError(f'{path}: {key} has shape {_shape(value)} in the file, '
                         f'{_shape(leaf)} in {target}')
      new[key] = np.asarray(value, leaf.dtype)
      used.add(key)
    out[collection] = _replace(tree, prefix, traverse_util.unflatten_dict(new, sep='/'))
  unused = sorted((k for k in backbone_vars if k not in used), key=_model_order)
  if unused:
    raise ValueError(f'{path}: {unused[0]} (and {len(unused) - 1} more) has no place '
                     f'in {target}')
  return out


BN_NORMS = ('frozen_bn', 'bn')


def load_into(variables: Mapping[str, Any], backbone_config: Mapping[str, Any],
              prefix: tuple[str, ...] = ('backbone',)) -> dict:
  """`variables` with the backbone from `backbone_config.pretrained` (unchanged if '').

  Args:
    variables: a detector's init variables.
    backbone_config: config.model.backbone (depth, width, norm, style, pretrained).
    prefix: where the backbone sits in each collection.
  """
  path = backbone_config.get('pretrained', '')
  if not path:
    return dict(variables)
  path = os.path.expanduser(path)
  if backbone_config['norm'] not in BN_NORMS:
    raise ValueError(f'{path}: pretrained BatchNorm statistics need '
                     f'config.model.backbone.norm in {BN_NORMS}, got '
                     f'{backbone_config["norm"]!r}')
  depth, width = backbone_config['depth'], backbone_config['width']
  weights = load_pretrained(path, depth, backbone_config.get('style', 'pytorch'))
  return merge_backbone(variables, weights, path, prefix,
                        target=f'config.model.backbone (depth={depth}, width={width})')
