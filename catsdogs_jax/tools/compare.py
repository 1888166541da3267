"""Compare runs: one row per variant (seeds as mean ± std) from each run's log.csv and test results.

A workdir given to compare is either one run (it holds log.csv) or a sweep
variant whose runs are its sub-folders (`seed_0`, `seed_1`, ...). The test result
is eval_test.json (eval_test_flip.json for runs with config.eval_flip); results on
other data (eval_test@NAME.json: `python -m catsdogs_jax.tools.shifted`, or your
own photos) become columns `test_accuracy@NAME` beside it.
"""

import csv
import glob
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from absl import logging
from flax import traverse_util

from catsdogs_jax.runtime import checkpointing, workdir_files
from catsdogs_jax.tools import plots
from catsdogs_jax.tools.evaluate import result_file
from catsdogs_jax.tools.sweep import VARIANT_JSON
from catsdogs_jax.training import epoch_log

COMPARE_CSV, COMPARE_MD, COMPARE_PNG = 'compare.csv', 'compare.md', 'compare.png'
STATS = ('best_val_accuracy', 'final_val_accuracy', 'test_accuracy')
COLUMNS = (
    'variant',
    'overrides',
    'differs',  # the config fields that differ between the compared variants, with this one's values
    'seeds',
    *(f'{s}_{m}' for s in STATS for m in ('mean', 'std')),
    'epochs',
    'wall_time_s',
    'images_per_second',
    'stale_tests',  # eval_test.json that no longer describes the best checkpoint: re-evaluate
)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def find_runs(patterns: Sequence[str]) -> Dict[str, List[str]]:
  """Variant folder -> its run folders, from workdirs or globs (a run, or a folder of seed runs)."""
  variants = {}
  for pattern in patterns:
    pattern = os.path.expanduser(pattern)
    matches = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
    if not matches and not glob.has_magic(pattern):
      raise FileNotFoundError(f'{pattern!r} is not a folder (a run, or a folder of runs).')
    for workdir in matches:
      if os.path.exists(os.path.join(workdir, epoch_log.LOG_CSV)):
        runs = [workdir]
      else:
        runs = sorted(
            os.path.dirname(p) for p in glob.glob(os.path.join(workdir, '*', epoch_log.LOG_CSV))
        )
      if runs:
        variants[os.path.normpath(workdir)] = runs
  if not variants:
    raise FileNotFoundError(f'No run with a {epoch_log.LOG_CSV} in {", ".join(patterns)}.')
  return variants


def _stale(workdir: str, config, test: Optional[Dict[str, Any]]) -> str:
  """Why eval_test.json no longer describes the run's best checkpoint ('' when it does)."""
  if not test or config is None:
    return ''
  best = checkpointing.Checkpoints(workdir, config, read_only=True).best_step()
  if best is not None and test.get('step') != best:
    return f'test of step {test.get("step")}, best checkpoint now step {best}'
  if test.get('run_config_hash', '') != workdir_files.run_config_hash(workdir):
    return 'test from before config.json changed'
  return ''


def run_summary(workdir: str) -> Dict[str, Any]:
  """The numbers of one run, straight from its log.csv, eval_test.json and config.json."""
  rows = [
      {k: float(v) for k, v in r.items()}
      for r in epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))
  ]
  variant = _read_json(os.path.join(workdir, VARIANT_JSON)) or {}
  try:
    config = workdir_files.read_run_config(workdir)
  except workdir_files.WorkdirError:
    config = None  # written by other code: compared by its numbers only
  flip = bool(config is not None and config.eval_flip)
  test = _read_json(os.path.join(workdir, result_file('test', flip)))
  other_data = {}  # NAME -> accuracy on eval_test@NAME
  pattern = re.escape(result_file('test', flip, 'TAG')).replace('TAG', '(.+)')
  for name in sorted(os.listdir(workdir)):
    match = re.fullmatch(pattern, name)
    if match and (flip or not match.group(1).endswith('_flip')):  # not the flipped results
      other_data[match.group(1)] = _read_json(os.path.join(workdir, name))['accuracy']
  return {
      'workdir': workdir,
      'config': traverse_util.flatten_dict(config.to_dict(), sep='.') if config else {},
      'stale': _stale(workdir, config, test),
      'overrides': variant.get('overrides', {}),
      'val_accuracy': [r['val_accuracy'] for r in rows],
      'best_val_accuracy': max(r['val_accuracy'] for r in rows),
      'final_val_accuracy': rows[-1]['val_accuracy'],
      'test_accuracy': test['accuracy'] if test else None,
      'other_data': other_data,
      'epochs': len(rows),
      'wall_time_s': sum(r['seconds'] for r in rows),
      'images_per_second': float(np.mean([r['images_per_second'] for r in rows])),
  }


