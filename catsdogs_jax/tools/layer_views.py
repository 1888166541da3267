"""Inside the network: a layer's feature maps for an image, and the first convolution's kernels."""

import os
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from catsdogs_jax.data.preprocessing import get_preprocessor
from catsdogs_jax.models import summary
from catsdogs_jax.tools import plots
from catsdogs_jax.tools.evaluate import inference_state
from catsdogs_jax.training import experiment
from catsdogs_jax.training.config_checks import ConfigError
from catsdogs_jax.training.steps import inference_variables

FEATURE_MAPS_PNG = 'feature_maps_{layer}_{image}.png'
FILTERS_PNG = 'filters.png'
ACTIVATIONS = ('relu', 'none')


def _input_shape(exp):
  return (exp.config.data.image_size, exp.config.data.image_size, exp.config.data.channels)


def _abstract_variables(exp) -> Dict:
  abstract = exp.abstract_state()
  return {'params': abstract.params, 'batch_stats': abstract.batch_stats}


def check_layers(exp, layers: Sequence[str]) -> Dict[str, tuple]:
  """Output shape per requested layer; unknown or non-spatial layers are refused, listing the choices."""
  outputs = dict(summary.layer_outputs(exp.model, _abstract_variables(exp), _input_shape(exp)))
  spatial = [name for name, shape in outputs.items() if len(shape) == 4]
  if not layers:
    raise ConfigError(
        f'--mode=feature_maps needs --layer=NAME; layers with feature maps: '
        f'{", ".join(spatial)}.'
    )
  for layer in layers:
    if layer not in outputs:
      raise ConfigError(
          f'The model {exp.config.model.name!r} has no layer {layer!r}; layers '
          f'with feature maps: {", ".join(spatial)}.'
      )
    if layer not in spatial:
      raise ConfigError(
          f'Layer {layer!r} outputs {outputs[layer]}, not a feature map; choose '
          f'one of: {", ".join(spatial)}.'
      )
  return {layer: outputs[layer] for layer in layers}


def layer_activations(
    model, config, variables, images, layers: Sequence[str], activation: str = 'relu'
) -> Dict[str, jnp.ndarray]:
  """The outputs of `layers` ('/'-joined module paths) for uint8 images, as the model runs them.

  Our layers return pre-activation values (the activation is a separate
  function); 'relu' applies it, as Keras' Conv2D(activation='relu') outputs do.
  """
  wanted = {tuple(layer.split('/')) for layer in layers}
  capture = lambda module, method: method == '__call__' and tuple(module.scope.path) in wanted
  x = get_preprocessor(config.data.preprocess)(images)
  _, state = model.apply(
      variables, x, train=False, capture_intermediates=capture, mutable=['intermediates']
  )
  flat = traverse_util.flatten_dict(state['intermediates'])
  out = {layer: flat[tuple(layer.split('/')) + ('__call__',)][0] for layer in layers}
  return {k: jax.nn.relu(v) if activation == 'relu' else v for k, v in out.items()}


def write_feature_maps(
    config,
    workdir: str,
    layers: Sequence[str],
    specs: Sequence[str],
    step: Optional[int] = None,
    activation: str = 'relu',
) -> List[str]:
  """One PNG per layer and image: every channel of the layer's output as a small picture."""
  from catsdogs_jax.data import folders, input_pipeline

  if activation not in ACTIVATIONS:
    raise ConfigError(f'Unknown activation {activation!r}; choose one of {ACTIVATIONS}.')
  if not specs:
    raise ConfigError('--mode=feature_maps needs --images=PATH (files, globs or folders).')
  files = folders.read_files(specs)
  exp = experiment.build(config, workdir, read_only=True, roles=())
  check_layers(exp, layers)
  state, step = inference_state(exp, step)
  variables = inference_variables(state)  # the weights predictions use (config.ema's average)
  run = jax.jit(lambda v, x: layer_activations(exp.model, exp.config, v, x, layers, activation))
  pipeline = input_pipeline.ImagePipeline(
      exp.config, 'feature_maps', exp.info.class_names, files=files
  )
  paths, written, seen = [str(p) for p in files.paths], [], 0
  for batch in pipeline.eval_batches():
    real = int(batch['mask'].sum())
    maps = jax.device_get(run(variables, batch['image']))
    for i in range(real):
      image = os.path.splitext(os.path.basename(paths[seen + i]))[0]
      for layer in layers:
        fmap = np.asarray(maps[layer][i], np.float32)
        name = FEATURE_MAPS_PNG.format(layer=layer.replace('/', '.'), image=image)
        written.append(
            plots.channel_grid(
                fmap,
                os.path.join(workdir, name),
                f'{layer} of {os.path.basename(paths[seen + i])}: {fmap.shape[-1]} channels '
                f'{fmap.shape[0]}x{fmap.shape[1]}'
                f'{", after ReLU" if activation == "relu" else ""} (step {step})',
            )
        )
    seen += real
  logging.info('wrote %s', ', '.join(written))
  return written


def first_conv_kernel(exp, params):
  """(layer, kernel [k, k, C_in, C_out]) of the first convolution the model calls."""
  flat = traverse_util.flatten_dict(params)
  for layer, _ in summary.layer_outputs(exp.model, _abstract_variables(exp), _input_shape(exp)):
    kernel = flat.get(tuple(layer.split('/')) + ('kernel',))
    if kernel is not None and kernel.ndim == 4:
      return layer, kernel
  raise ConfigError(f'The model {exp.config.model.name!r} has no convolution to show.')


def write_filters(config, workdir: str, step: Optional[int] = None) -> str:
  """The first convolution's kernels as RGB (or grey) tiles, each scaled to its own range."""
  exp = experiment.build(config, workdir, read_only=True, roles=())
  state, step = inference_state(exp, step)
  layer, kernel = first_conv_kernel(exp, jax.device_get(inference_variables(state)['params']))
  k, _, channels_in, count = kernel.shape
  if channels_in not in (1, 3):
    raise ConfigError(
        f'The first convolution {layer!r} reads {channels_in} channels; only '
        'RGB or grey kernels can be shown as pictures.'
    )
  path = plots.kernel_tiles(
      np.asarray(kernel, np.float32),
      os.path.join(workdir, FILTERS_PNG),
      f'{layer}: {count} kernels {k}x{k} (step {step})',
  )
  logging.info('wrote %s', path)
  return path
