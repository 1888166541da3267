"""Starting a model from converted weights or from another run (`config.init_from`).

The contract (after big_vision's `load(init_params, file, dont_load=...)`):
every parameter of the model is taken from the file, except those whose path
matches a `dont_load` pattern (they keep their fresh initialisation, e.g. a new
head); anything missing from the file, left over in it, or of another shape is
an error that lists it. Nothing is silently skipped.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from catsdogs_jax.models import matches_any, path_string
from catsdogs_jax.runtime import checkpointing, workdir_files
from catsdogs_jax.weights import pretrained
from catsdogs_jax.weights.converted import PARAMS_DIR, WEIGHTS_FILE, mismatch_lines


class WeightsError(ValueError):
  """Weights that cannot initialise this model; the message lists what differs."""


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
  """What `read` returns: host numpy trees and the weights' metadata (weights.json)."""

  params: Dict[str, Any]
  batch_stats: Dict[str, Any]  # {} for models without BatchNorm
  metadata: Dict[str, Any]  # model, source, file, preprocess, ...


def restore_numpy(path: str):
  """A saved pytree as host numpy arrays, whatever devices it was saved from."""
  checkpointer = ocp.PyTreeCheckpointer()
  with checkpointing.expected_orbax_warnings_left_out():
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def read(directory: str) -> LoadedWeights:
  """The weights of a converted-weights directory, a training workdir, or 'pretrained:NAME'
  (a published weight set, fetched and converted once into a cache)."""
  if directory.startswith(pretrained.PREFIX):
    directory = pretrained.fetch(directory[len(pretrained.PREFIX) :])
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.exists(directory):
    raise WeightsError(
        f'config.init_from={directory!r} does not exist. Name published weights instead '
        '(e.g. --config.init_from=pretrained:efficientnet_lite0; README, "Pretrained weights"), '
        'or convert a weight file with python -m catsdogs_jax.weights.convert.'
    )
  if os.path.exists(os.path.join(directory, WEIGHTS_FILE)):
    with open(os.path.join(directory, WEIGHTS_FILE)) as f:
      metadata = json.load(f)
    tree = restore_numpy(os.path.join(directory, PARAMS_DIR))
    return LoadedWeights(tree['params'], tree.get('batch_stats', {}), metadata)
  if os.path.isdir(os.path.join(directory, 'checkpoints')):
    run_config = workdir_files.read_run_config(directory)
    step = checkpointing.Checkpoints(directory, run_config, read_only=True).best_step()
    if step is None:
      raise WeightsError(f'config.init_from={directory!r} holds no checkpoint yet.')
    state = restore_numpy(
        os.path.join(directory, checkpointing.CHECKPOINTS_DIR, str(step), checkpointing.STATE)
    )
    # the moving average of the weights where the run kept one: what its validation chose the
    # checkpoint by and what its evaluation and predictions use
    averaged = bool(state.get('ema'))
    weights = state['ema'] if averaged else state
    metadata = {
        'model': run_config.model.name,
        'preprocess': run_config.data.preprocess,
        'adaptive_pool': run_config.model.adaptive_pool,
        'source': 'workdir',
        'file': directory,
        'step': int(step),
        'weights': 'moving average (config.ema)' if averaged else 'as trained',
    }
    return LoadedWeights(weights['params'], weights.get('batch_stats', {}), metadata)
  raise WeightsError(
      f'config.init_from={directory!r} is neither converted weights (no {WEIGHTS_FILE}; '
      'see python -m catsdogs_jax.weights.convert) nor a training workdir (no checkpoints/).'
  )


def merge(init_tree, loaded_tree, dont_load: Sequence[str] = (), what: str = 'parameters'):
  """`init_tree` with every leaf taken from `loaded_tree`, except `dont_load` matches."""
  init, loaded = traverse_util.flatten_dict(init_tree), traverse_util.flatten_dict(loaded_tree)
  missing = [k for k in init if k not in loaded and not matches_any(k, dont_load)]
  extra = [k for k in loaded if k not in init and not matches_any(k, dont_load)]
  wrong = [
      k
      for k in init
      if k in loaded
      and not matches_any(k, dont_load)
      and tuple(np.shape(loaded[k])) != tuple(init[k].shape)
  ]
  if missing or extra or wrong:
    lines = [f'The {what} to load do not match the model (dont_load: {list(dont_load)}):']
    lines += mismatch_lines(
        [path_string(k) for k in missing],
        [path_string(k) for k in extra],
        [
            f'{path_string(k)} file {tuple(np.shape(loaded[k]))} model {tuple(init[k].shape)}'
            for k in wrong
        ],
    )
    lines.append(
        '  Add the differing layers to config.dont_load to keep them freshly '
        'initialised, or use a config whose model matches the weights.'
    )
    raise WeightsError('\n'.join(lines))
  merged = {
      k: (v if matches_any(k, dont_load) else np.asarray(loaded[k], v.dtype))
      for k, v in init.items()
  }
  return traverse_util.unflatten_dict(merged)


def merge_variables(
    variables: Dict[str, Any], loaded: LoadedWeights, dont_load: Sequence[str] = ()
) -> Dict[str, Any]:
  """A model's variables ({'params'} and any 'batch_stats'; initialised or abstract), every leaf
  taken from `loaded` but `dont_load` matches (as `merge`, which names what differs)."""
  merged = {'params': merge(variables['params'], loaded.params, dont_load)}
  if variables.get('batch_stats'):
    merged['batch_stats'] = merge(
        variables['batch_stats'], loaded.batch_stats, dont_load, what='BatchNorm statistics'
    )
  return merged
