"""Sweeps: one config, a list of overrides (a sweep file) and several seeds, each run in its own workdir.

A sweep file is Python like the configs: `get_sweep()` returns a list of dicts
of dotted config fields, e.g. `[{}, {'augment.rotation_range': 0.0}]`. Every
variant is checked before the first one trains. Variant x seed trains into
`WORKDIR/<variant name>/seed_<seed>`, one after another, and is then evaluated
on the test split; a re-run skips finished runs and resumes the unfinished one.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shlex
from typing import Any, Dict, List, Sequence

from absl import logging

from catsdogs_jax.defaults import set_fields
from catsdogs_jax.models import create_model
from catsdogs_jax.training.config_checks import (
    ConfigError,
    check_image_size,
    resolve_train_from,
    validate_config,
)

VARIANT_JSON = 'variant.json'  # in each run: variant name, overrides, seed
DONE_JSON = 'done.json'  # in each run: written once trained and evaluated


@dataclasses.dataclass
class Run:
  variant: str
  overrides: Dict[str, Any]
  seed: int
  config: Any
  workdir: str


def load_sweep(path: str) -> List[Dict[str, Any]]:
  """The list of override dicts of a sweep file."""
  if not os.path.isfile(path):
    raise ConfigError(
        f'Sweep file {path!r} does not exist (e.g. configs/sweeps/augment_ablation.py).'
    )
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'Sweep file {path!r} has no get_sweep() returning a list of overrides.')
  variants = module.get_sweep()
  if (
      not isinstance(variants, (list, tuple))
      or not variants
      or not all(isinstance(v, dict) and all(isinstance(k, str) for k in v) for v in variants)
  ):
    raise ConfigError(
        f'get_sweep() of {path!r} must return a non-empty list of dicts '
        'from dotted config fields to values, e.g. [{"optimizer.learning_rate": 1e-3}].'
    )
  return list(variants)


def variant_name(overrides: Dict[str, Any]) -> str:
  """A folder name from the overrides: 'augment.zoom_range=0.0,batch_size=16'; {} is 'baseline'."""
  if not overrides:
    return 'baseline'
  parts = [f'{key}={value}' for key, value in sorted(overrides.items())]
  return ','.join(parts).replace(os.sep, '_').replace(' ', '_')


def apply_overrides(config, overrides: Dict[str, Any], variant: str):
  """A copy of `config` with the overrides; a missing field or wrong type names the variant."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    try:
      set_fields(config, {key: value})
    except (KeyError, AttributeError) as e:
      raise ConfigError(f'Sweep variant {variant!r}: the config has no field {key!r}.') from e
    except TypeError as e:
      raise ConfigError(
          f'Sweep variant {variant!r}: config.{key}={value!r} has the wrong type ({e}).'
      ) from e
  return config


def plan(config, variants: Sequence[Dict[str, Any]], num_seeds: int, workdir: str) -> List[Run]:
  """Every variant x seed, checked (fields, types, values, duplicates) before anything runs."""
  if num_seeds < 1:
    raise ConfigError(f'--sweep_seeds must be at least 1, got {num_seeds}.')
  runs, seen = [], {}
  for i, overrides in enumerate(variants):
    name = variant_name(overrides)
    if name in seen:
      raise ConfigError(f'Sweep variants {seen[name]} and {i} are the same ({name}).')
    seen[name] = i
    if 'seed' in overrides:
      raise ConfigError(f'Sweep variant {name!r} sets seed; use --sweep_seeds instead.')
    variant_config = apply_overrides(config, overrides, name)
    try:
      validate_config(variant_config)
      model = create_model(variant_config)
      check_image_size(variant_config, model)
      resolve_train_from(variant_config, model)
    except ConfigError as e:
      raise ConfigError(f'Sweep variant {name!r}: {e}') from e
    for s in range(num_seeds):
      seeded = variant_config.copy_and_resolve_references()
      seeded.seed = config.seed + s
      runs.append(
          Run(
              name,
              dict(overrides),
              seeded.seed,
              seeded,
              os.path.join(workdir, name, f'seed_{seeded.seed}'),
          )
      )
  return runs


def _flag_value(value) -> str:
  return shlex.quote(value if isinstance(value, str) else repr(value))


def commands(runs: Sequence[Run], config_file: str, command_line: Dict[str, Any]) -> List[str]:
  """The exact `main.py` command of each run (train, then evaluate), for array jobs."""
  out = []
  for run in runs:
    fields = {**command_line, **run.overrides, 'seed': run.seed}
    flags = ' '.join(f'--config.{k}={_flag_value(v)}' for k, v in fields.items())
    base = f'python main.py --config={shlex.quote(config_file)} --workdir={shlex.quote(run.workdir)} {flags}'
    out.append(f'{base} && {base} --mode=evaluate')
  return out


def _fingerprint(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()


def is_done(run: Run) -> bool:
  path = os.path.join(run.workdir, DONE_JSON)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get('config_sha256') == _fingerprint(run.config)


def run_sweep(runs: Sequence[Run]) -> List[Dict[str, Any]]:
  """Trains and test-evaluates every run not yet done, one after another."""
  from catsdogs_jax.tools import curves, evaluate
  from catsdogs_jax.training import train

  results = []
  for i, run in enumerate(runs, start=1):
    if is_done(run):
      logging.info(
          'sweep %d/%d: %s seed %d is finished; skipping', i, len(runs), run.variant, run.seed
      )
      continue
    logging.info('sweep %d/%d: %s seed %d in %s', i, len(runs), run.variant, run.seed, run.workdir)
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, VARIANT_JSON), 'w') as f:
      json.dump({'variant': run.variant, 'overrides': run.overrides, 'seed': run.seed}, f, indent=1)
    train.train_and_evaluate(run.config, run.workdir, hooks=[curves.WriteCurves()])
    result = evaluate.evaluate_checkpoint(run.config, run.workdir, 'test')
    with open(os.path.join(run.workdir, DONE_JSON), 'w') as f:
      json.dump(
          {'config_sha256': _fingerprint(run.config), 'test_accuracy': result['accuracy']},
          f,
          indent=1,
      )
    results.append(result)
  return results
