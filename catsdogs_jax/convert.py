"""Converters from published weight files to our parameter trees, saved with what they need.

  python -m catsdogs_jax.convert --format=keras_h5 --model=vgg16 \
      --input=vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --output=weights/vgg16_keras_notop

A converted directory holds `params/` (an Orbax checkpoint of the Flax
parameters) and `weights.json`: the model, whether it has its top, the number
of classes, the image size the top was built for, where the weights came from
and the preprocessing they were trained with. Load it with
`config.init_from=DIR` (see `catsdogs_jax.weights`).

Keras `.h5` files (the legacy format `keras.applications` downloads): each
layer is an HDF5 group named like the layer, its arrays listed in the group's
`weight_names` attribute, kernel before bias. Only the order is relied on, so
files written by Keras 1 (`block1_conv1_W_1:0`), 2 (`block1_conv1/kernel:0`)
and 3 (`block1_conv1/kernel`) all read. Keras stores convolution kernels as
HWIO and dense kernels as (in, out), and flattens NHWC feature maps in (H, W, C)
order, exactly as Flax does: the arrays copy unchanged, except depthwise
kernels ((k, k, C, 1) in Keras, (k, k, 1, C) as a grouped Flax convolution).

EfficientNet's Keras model carries its preprocessing inside: Rescaling(1/255)
and a Normalization layer whose statistics are in the file. The published
ImageNet files hold mean (0.485, 0.456, 0.406) and, by a known slip, the
standard deviations as "variance", which Keras compensates with one more
Rescaling: in effect torchvision's normalisation, recorded here as 'torch'.
A file of an untrained model (mean 0, variance 1) records 'rescale'.
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import h5py
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import traverse_util

from catsdogs_jax import models, preprocessing
from catsdogs_jax.train_state import abstract_variables

WEIGHTS_FILE = 'weights.json'
PARAMS_DIR = 'params'


class ConversionError(ValueError):
  """A weight file that does not fit the model; the message lists what differs."""


def read_keras_h5(path: str) -> Dict[str, List[np.ndarray]]:
  """Layer name -> its arrays in file order, for every layer that has weights."""
  try:
    handle = h5py.File(path, 'r')
  except OSError as e:
    raise ConversionError(f'{path!r} is not an HDF5 file ({e}).') from e
  with handle as f:
    group = f['model_weights'] if 'model_weights' in f else f   # whole-model files nest weights
    if 'layer_names' not in group.attrs:
      raise ConversionError(f'{path!r} is not a Keras weight file: it has no "layer_names" '
                            'attribute (expected the legacy .h5 format of keras.applications).')
    layers = {}
    for name in group.attrs['layer_names']:
      name = name.decode() if isinstance(name, bytes) else str(name)
      weight_names = group[name].attrs.get('weight_names', [])
      arrays = [np.asarray(group[name][w]) for w in weight_names]
      if arrays:
        layers[name] = arrays
    return layers


def _vgg_shape(layers: Dict[str, List[np.ndarray]]):
  """(include_top, classes, image size the top was built for, preprocessing), from the arrays."""
  if 'predictions' not in layers:
    return False, None, None, 'caffe'
  fc1_inputs = layers['fc1'][0].shape[0]
  side = int(round((fc1_inputs // 512) ** 0.5))
  if side * side * 512 != fc1_inputs:
    raise ConversionError(f'fc1 has {fc1_inputs} inputs, not 512 x a square feature map.')
  return True, int(layers['predictions'][0].shape[1]), 32 * side, 'caffe'


def _efficientnet_shape(layers: Dict[str, List[np.ndarray]]):
  """Like `_vgg_shape`; the top is global-pooled (any image size), preprocessing from the file."""
  include_top = 'predictions' in layers
  classes = int(layers['predictions'][0].shape[1]) if include_top else None
  return include_top, classes, None, _keras_normalization(layers)


def _keras_normalization(layers: Dict[str, List[np.ndarray]]) -> str:
  """The preprocessing that the file's Normalization layer (after Rescaling(1/255)) amounts to."""
  names = [n for n in layers if n.startswith('normalization')]
  if len(names) != 1:
    raise ConversionError(f'Expected one Normalization layer in the file, found {names}: '
                          'is this a keras.applications EfficientNet file?')
  mean, variance = (np.asarray(a, np.float64).reshape(-1) for a in layers[names[0]][:2])
  if np.allclose(mean, 0) and np.allclose(variance, 1):
    return 'rescale'
  if np.allclose(mean, preprocessing.TORCH_MEAN, atol=1e-4) and (
      np.allclose(variance, preprocessing.TORCH_STD, atol=1e-4) or
      np.allclose(variance, np.square(preprocessing.TORCH_STD), atol=1e-4)):
    return 'torch'
  raise ConversionError(f'The Normalization layer {names[0]!r} has mean {mean.tolist()} and '
                        f'variance {variance.tolist()}, neither ImageNet\'s nor an untrained '
                        'model\'s: no preprocessing of ours matches it.')


