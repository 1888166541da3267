"""What a workdir holds besides its checkpoints: the lock, the run's config, its model's signature,
the classes and split sizes of the data it trained on.

One run per workdir (a lock naming host and process); a re-run with a changed
config is told what changed, and refused before restoring when the change
would alter the structure of the parameters or optimizer state.
"""

import hashlib
import json
import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional

import jax
from absl import logging
from flax import traverse_util

from catsdogs_jax import defaults
from catsdogs_jax.defaults import get_field, set_fields

MODEL_FILE = 'model.json'
CONFIG_FILE = 'config.json'
LOCK_FILE = 'lock.json'
DATASET_FILE = 'dataset.json'  # class names and split sizes of the training data


class WorkdirError(ValueError):
  """The workdir cannot be used for this config; the message says why."""


# --------------------------------------------------------------------------- lock


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's process
  try:  # a killed child its parent has not reaped yet is not running either
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(')')[-1].split()[0] != 'Z'
  except OSError:
    return True


def _read_lock(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None  # removed meanwhile, or half-written by a process that died writing it


class Lock:
  """Holds `workdir/lock.json` (host, pid, start time) until `release()`; process 0 only."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False
    if jax.process_index() != 0:
      return
    try:
      os.makedirs(workdir, exist_ok=True)
      probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
      open(probe, 'w').close()
      os.remove(probe)
    except OSError as e:
      raise WorkdirError(
          f'Cannot write to --workdir={workdir!r} ({e.strerror}: {e.filename}); '
          'choose a folder this user can write to.'
      ) from e
    me = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'since': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    while not self.held:
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        self._take_over_if_stale(workdir, me['host'])
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self.held = True

  def _take_over_if_stale(self, workdir: str, host: str):
    holder = _read_lock(self.path)
    if holder is not None and (holder.get('host') != host or _alive(holder.get('pid', -1))):
      raise WorkdirError(
          f'{workdir!r} is in use by process {holder.get("pid")} on {holder.get("host")} '
          f'(since {holder.get("since")}): one run per workdir. Wait for it or stop it, or use '
          f'another --workdir. If that process is gone, delete {self.path}.'
      )
    logging.warning(
        'Taking over the lock of %s: %s.',
        workdir,
        'its file was unreadable'
        if holder is None
        else f'process {holder["pid"]} on {host} that held it is no longer running',
    )
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def release(self):
    if self.held and (_read_lock(self.path) or {}).get('pid') == os.getpid():
      os.remove(self.path)
    self.held = False


def check_workdir_path(workdir: str):
  """Before any heavy work: a workdir that is a file (or under one) is refused at once."""
  path = os.path.abspath(workdir)
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  if path and not os.path.isdir(path):
    raise WorkdirError(
        f'--workdir={workdir!r} cannot be a folder: {path!r} is a file. Choose another --workdir.'
    )


# --------------------------------------------------------------------------- config
def write_run_config(workdir: str, config):
  """The resolved config of the run, for reproducing it and for `init_from`."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))


def run_config_hash(workdir: str) -> Optional[str]:
  """The SHA-256 (16 hex digits) of the workdir's config.json: results record it, so a result
  from before the run was changed or trained further can be told apart."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def read_run_config(workdir: str):
  """The config `workdir` was trained with: every field of today's defaults, the run's values set.

  Fields added since the run keep their defaults; JSON lists become tuples where
  the field is one. A field this code no longer has is an error that names it.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(
        f'{workdir!r} has no {CONFIG_FILE}, so it holds no run of this code: pass '
        '--config=FILE, or a --workdir that training wrote.'
    )
  config = defaults.get_config()
  saved = traverse_util.flatten_dict(_read_saved_config(path), sep='.')
  for key, value in saved.items():
    try:
      current = get_field(config, key)
      set_fields(config, {key: tuple(value) if isinstance(current, tuple) else value})
    except (KeyError, AttributeError, TypeError) as e:
      raise WorkdirError(
          f'{path} has field {key}={value!r}, which this version of the code cannot take '
          f'({type(e).__name__}: {e}); train again, or use the code that wrote it.'
      ) from None
  return config


def write_dataset_info(workdir: str, class_names, num_examples: Dict[str, int]):
  """The classes (in label order) and split sizes training read: after training, evaluation
  and prediction need no training split (e.g. a folder holding only test photos)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, DATASET_FILE), 'w') as f:
      json.dump({'class_names': list(class_names), 'num_examples': num_examples}, f, indent=1)


def read_dataset_info(workdir: str) -> Optional[Dict[str, Any]]:
  """{'class_names', 'num_examples'} as training wrote them; None for runs from before."""
  path = os.path.join(workdir, DATASET_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  return {'class_names': tuple(saved['class_names']), 'num_examples': saved['num_examples']}


def _read_saved_config(path: str) -> Dict[str, Any]:
  """A config.json as a dict, in today's layout, with every field added since at its default
  (each new field's default is the behaviour from before it, so the run had that value).

  Runs from before the data fields were grouped under `data` wrote them at the
  top level; they move there, so those workdirs resume and serve as init_from.
  """
  with open(path) as f:
    saved = json.load(f)
  today = defaults.get_config()
  if 'data' not in saved:
    saved['data'] = {k: saved.pop(k) for k in list(saved) if k in today.data.keys()}
  complete = traverse_util.flatten_dict(json.loads(today.to_json_best_effort()), sep='.')
  complete.update(traverse_util.flatten_dict(saved, sep='.'))
  return traverse_util.unflatten_dict(complete, sep='.')


def model_signature(config, abstract_params) -> Dict[str, Any]:
  """What identifies a model for resuming: its name and every parameter's shape."""
  shapes = {
      '/'.join(str(getattr(k, 'key', k)) for k in path): list(leaf.shape)
      for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }
  return {'model': config.model.name, 'parameters': shapes}


def check_model(workdir: str, signature: Dict[str, Any], write: bool = True):
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
          'trained it.'
      )
  elif write and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(signature, f, indent=1)


def differences(before: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, tuple]:
  """Dotted field -> (value before, value now) for the fields in which two nested dicts differ."""
  before, now = (traverse_util.flatten_dict(d, sep='.') for d in (before, now))
  return {
      k: (before.get(k), now.get(k))
      for k in sorted(set(before) | set(now))
      if before.get(k) != now.get(k)
  }


def config_differences(previous: Dict[str, Any], config) -> Dict[str, tuple]:
  """Dotted field -> (value in the workdir's config.json, value now), for fields that differ."""
  return differences(previous, json.loads(config.to_json_best_effort()))


def check_config_change(workdir: str, config, state_signature: Callable[[Any], Any]):
  """Reports how `config` differs from the one the workdir's checkpoints were trained with.

  A difference that changes `state_signature(config)` (the structure, shapes
  and dtypes of the train state) cannot resume: refused, naming the fields.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  differences = config_differences(_read_saved_config(path), config)
  if not differences:
    return
  now = state_signature(config)
  structural: List[str] = []
  for key, (old, new) in differences.items():
    try:
      # JSON holds tuples as lists: a list now means a tuple field.
      reverted = set_fields(
          config.copy_and_resolve_references(), {key: tuple(old) if isinstance(new, list) else old}
      )
      if state_signature(reverted) != now:
        structural.append(key)
    except (KeyError, AttributeError, TypeError, ValueError):
      structural.append(key)  # a field this code no longer has, or cannot take the old value
  listing = '; '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in differences.items())
  if structural:
    raise WorkdirError(
        f'The config differs from the one {workdir!r} was trained with in fields that change '
        f'the parameters or optimizer state ({", ".join(structural)}); its checkpoints cannot '
        f'resume with it. All differences: {listing}. Either train in a new --workdir, or '
        f"start from this run's weights with --config.init_from={workdir}."
    )
  logging.warning(
      'The config differs from the one %s was trained with (resuming with the new values): %s',
      workdir,
      listing,
  )


# Data fields that change neither which images a split holds nor how the model sees them.
_DATA_HANDLING_FIELDS = ('data.data_dir', 'data.download', 'data.verify_images', 'data.cache')


def check_after_training_config(workdir: str, config, overrides: Dict[str, Any]):
  """Refuses a config for an after-training mode that differs from the run's in its model or data.

  `overrides` (the command line's --config.FIELD values) may change data fields,
  e.g. to evaluate on other photos; never the model, the loss or the input form.
  """
  differ = config_differences(_read_saved_config(os.path.join(workdir, CONFIG_FILE)), config)
  refused = {
      key: values
      for key, values in differ.items()
      if key.startswith('model.')
      or key in ('loss', 'data.image_size', 'data.channels', 'data.num_classes', 'data.preprocess')
      or (key.startswith('data.') and key not in overrides and key not in _DATA_HANDLING_FIELDS)
  }
  if refused:
    listing = '; '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in refused.items())
    raise WorkdirError(
        f'The config differs from the one {workdir!r} was trained with in its model or data '
        f"({listing}). Leave out --config to use the run's own, or change data fields of it "
        f'with --config=configs/run.py:{workdir} --config.data.FIELD=VALUE.'
    )
  for key, (old, new) in differ.items():
    logging.info('%s: %r in the run, %r now', key, old, new)
