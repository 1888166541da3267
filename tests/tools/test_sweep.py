"""Sweeps from the command line's building blocks, and the comparison of their runs."""

import csv
import json
import os

import numpy as np
import pytest

from catsdogs_jax.tools import compare, sweep
from catsdogs_jax.training import epoch_log, train
from catsdogs_jax.training.config_checks import ConfigError

from conftest import override, tiny_mlp_config

VARIANTS = [{}, {'optimizer.learning_rate': 0.02}, {'model.dropout_rate': 0.5}]


def _snapshot(root):
  """Modification times of every file under root (a re-run must not touch any)."""
  return {
      os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
      for d, _, files in os.walk(root)
      for f in files
  }


def test_sweep_trains_each_variant_and_seed_once_and_compare_reads_their_logs(
    image_folder, tmp_path
):
  config = tiny_mlp_config(image_folder, num_epochs=2)
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(config, VARIANTS, num_seeds=2, workdir=workdir)
  assert [(r.variant, r.seed) for r in runs] == [
      ('baseline', 0),
      ('baseline', 1),
      ('optimizer.learning_rate=0.02', 0),
      ('optimizer.learning_rate=0.02', 1),
      ('model.dropout_rate=0.5', 0),
      ('model.dropout_rate=0.5', 1),
  ]
  assert runs[3].config.optimizer.learning_rate == 0.02 and runs[3].config.seed == 1
  assert len(sweep.run_sweep(runs)) == 6
  for run in runs:
    assert len(epoch_log.read_csv(os.path.join(run.workdir, epoch_log.LOG_CSV))) == 2
  before = _snapshot(workdir)
  assert sweep.run_sweep(runs) == []  # nothing retrains, nothing is re-evaluated
  assert _snapshot(workdir) == before

  rows, out = compare.compare([os.path.join(workdir, '*')])
  assert out == workdir
  with open(os.path.join(workdir, compare.COMPARE_CSV)) as f:
    table = {r['variant']: r for r in csv.DictReader(f)}
  assert set(table) == {'baseline', 'optimizer.learning_rate=0.02', 'model.dropout_rate=0.5'}
  for name in table:
    logs = [
        epoch_log.read_csv(os.path.join(workdir, name, f'seed_{s}', epoch_log.LOG_CSV))
        for s in (0, 1)
    ]
    best = [max(float(r['val_accuracy']) for r in log) for log in logs]
    final = [float(log[-1]['val_accuracy']) for log in logs]
    tests = []
    for s in (0, 1):
      with open(os.path.join(workdir, name, f'seed_{s}', 'eval_test.json')) as f:
        tests.append(json.load(f)['accuracy'])
    row = table[name]
    assert row['seeds'] == '2' and row['epochs'] == '2'
    assert float(row['best_val_accuracy_mean']) == pytest.approx(np.mean(best))
    assert float(row['best_val_accuracy_std']) == pytest.approx(np.std(best, ddof=1))
    assert float(row['final_val_accuracy_mean']) == pytest.approx(np.mean(final))
    assert float(row['test_accuracy_mean']) == pytest.approx(np.mean(tests))
    assert float(row['wall_time_s']) == pytest.approx(
        np.mean([sum(float(r['seconds']) for r in log) for log in logs])
    )
  assert json.loads(table['optimizer.learning_rate=0.02']['overrides']) == {
      'optimizer.learning_rate': 0.02
  }
  # The fields that tell the variants apart, read from each run's config.json.
  assert table['optimizer.learning_rate=0.02']['differs'] == (
      'model.dropout_rate=0.0, optimizer.learning_rate=0.02'
  )
  assert table['baseline']['differs'] == 'model.dropout_rate=0.0, optimizer.learning_rate=0.008'
  assert all(row['stale_tests'] == '' for row in table.values())
  with open(os.path.join(workdir, compare.COMPARE_MD)) as f:
    assert '| baseline | `{}` | model.dropout_rate=0.0, optimizer.learning_rate=0.008 | 2 |' in (
        f.read()
    )
  assert os.path.getsize(os.path.join(workdir, compare.COMPARE_PNG)) > 0

  # Trained further, a run's eval_test.json no longer describes its best checkpoint: marked.
  longer = override(runs[0].config.copy_and_resolve_references(), num_epochs=3)
  train.train_and_evaluate(longer, runs[0].workdir)
  rows, _ = compare.compare([os.path.join(workdir, '*')])
  stale = {r['variant']: r['stale_tests'] for r in rows}
  assert stale['baseline'].startswith('test of step') or 'config.json changed' in stale['baseline']
  assert stale['model.dropout_rate=0.5'] == ''
  assert '(stale: re-run --mode=evaluate)' in compare.markdown(rows)


@pytest.mark.parametrize(
    'variants,message',
    [
        (
            [{}, {'optimizer.learning_rat': 1e-3}],
            r"variant 'optimizer.learning_rat=0.001': the config has no field 'optimizer.learning_rat'",
        ),
        (
            [{}, {'augment.rotation_range': 'a lot'}],
            r"variant 'augment.rotation_range=a_lot'.*wrong type",
        ),
        (
            [{}, {'optimizer.name': 'adamw'}],
            r"variant 'optimizer.name=adamw': Unknown config.optimizer",
        ),
        ([{'batch_size': 8}, {}, {'batch_size': 8}], r'variants 0 and 2 are the same'),
        ([{'seed': 3}], r'--sweep_seeds'),
    ],
)
def test_a_bad_variant_fails_before_anything_trains(image_folder, tmp_path, variants, message):
  config = tiny_mlp_config(image_folder)
  with pytest.raises(ConfigError, match=message):
    sweep.plan(config, variants, num_seeds=2, workdir=str(tmp_path / 'sweep'))
  assert not os.path.exists(tmp_path / 'sweep')


def test_sweep_files_and_dry_run_commands(tmp_path, image_folder):
  path = tmp_path / 'bad.py'
  path.write_text('def get_sweep():\n  return {"a": 1}\n')
  with pytest.raises(ConfigError, match='list of dicts'):
    sweep.load_sweep(str(path))
  with pytest.raises(ConfigError, match='does not exist'):
    sweep.load_sweep(str(tmp_path / 'missing.py'))
  variants = sweep.load_sweep('configs/sweeps/augment_ablation.py')
  assert len(variants) == 8 and variants[0] == {}
  config = tiny_mlp_config(image_folder)
  runs = sweep.plan(config, variants[:2], num_seeds=1, workdir='runs/ab')
  cmds = sweep.commands(
      runs, 'configs/small_cnn_aug.py', {'data.image_size': 64, 'data.dataset': 'folder:my data'}
  )
  assert cmds[1] == (
      'python main.py --config=configs/small_cnn_aug.py '
      '--workdir=runs/ab/augment.rotation_range=0.0/seed_0 --config.data.image_size=64 '
      "--config.data.dataset='folder:my data' --config.augment.rotation_range=0.0 --config.seed=0 && "
      'python main.py --config=configs/small_cnn_aug.py '
      '--workdir=runs/ab/augment.rotation_range=0.0/seed_0 --config.data.image_size=64 '
      "--config.data.dataset='folder:my data' --config.augment.rotation_range=0.0 --config.seed=0 "
      '--mode=evaluate'
  )