KERAS_MODELS = {'vgg16': _vgg_shape, 'vgg19': _vgg_shape, 'efficientnet_b0': _efficientnet_shape}


Mapping = Dict[Tuple[str, ...], Tuple[str, Callable]]   # our path -> (source key, transform)


def fill(abstract_variables, tensors: Dict[str, np.ndarray], mapping: Mapping,
         ignore: Sequence[str] = ()):
  """Our variables filled from a flat source dict; fails listing missing, extra, misshapen."""
  ours = traverse_util.flatten_dict(abstract_variables)
  unmapped = sorted('/'.join(p) for p in set(ours) - set(mapping))
  missing = sorted({src for src, _ in mapping.values() if src not in tensors})
  used = {src for src, _ in mapping.values()}
  extra = sorted(k for k in tensors if k not in used and not any(re.search(i, k) for i in ignore))
  out, wrong = {}, []
  for path, (src, transform) in mapping.items():
    if src in tensors:
      value = np.asarray(transform(tensors[src]), np.float32)
      if value.shape != tuple(ours[path].shape):
        wrong.append(f'{src} -> {"/".join(path)}: file {tuple(tensors[src].shape)}, '
                     f'model {tuple(ours[path].shape)}')
      out[path] = value
  if unmapped or missing or extra or wrong:
    raise ConversionError('\n'.join(['The weight file does not match the model:'] +
                                     mismatch_lines(missing, extra, wrong, unmapped)))
  return traverse_util.unflatten_dict(out)


def mismatch_lines(missing: Sequence[str], extra: Sequence[str], wrong: Sequence[str],
                   unmapped: Sequence[str] = ()) -> List[str]:
  """The lines of a "does not match" message: what is missing, extra, unmapped, misshapen."""
  return ([f'  missing in the file: {_listing(missing)}'] if missing else []) + (
      [f'  in the file but not in the model: {_listing(extra)}'] if extra else []) + (
      [f'  model parameters with no source: {_listing(unmapped)}'] if unmapped else []) + (
      [f'  different shapes: {_listing(wrong, "; ")}'] if wrong else [])


def _listing(items: Sequence[str], sep: str = ', ', most: int = 12) -> str:
  shown = sep.join(items[:most])
  return shown + (f'{sep}... ({len(items)} in all)' if len(items) > most else '')


def _same(x):
  return x


# Position of each of our leaves among its Keras layer's arrays: kernel, bias for
# convolutions and dense layers; gamma, beta, moving mean, moving variance for BatchNorm.
_KERAS_ORDER = {'kernel': 0, 'scale': 0, 'bias': 1, 'mean': 2, 'var': 3}


def _depthwise_kernel(w):
  return np.transpose(w, (0, 1, 3, 2))   # Keras (k, k, C, 1) -> grouped Flax (k, k, 1, C)


def keras_mapping(abstract_variables) -> Mapping:
  """Keras layers keep our names; arrays are flattened here as 'layer/0', 'layer/1'..."""
  mapping = {}
  for path in traverse_util.flatten_dict(abstract_variables):
    _, layer, leaf = path
    depthwise = leaf == 'kernel' and layer.endswith('dwconv')
    mapping[path] = (f'{layer}/{_KERAS_ORDER[leaf]}', _depthwise_kernel if depthwise else _same)
  return mapping


