"""Keras `.h5` weight files (what `keras.applications` downloads) to our parameter trees.

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

from typing import Dict, List, Optional

import h5py
import numpy as np
from flax import traverse_util

from catsdogs_jax.data import preprocessing
from catsdogs_jax.weights.converted import ConversionError, Mapping, unchanged, write


def read_keras_h5(path: str) -> Dict[str, List[np.ndarray]]:
  """Layer name -> its arrays in file order, for every layer that has weights."""
  try:
    handle = h5py.File(path, 'r')
  except OSError as e:
    raise ConversionError(f'{path!r} is not an HDF5 file ({e}).') from e
  with handle as f:
    group = f['model_weights'] if 'model_weights' in f else f  # whole-model files nest weights
    if 'layer_names' not in group.attrs:
      raise ConversionError(
          f'{path!r} is not a Keras weight file: it has no "layer_names" '
          'attribute (expected the legacy .h5 format of keras.applications).'
      )
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
    raise ConversionError(
        f'Expected one Normalization layer in the file, found {names}: '
        'is this a keras.applications EfficientNet file?'
    )
  mean, variance = (np.asarray(a, np.float64).reshape(-1) for a in layers[names[0]][:2])
  if np.allclose(mean, 0) and np.allclose(variance, 1):
    return 'rescale'
  if np.allclose(mean, preprocessing.TORCH_MEAN, atol=1e-4) and (
      np.allclose(variance, preprocessing.TORCH_STD, atol=1e-4)
      or np.allclose(variance, np.square(preprocessing.TORCH_STD), atol=1e-4)
  ):
    return 'torch'
  raise ConversionError(
      f'The Normalization layer {names[0]!r} has mean {mean.tolist()} and '
      f"variance {variance.tolist()}, neither ImageNet's nor an untrained "
      "model's: no preprocessing of ours matches it."
  )


KERAS_MODELS = {'vgg16': _vgg_shape, 'vgg19': _vgg_shape, 'efficientnet_b0': _efficientnet_shape}


# Position of each of our leaves among its Keras layer's arrays: kernel, bias for
# convolutions and dense layers; gamma, beta, moving mean, moving variance for BatchNorm.
_KERAS_ORDER = {'kernel': 0, 'scale': 0, 'bias': 1, 'mean': 2, 'var': 3}


def _depthwise_kernel(w):
  return np.transpose(w, (0, 1, 3, 2))  # Keras (k, k, C, 1) -> grouped Flax (k, k, 1, C)


def keras_mapping(abstract_variables) -> Mapping:
  """Keras layers keep our names; arrays are flattened here as 'layer/0', 'layer/1'..."""
  mapping = {}
  for path in traverse_util.flatten_dict(abstract_variables):
    _, layer, leaf = path
    depthwise = leaf == 'kernel' and layer.endswith('dwconv')
    mapping[path] = (f'{layer}/{_KERAS_ORDER[leaf]}', _depthwise_kernel if depthwise else unchanged)
  return mapping


def keras_tensors(layers: Dict[str, List[np.ndarray]]) -> Dict[str, np.ndarray]:
  return {f'{name}/{i}': a for name, arrays in layers.items() for i, a in enumerate(arrays)}


def convert_keras_h5(
    path: str,
    model: str,
    output: str,
    preprocess: Optional[str] = None,
    metadata: Optional[Dict] = None,
) -> Dict:
  """Converts a keras.applications VGG16/VGG19/EfficientNetB0 .h5 file into `output`.

  The preprocessing is read from the file unless `preprocess` is given.
  """
  if model not in KERAS_MODELS:
    raise ConversionError(
        f'No Keras converter for {model!r}; choose one of ' f'{", ".join(KERAS_MODELS)}.'
    )
  layers = read_keras_h5(path)
  include_top, num_classes, image_size, from_file = KERAS_MODELS[model](layers)
  return write(
      path,
      output,
      'keras_h5',
      model,
      include_top,
      num_classes,
      image_size,
      keras_tensors(layers),
      keras_mapping,
      ignore=('^normalization',),
      preprocess=preprocess or from_file,
      extra=metadata,
  )
