"""Orbax checkpoints of a workdir: the last N epochs plus the best, with the run's history.

Each checkpoint holds two items: `state` (the TrainState pytree) and `history`
(JSON: one row per finished epoch and why training stopped), so that log.csv,
early stopping and "already finished" are all restored with the weights.
"""

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from catsdogs_jax.callbacks import monitor_mode

STATE, HISTORY = 'state', 'history'
MODEL_FILE = 'model.json'
CONFIG_FILE = 'config.json'


class WorkdirError(ValueError):
  """The workdir cannot be used for this config; the message says why."""


def new_history() -> Dict[str, Any]:
  return {'epochs': [], 'stop_reason': None}


class Checkpoints:
  """The checkpoints of one workdir (`workdir/checkpoints/<step>`)."""

  def __init__(self, workdir: str, config, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    monitor = config.checkpoint.best_monitor
    mode = monitor_mode(monitor)
    best_fn = lambda metrics: metrics[monitor]
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=config.checkpoint.keep),
        policies.BestN(get_metric_fn=best_fn, reverse=(mode == 'min'), n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=mode, preservation_policy=policy,
        create=not read_only, read_only=read_only)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.workdir, 'checkpoints'), options=options,
        item_names=(STATE, HISTORY))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self.manager.best_step()

  def all_steps(self) -> List[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, history: Dict[str, Any], metrics: Dict[str, float]):
    self.manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), HISTORY: ocp.args.JsonSave(history)}),
        metrics=metrics)

  def restore(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any]]:
    """Restores `step` into the structure, dtypes and shardings of `abstract_state`."""
    restored = self.manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state), HISTORY: ocp.args.JsonRestore()}))
    return restored[STATE], restored[HISTORY]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def write_run_config(workdir: str, config):
  """The resolved config of the run, for reproducing it and for `init_from`."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))


def read_run_config(workdir: str):
  """The config a workdir was trained with, as a ConfigDict."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f'{workdir!r} has no {CONFIG_FILE}: it was not written by this code.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def model_signature(config, abstract_params) -> Dict[str, Any]:
  """What identifies a model for resuming: its name and every parameter's shape."""
  shapes = {'/'.join(str(getattr(k, 'key', k)) for k in path): list(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  return {'model': config.model.name, 'parameters': shapes}


def check_workdir_model(workdir: str, signature: Dict[str, Any], write: bool = True):
  """Fails before training when `workdir` holds checkpoints of another model."""
  path = os.path.join(workdir, MODEL_FILE)
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != signature:
      old, new = previous['parameters'], signature['parameters']
      differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise WorkdirError(
          f'Workdir {workdir!r} holds checkpoints of a different model '
          f'({previous["model"]!r}, now {signature["model"]!r}; {len(differ)} parameters '
          f'differ, e.g. {", ".join(differ[:3])}). Use a new --workdir, or the config that '
          'trained it.')
  elif write and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(signature, f, indent=1)