def keras_tensors(layers: Dict[str, List[np.ndarray]]) -> Dict[str, np.ndarray]:
  return {f'{name}/{i}': a for name, arrays in layers.items() for i, a in enumerate(arrays)}


def _conv_kernel(w):
  return np.transpose(w, (2, 3, 1, 0))   # torch OIHW -> flax HWIO


def _dense_kernel(w):
  return np.transpose(w)                 # torch (out, in) -> flax (in, out)


def _fc1_kernel(w):
  """torchvision flattens (C, H, W) after its 7x7 pool, we flatten (H, W, C): permute rows."""
  out_features, in_features = w.shape
  side = int(round((in_features // 512) ** 0.5))
  return w.reshape(out_features, 512, side, side).transpose(2, 3, 1, 0).reshape(in_features,
                                                                                 out_features)


def torch_vgg_mapping(abstract_variables) -> Mapping:
  """torchvision VGG keys: features.<i> for convs (relu and pool between), classifier.0/3/6."""
  mapping, index = {}, 0
  names = [n for n in abstract_variables['params'] if n.startswith('block')]
  for block in sorted({n.split('_')[0] for n in names}):
    convs = sorted(n for n in names if n.startswith(block + '_'))
    for name in convs:
      mapping[('params', name, 'kernel')] = (f'features.{index}.weight', _conv_kernel)
      mapping[('params', name, 'bias')] = (f'features.{index}.bias', _same)
      index += 2            # conv, relu
    index += 1              # max-pool
  for name, i, kernel in (('fc1', 0, _fc1_kernel), ('fc2', 3, _dense_kernel),
                          ('predictions', 6, _dense_kernel)):
    if name in abstract_variables['params']:
      mapping[('params', name, 'kernel')] = (f'classifier.{i}.weight', kernel)
      mapping[('params', name, 'bias')] = (f'classifier.{i}.bias', _same)
  return mapping


def torch_efficientnet_mapping(abstract_variables) -> Mapping:
  """EfficientNet-PyTorch keys (lukemelas' layout, also the Lite weight packages').

  _conv_stem/_bn0, then _blocks.N (numbered through all stages) with _expand_conv/_bn0,
  _depthwise_conv/_bn1, _se_reduce, _se_expand, _project_conv/_bn2; _conv_head/_bn1, _fc.
  """
  layers = {'stem_conv': '_conv_stem', 'stem_bn': '_bn0', 'top_conv': '_conv_head',
            'top_bn': '_bn1', 'predictions': '_fc'}
  parts = {'expand_conv': '_expand_conv', 'expand_bn': '_bn0', 'dwconv': '_depthwise_conv',
           'bn': '_bn1', 'se_reduce': '_se_reduce', 'se_expand': '_se_expand',
           'project_conv': '_project_conv', 'project_bn': '_bn2'}
  blocks = sorted({m.group(1, 2) for name in abstract_variables['params']
                   if (m := re.fullmatch(r'block(\d+)([a-z])_.*', name))},
                  key=lambda b: (int(b[0]), b[1]))
  for n, (stage, letter) in enumerate(blocks):
    for ours, theirs in parts.items():
      layers[f'block{stage}{letter}_{ours}'] = f'_blocks.{n}.{theirs}'
  return _torch_layer_mapping(abstract_variables, lambda path: layers[path[0]])


_TORCH_LEAVES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
                 ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
                 ('batch_stats', 'var'): 'running_var'}


def _torch_layer_mapping(abstract_variables, module_key: Callable) -> Mapping:
  """Every leaf mapped to `<module_key(our module path)>.<torch leaf name>`, kernels transposed."""
  mapping = {}
  for path, leaf in traverse_util.flatten_dict(abstract_variables).items():
    module = module_key(path[1:-1])
    transform = _same
    if path[-1] == 'kernel':
      transform = _conv_kernel if len(leaf.shape) == 4 else _dense_kernel
    mapping[path] = (f'{module}.{_TORCH_LEAVES[(path[0], path[-1])]}', transform)
  return mapping


def _torch_module_key(path: Tuple[str, ...]) -> str:
  """Our module path -> torchvision's: layer1_0/downsample_conv -> layer1.0.downsample.0."""
  parts = []
  for p in path:
    if re.fullmatch(r'layer\d+_\d+', p):
      parts.extend(p.split('_'))
    else:
      parts.append({'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(p, p))
  return '.'.join(parts)


def torch_resnet_mapping(abstract_variables) -> Mapping:
  """torchvision / timm ResNet keys; BatchNorm scale/bias/mean/var from weight/bias/running_*."""
  return _torch_layer_mapping(abstract_variables, _torch_module_key)


def read_torch(path: str) -> Dict[str, np.ndarray]:
  """A state dict from .safetensors, or from .pth/.pt loaded as data only (never unpickling code)."""
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    return load_file(path)
  try:
    import torch
  except ImportError as e:
    raise ConversionError('Reading .pth files needs PyTorch: pip install torch '
                          '(or convert the file to .safetensors elsewhere).') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:   # UnpicklingError for code in the pickle, others for broken files
    raise ConversionError(
        f'Refused to load {path!r}: it is not a plain tensor file that torch.load(..., '
        f'weights_only=True) accepts ({type(e).__name__}: {str(e)[:200]}).') from e
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, 'numpy')}


@dataclasses.dataclass(frozen=True)
class TorchLayout:
  """How one family's PyTorch state dicts map to our model."""
  mapping: Callable              # abstract variables -> Mapping
  top_key: str                   # the classifier's weight: present when the file has its top
  preprocess: str = 'torch'      # what the family's published ImageNet weights expect
  top_image_size: Optional[int] = None   # VGG's flattened top fixes the image size


_VGG = TorchLayout(torch_vgg_mapping, 'classifier.6.weight', top_image_size=224)
_RESNET = TorchLayout(torch_resnet_mapping, 'fc.weight')
TORCH_MODELS = {
    'vgg16': _VGG, 'vgg19': _VGG,
    **{f'resnet{n}': _RESNET for n in (18, 34, 50, 101, 152)},
    # lukemelas' EfficientNet-PyTorch B0 (ImageNet mean/std) and the TensorFlow Lite
    # checkpoints copied into its layout ((x - 127) / 128, as TensorFlow trained them).
    'efficientnet_b0': TorchLayout(torch_efficientnet_mapping, '_fc.weight'),
    **{f'efficientnet_lite{n}': TorchLayout(torch_efficientnet_mapping, '_fc.weight',
                                            preprocess='inception') for n in (0, 1, 2)},
}


def convert_torch(path: str, model: str, output: str, preprocess: Optional[str] = None,
                  metadata: Optional[Dict] = None) -> Dict:
  """Converts a torchvision / timm / EfficientNet-PyTorch state dict (.pth or .safetensors).

  `preprocess` overrides the family's usual preprocessing (TorchLayout.preprocess);
  `metadata` is recorded beside the converter's own fields.
  """
  if model not in TORCH_MODELS:
    raise ConversionError(f'No PyTorch converter for {model!r}; choose one of '
                          f'{", ".join(TORCH_MODELS)}.')
  layout = TORCH_MODELS[model]
  tensors = read_torch(path)
  include_top = layout.top_key in tensors
  num_classes = int(tensors[layout.top_key].shape[0]) if include_top else None
  image_size = layout.top_image_size if include_top else None
  return _convert(path, output, 'torch', model, include_top, num_classes, image_size, tensors,
                  layout.mapping, ignore=(r'num_batches_tracked$',),
                  preprocess=preprocess or layout.preprocess, extra=metadata)


def _convert(path, output, source, model, include_top, num_classes, image_size, tensors,
             mapping_fn, ignore, preprocess: str, extra: Optional[Dict]) -> Dict:
  """Fills `model`'s variables from `tensors` through `mapping_fn`, saves them with metadata."""
  flax_model = models.MODELS[model](num_outputs=num_classes or 1, include_top=include_top)
  abstract = abstract_variables(flax_model, (image_size or 224, image_size or 224, 3))
  variables = fill(abstract, tensors, mapping_fn(abstract), ignore)
  metadata = {'model': model, 'include_top': include_top, 'num_classes': num_classes,
              'image_size': image_size, 'preprocess': preprocess,
              'source': source, 'file': os.path.basename(path), 'sha256': file_digest(path),
              **(extra or {})}
  save(output, variables, metadata)
  return metadata


def file_digest(path: str, algorithm: str = 'sha256') -> str:
  """The hex digest of a file ('sha256', 'md5', ...), read in chunks."""
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def convert_keras_h5(path: str, model: str, output: str, preprocess: Optional[str] = None,
                     metadata: Optional[Dict] = None) -> Dict:
  """Converts a keras.applications VGG16/VGG19/EfficientNetB0 .h5 file into `output`.

  The preprocessing is read from the file unless `preprocess` is given.
  """
  if model not in KERAS_MODELS:
    raise ConversionError(f'No Keras converter for {model!r}; choose one of '
                          f'{", ".join(KERAS_MODELS)}.')
  layers = read_keras_h5(path)
  include_top, num_classes, image_size, from_file = KERAS_MODELS[model](layers)
  return _convert(path, output, 'keras_h5', model, include_top, num_classes, image_size,
                  keras_tensors(layers), keras_mapping, ignore=('^normalization',),
                  preprocess=preprocess or from_file, extra=metadata)


def save(output: str, variables, metadata: Dict):
  """Writes `output/params` ({'params', 'batch_stats'}) and `output/weights.json`."""
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output, PARAMS_DIR), dict(variables), force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(output, WEIGHTS_FILE), 'w') as f:
    json.dump(metadata, f, indent=1)
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  logging.info('wrote %s: %s, %d parameters, preprocessing %r', output, metadata['model'],
               count, metadata['preprocess'])