def _mean_std(values) -> tuple:
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  # The sample standard deviation (n - 1): seeds are a sample of all seeds; none for one.
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def differing_fields(variants: Dict[str, List[Dict[str, Any]]]) -> List[str]:
  """Config fields whose values differ between the variants (seeds aside), sorted."""
  configs = [runs[0]['config'] for runs in variants.values()]
  keys = set().union(*configs) - {'seed'}
  return sorted(k for k in keys if len({repr(c.get(k)) for c in configs}) > 1)


def variant_row(
    name: str, runs: List[Dict[str, Any]], differ: Sequence[str] = ()
) -> Dict[str, Any]:
  stale = [r['stale'] for r in runs if r['stale']]
  row = {
      'variant': name,
      'overrides': json.dumps(runs[0]['overrides'], sort_keys=True),
      'differs': ', '.join(f'{k}={runs[0]["config"].get(k)!r}' for k in differ),
      'seeds': len(runs),
      'stale_tests': '; '.join(stale),
  }
  for stat in STATS:
    row[f'{stat}_mean'], row[f'{stat}_std'] = _mean_std(r[stat] for r in runs)
  for tag in sorted(set().union(*(r['other_data'] for r in runs))):
    stat = f'test_accuracy@{tag}'
    row[f'{stat}_mean'], row[f'{stat}_std'] = _mean_std(r['other_data'].get(tag) for r in runs)
  row['epochs'] = int(np.mean([r['epochs'] for r in runs]))
  row['wall_time_s'] = float(np.mean([r['wall_time_s'] for r in runs]))
  row['images_per_second'] = float(np.mean([r['images_per_second'] for r in runs]))
  return row


def _pm(mean, std) -> str:
  if mean is None:
    return '-'
  return f'{mean:.4f}' if std is None else f'{mean:.4f} ± {std:.4f}'


def other_data_tags(rows: List[Dict[str, Any]]) -> List[str]:
  """The NAMEs of test_accuracy@NAME columns any row has, sorted."""
  prefix, suffix = 'test_accuracy@', '_mean'
  return sorted(
      {
          k[len(prefix) : -len(suffix)]
          for r in rows
          for k in r
          if k.startswith(prefix) and k.endswith(suffix)
      }
  )


def markdown(rows: List[Dict[str, Any]]) -> str:
  tags = other_data_tags(rows)
  lines = [
      '| variant | overrides | differs | seeds | best val acc | final val acc | test acc | '
      + ''.join(f'test acc ({tag}) | ' for tag in tags)
      + 'epochs | wall time / run | images/s |',
      '|' + '---|' * (10 + len(tags)),
  ]
  for r in rows:
    test = _pm(r['test_accuracy_mean'], r['test_accuracy_std'])
    if r['stale_tests']:
      test += ' (stale: re-run --mode=evaluate)'
    other = ''.join(
        f'{_pm(r.get(f"test_accuracy@{t}_mean"), r.get(f"test_accuracy@{t}_std"))} | ' for t in tags
    )
    lines.append(
        f'| {r["variant"]} | `{r["overrides"]}` | {r["differs"] or "-"} | {r["seeds"]} | '
        f'{_pm(r["best_val_accuracy_mean"], r["best_val_accuracy_std"])} | '
        f'{_pm(r["final_val_accuracy_mean"], r["final_val_accuracy_std"])} | '
        f'{test} | {other}{r["epochs"]} | '
        f'{r["wall_time_s"] / 60:.1f} min | {r["images_per_second"]:.1f} |'
    )
  return '\n'.join(lines) + '\n'


def compare(patterns: Sequence[str], out_dir: Optional[str] = None) -> tuple:
  """Writes compare.csv, compare.md and compare.png; returns (rows, the folder written to).

  By default the folder is the one the compared workdirs share (a sweep's workdir).
  """
  found = find_runs(patterns)
  if out_dir is None:
    out_dir = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in found])
  variants = {
      os.path.basename(folder): [run_summary(w) for w in runs] for folder, runs in found.items()
  }
  differ = differing_fields(variants)
  rows = [variant_row(name, runs, differ) for name, runs in variants.items()]
  for row in rows:
    if row['stale_tests']:
      logging.warning('%s: %s', row['variant'], row['stale_tests'])
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, COMPARE_CSV), 'w', newline='') as f:
    tags = other_data_tags(rows)
    columns = [*COLUMNS[: COLUMNS.index('epochs')]]
    columns += [f'test_accuracy@{t}_{m}' for t in tags for m in ('mean', 'std')]
    columns += COLUMNS[COLUMNS.index('epochs') :]
    writer = csv.DictWriter(f, fieldnames=columns, restval='')
    writer.writeheader()
    writer.writerows(
        {k: ('' if v is None else epoch_log.csv_value(v)) for k, v in r.items()} for r in rows
    )
  with open(os.path.join(out_dir, COMPARE_MD), 'w') as f:
    f.write(markdown(rows))
  plots.validation_curves(
      {name: [r['val_accuracy'] for r in runs] for name, runs in variants.items()},
      os.path.join(out_dir, COMPARE_PNG),
  )
  return rows, out_dir
