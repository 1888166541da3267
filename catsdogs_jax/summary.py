"""What a run prints at start: devices, library versions, and the parameter table."""

import importlib.metadata

import jax
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


def parameter_table(params, batch_stats=None, config=None) -> str:
  """Parameters per layer (module path), with trainable / frozen / statistics totals."""
  rows, totals = {}, {'trainable': 0, 'frozen': 0}
  for path, leaf in traverse_util.flatten_dict(params).items():
    layer = '/'.join(path[:-1])
    count = int(np.prod(leaf.shape))
    shapes, n = rows.get(layer, ([], 0))
    rows[layer] = (shapes + [f'{path[-1]}{tuple(leaf.shape)}'], n + count)
    totals['frozen' if config is not None and is_frozen(path, config) else 'trainable'] += count
  stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(batch_stats or {}))
  width = max([len(k) for k in rows] + [5])
  lines = [f'{"layer":<{width}}  {"parameters":>12}  shapes', '-' * (width + 40)]
  lines += [f'{layer:<{width}}  {n:>12,}  {" ".join(shapes)}' for layer, (shapes, n) in rows.items()]
  total = totals['trainable'] + totals['frozen']
  lines += ['-' * (width + 40),
            f'total parameters: {total:,} (trainable {totals["trainable"]:,}, '
            f'frozen {totals["frozen"]:,}); BatchNorm statistics: {stats:,}']
  return '\n'.join(lines)


def count_parameters(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