CONVERTERS = {'keras_h5': convert_keras_h5, 'torch': convert_torch}

def _define_flags():
  """The command line's flags, defined only when this module runs as the program."""
  flags.DEFINE_enum('format', 'keras_h5', list(CONVERTERS), 'Format of the weight file.')
  flags.DEFINE_string('model', 'vgg16', 'Our model name (keras_h5: vgg16, vgg19, efficientnet_b0; '
                      'torch: vgg16, vgg19, resnet18..152, efficientnet_b0, '
                      'efficientnet_lite0..2).')
  flags.DEFINE_string('input', None, 'The weight file.')
  flags.DEFINE_string('output', None, 'Directory to write the converted weights to.')
  flags.DEFINE_string('pretrained', None, 'A published weight set (catsdogs_jax.models.'
                      'WEIGHT_SETS): checks --input (default: its package file or a download) '
                      'against its checksum and converts it into the cache that '
                      'init_from="pretrained:NAME" reads; --format, --model, --output unused.')


def main(argv):
  del argv
  # This file runs as __main__; the library's own copy of it is what pretrained
  # calls, so its errors are the ones to catch.
  from catsdogs_jax import convert, pretrained
  FLAGS = flags.FLAGS
  if not (FLAGS.pretrained or (FLAGS.input and FLAGS.output)):
    raise SystemExit('error: give --input and --output (or --pretrained=NAME).')
  if FLAGS.input and not os.path.isfile(FLAGS.input):
    raise SystemExit(f'error: --input={FLAGS.input} is not a file.')
  try:
    if FLAGS.pretrained:
      ws = pretrained.weight_set(FLAGS.pretrained)
      print(pretrained.convert_into_cache(ws, FLAGS.input or pretrained.source_file(ws)))
    else:
      convert.CONVERTERS[FLAGS.format](FLAGS.input, FLAGS.model, FLAGS.output)
  except (convert.ConversionError, pretrained.PretrainedError) as e:
    raise SystemExit(f'error: {e}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
