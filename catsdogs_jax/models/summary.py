"""A model's layers, output shapes and parameter counts (Keras' `model.summary()`), without running it."""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


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
  _, captured = jax.eval_shape(run, {k: v for k, v in variables.items() if k != 'intermediates'}, x)
  captured = traverse_util.flatten_dict(captured['intermediates'])
  order = list(dict.fromkeys(called))
  parents = {path[:i] for path in order for i in range(len(path))}
  rows = []
  for path in order:
    if path in parents:
      continue  # a block: its layers have rows of their own
    out = jax.tree.leaves(captured[path + ('__call__',)])[0]
    rows.append(('/'.join(path), (None, *out.shape[1:])))
  return rows


def model_summary(
    model, variables, input_shape, frozen: Optional[Callable[[tuple], bool]] = None
) -> str:
  """Keras' model.summary(): layer, output shape, parameters; totals trainable / frozen.

  `frozen(path)`: whether a parameter (its path in the tree) is frozen; default none is.
  """
  params = traverse_util.flatten_dict(variables['params'])
  counts, totals = {}, {'trainable': 0, 'frozen': 0}
  for path, leaf in params.items():
    layer = '/'.join(path[:-1])
    counts[layer] = counts.get(layer, 0) + int(np.prod(leaf.shape))
    is_frozen = frozen is not None and frozen(path)
    totals['frozen' if is_frozen else 'trainable'] += int(np.prod(leaf.shape))
  stats = count_parameters(variables.get('batch_stats', {}))
  rows = [
      (layer, str(shape), counts.pop(layer, 0))
      for layer, shape in layer_outputs(model, variables, input_shape)
  ]
  rows += [(layer, '?', n) for layer, n in counts.items()]  # a layer never called
  width = max([len(r[0]) for r in rows] + [12])
  shape_width = max([len(r[1]) for r in rows] + [12])
  line = '-' * (width + shape_width + 16)
  lines = [f'{"layer":<{width}}  {"output shape":<{shape_width}}  {"parameters":>12}', line]
  lines += [f'{name:<{width}}  {shape:<{shape_width}}  {n:>12,}' for name, shape, n in rows]
  total = totals['trainable'] + totals['frozen']
  lines += [
      line,
      f'total parameters: {total:,} (trainable {totals["trainable"]:,}, '
      f'frozen {totals["frozen"]:,}); BatchNorm statistics: {stats:,}'
      + (f' (Keras counts them as non-trainable: {total + stats:,} in all)' if stats else ''),
  ]
  return '\n'.join(lines)


def count_parameters(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
