"""What a run prints at start: devices, library versions, and the model summary."""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from catsdogs_jax.optimizers import is_frozen

LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu', 'ml-collections',
             'numpy', 'tensorflow-cpu', 'tensorflow', 'tensorflow-datasets')


def environment() -> str:
  versions = []
  for name in LIBRARIES:
    try:
      versions.append(f'{name} {importlib.metadata.version(name)}')
    except importlib.metadata.PackageNotFoundError:
      pass
  devices = ', '.join(f'{d.platform}:{d.id}' for d in jax.devices())
  return (f'processes: {jax.process_count()} (this is {jax.process_index()}), '
          f'devices: {jax.device_count()} [{devices}]\nversions: {", ".join(versions)}')


def layer_outputs(model, variables, input_shape):
  """[(layer path, output shape)] of every leaf module in call order, computed without running it.

  Layers are Flax modules (convolutions, dense, BatchNorm, dropout...); pooling
  and activations are functions, not layers, so they have no row.
  """
  called = []

  def record(module, method_name):
    if method_name != '__call__':
      return False
    called.append(tuple(module.scope.path))
    return True

  def run(v, x):
    return model.apply(v, x, train=False, capture_intermediates=record, mutable=['intermediates'])

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  _, captured = jax.eval_shape(run, {k: v for k, v in variables.items() if k != 'intermediates'},
                               x)
  captured = traverse_util.flatten_dict(captured['intermediates'])
  order = list(dict.fromkeys(called))
  parents = {path[:i] for path in order for i in range(len(path))}
  rows = []
  for path in order:
    if path in parents:
      continue   # a block: its layers have rows of their own
    out = jax.tree.leaves(captured[path + ('__call__',)])[0]
    rows.append(('/'.join(path), (None, *out.shape[1:])))
  return rows


def model_summary(model, variables, input_shape, config=None) -> str:
  """Keras' model.summary(): layer, output shape, parameters; totals trainable / frozen."""
  params = traverse_util.flatten_dict(variables['params'])
  counts, totals = {}, {'trainable': 0, 'frozen': 0}
  for path, leaf in params.items():
    layer = '/'.join(path[:-1])
    counts[layer] = counts.get(layer, 0) + int(np.prod(leaf.shape))
    frozen = config is not None and is_frozen(path, config)
    totals['frozen' if frozen else 'trainable'] += int(np.prod(leaf.shape))
  stats = count_parameters(variables.get('batch_stats', {}))
  rows = [(layer, str(shape), counts.pop(layer, 0))
          for layer, shape in layer_outputs(model, variables, input_shape)]
  rows += [(layer, '?', n) for layer, n in counts.items()]   # a layer never called
  width = max([len(r[0]) for r in rows] + [12])
  shape_width = max([len(r[1]) for r in rows] + [12])
  line = '-' * (width + shape_width + 16)
  lines = [f'{"layer":<{width}}  {"output shape":<{shape_width}}  {"parameters":>12}', line]
  lines += [f'{name:<{width}}  {shape:<{shape_width}}  {n:>12,}' for name, shape, n in rows]
  total = totals['trainable'] + totals['frozen']
  lines += [line,
            f'total parameters: {total:,} (trainable {totals["trainable"]:,}, '
            f'frozen {totals["frozen"]:,}); BatchNorm statistics: {stats:,}'
            + (f' (Keras counts them as non-trainable: {total + stats:,} in all)' if stats else '')]
  return '\n'.join(lines)


def count_parameters(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def config_summary(config) -> str:
  """The summary of a config's model at its image size, without data, weights or a workdir."""
  from catsdogs_jax import models, validation
  from catsdogs_jax.train_state import abstract_variables
  validation.validate_config(config, num_devices=1)
  model = models.create_model(config)
  config = validation.resolve_train_from(config, model)
  shape = (config.image_size, config.image_size, config.channels)
  return (f'model {config.model.name} at {shape}\n' +
          model_summary(model, abstract_variables(model, shape), shape, config))


def hparams(config) -> dict:
  """The resolved config as flat scalars, for TensorBoard's HParams dashboard."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}
