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
order, exactly as Flax does: the arrays copy unchanged.
"""

import hashlib
import json
import os
from typing import Dict, List

import h5py
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import traverse_util

from catsdogs_jax import models
from catsdogs_jax.train_state import init_variables

WEIGHTS_FILE = 'weights.json'
PARAMS_DIR = 'params'
# The preprocessing each source's ImageNet weights were trained with.
PREPROCESSING = {'keras_h5': 'caffe'}
KERAS_MODELS = ('vgg16', 'vgg19')


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
  """(include_top, classes, image size the top was built for), read from the arrays."""
  if 'predictions' not in layers:
    return False, None, None
  fc1_inputs = layers['fc1'][0].shape[0]
  side = int(round((fc1_inputs // 512) ** 0.5))
  if side * side * 512 != fc1_inputs:
    raise ConversionError(f'fc1 has {fc1_inputs} inputs, not 512 x a square feature map.')
  return True, int(layers['predictions'][0].shape[1]), 32 * side


def keras_to_params(layers: Dict[str, List[np.ndarray]], abstract_params):
  """Our parameter tree filled from Keras layers; fails listing missing, extra and misshapen."""
  expected = {name: sub for name, sub in abstract_params.items()}
  missing = sorted(set(expected) - set(layers))
  extra = sorted(set(layers) - set(expected))
  wrong = []
  params = {}
  for name, sub in expected.items():
    if name not in layers:
      continue
    arrays = layers[name]
    ours = [sub['kernel'], sub['bias']]
    if len(arrays) != 2 or any(a.shape != o.shape for a, o in zip(arrays, ours)):
      wrong.append(f'{name}: file {[a.shape for a in arrays]}, model '
                   f'{[tuple(o.shape) for o in ours]}')
      continue
    params[name] = {'kernel': arrays[0].astype(np.float32), 'bias': arrays[1].astype(np.float32)}
  if missing or extra or wrong:
    raise ConversionError(
        'The weight file does not match the model:'
        + (f'\n  missing in the file: {", ".join(missing)}' if missing else '')
        + (f'\n  in the file but not in the model: {", ".join(extra)}' if extra else '')
        + (f'\n  different shapes: ' + '; '.join(wrong) if wrong else ''))
  return params


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def convert_keras_h5(path: str, model: str, output: str) -> Dict:
  """Converts a keras.applications VGG16/VGG19 .h5 file into `output`; returns its metadata."""
  if model not in KERAS_MODELS:
    raise ConversionError(f'No Keras converter for {model!r}; choose one of {KERAS_MODELS}.')
  layers = read_keras_h5(path)
  include_top, num_classes, image_size = _vgg_shape(layers)
  flax_model = models.MODELS[model](num_outputs=num_classes or 1, include_top=include_top)
  size = (image_size or 224, image_size or 224, 3)
  abstract = jax.eval_shape(lambda r: init_variables(flax_model, r, size), jax.random.PRNGKey(0))
  params = keras_to_params(layers, abstract['params'])
  metadata = {'model': model, 'include_top': include_top, 'num_classes': num_classes,
              'image_size': image_size, 'preprocess': PREPROCESSING['keras_h5'],
              'source': 'keras_h5',
              'file': os.path.basename(path), 'sha256': _sha256(path)}
  save(output, params, metadata)
  return metadata


def save(output: str, params, metadata: Dict):
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output, PARAMS_DIR), {'params': params}, force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(output, WEIGHTS_FILE), 'w') as f:
    json.dump(metadata, f, indent=1)
  count = sum(x.size for x in jax.tree.leaves(params))
  logging.info('wrote %s: %s, %d parameters in %d arrays, preprocessing %r', output,
               metadata['model'], count, len(traverse_util.flatten_dict(params)),
               metadata['preprocess'])


CONVERTERS = {'keras_h5': convert_keras_h5}

FLAGS = flags.FLAGS
flags.DEFINE_enum('format', 'keras_h5', list(CONVERTERS), 'Format of the weight file.')
flags.DEFINE_string('model', 'vgg16', 'Our model name (vgg16, vgg19).')
flags.DEFINE_string('input', None, 'The weight file.')
flags.DEFINE_string('output', None, 'Directory to write the converted weights to.')


def main(argv):
  del argv
  try:
    CONVERTERS[FLAGS.format](FLAGS.input, FLAGS.model, FLAGS.output)
  except ConversionError as e:
    raise SystemExit(f'error: {e}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['input', 'output'])
  app.run(main)
