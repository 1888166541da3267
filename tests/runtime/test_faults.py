"""Faults: kill -9 at random points, SIGTERM mid-epoch, a second run, broken checkpoints, config changes.

Each faulty run is resumed to the end and must equal an uninterrupted run bit for
bit: final parameters and log.csv (timing columns aside).
"""

import errno
import os
import socket
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from catsdogs_jax.runtime import workdir_files
from catsdogs_jax.runtime.workdir_files import WorkdirError
from catsdogs_jax.training import epoch_log, train
from catsdogs_jax.training import metrics as metrics_lib

import inject_fault
from conftest import ROOT, override, tiny_config, tiny_mlp_config, tiny_mlp_fields

STEPS_PER_EPOCH, EPOCHS = 3, 4  # 24 training images, batch 8
FIELDS = {'num_epochs': EPOCHS, 'model.dropout_rate': 0.3, 'checkpoint.keep': 2}


def _overrides(folder):
  return {**tiny_mlp_fields(folder), **FIELDS}


def _run(folder, workdir, fault=None):
  return subprocess.run(
      inject_fault.command(
          os.path.join(ROOT, 'configs', 'mnist_mlp.py'), workdir, _overrides(folder), fault
      ),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )


def _assert_same(workdir, reference):
  params, rows = inject_fault.outcome(workdir)
  assert rows == reference[1]
  jax.tree.map(np.testing.assert_array_equal, params, reference[0])


@pytest.fixture(scope='module')
def reference(image_folder, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  result = _run(image_folder, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  outcome = inject_fault.outcome(workdir)
  assert len(outcome[1]) == EPOCHS
  return outcome


FAULTS = ('kill_step', 'kill_save', 'kill_eval')
LIMITS = {'kill_step': STEPS_PER_EPOCH * EPOCHS, 'kill_save': EPOCHS, 'kill_eval': EPOCHS}


# One of each kind here (benchmarks/inject_fault.py runs many more).
@pytest.mark.parametrize('seed', range(len(FAULTS)))
def test_kill_9_at_a_random_point_then_resume_equals_the_uninterrupted_run(
    seed, image_folder, tmp_path, reference
):
  rng = np.random.default_rng(seed)
  kind = FAULTS[seed % len(FAULTS)]
  fault = f'{kind}:{rng.integers(1, LIMITS[kind] + 1)}'
  workdir = str(tmp_path / 'run')
  killed = _run(image_folder, workdir, fault)
  assert killed.returncode == -9, (fault, killed.stderr[-2000:])
  resumed = _run(image_folder, workdir)
  assert resumed.returncode == 0, (fault, resumed.stderr[-3000:])
  assert 'Taking over the lock' in resumed.stderr  # the killed run's lock was stale
  _assert_same(workdir, reference)
  assert not os.path.exists(os.path.join(workdir, workdir_files.LOCK_FILE))


def test_sigterm_mid_epoch_checkpoints_that_step_and_resumes_exactly(
    image_folder, tmp_path, reference
):
  workdir = str(tmp_path / 'run')
  stopped = _run(image_folder, workdir, 'term_step:4')
  assert stopped.returncode == 1
  assert (
      'SIGTERM received: stopped after step 4 (epoch 2, step 1 of 3) with a checkpoint in'
      in stopped.stderr
  ), stopped.stderr[-3000:]
  assert 'Run the same command again to resume' in stopped.stderr
  assert '4' in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert len(epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))) == 1
  resumed = _run(image_folder, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resuming from the checkpoint at step 4' in resumed.stderr
  _assert_same(workdir, reference)


# ----------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_locked_workdir_refuses_and_a_stale_lock_is_taken_over(
    image_folder, tmp_path, caplog
):
  config = tiny_mlp_config(image_folder)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  lock = workdir / workdir_files.LOCK_FILE
  lock.write_text(f'{{"host": "{socket.gethostname()}", "pid": {os.getpid()}, "since": "now"}}')
  with pytest.raises(
      WorkdirError,
      match=f'in use by process {os.getpid()} on {socket.gethostname()}.*one run per workdir',
  ):
    train.train_and_evaluate(config, str(workdir))
  assert os.listdir(workdir) == [workdir_files.LOCK_FILE]  # nothing written, lock kept

  dead = subprocess.Popen(['true'])  # a process id that no longer runs
  dead.wait()
  lock.write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}, "since": "then"}}')
  train.train_and_evaluate(config, str(workdir))
  assert (
      f'process {dead.pid} on {socket.gethostname()} that held it is no longer running'
      in caplog.text
  )
  assert not lock.exists() and (workdir / epoch_log.LOG_CSV).exists()


# ----------------------------------------------------------------- config changes on resume


def test_config_changes_on_resume_are_reported_or_refused(image_folder, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  config = tiny_mlp_config(image_folder)
  train.train_and_evaluate(config, workdir)
  more = override(
      config.copy_and_resolve_references(), **{'num_epochs': 2, 'model.dropout_rate': 0.2}
  )
  history = train.train_and_evaluate(more, workdir)
  assert len(history.epochs) == 2
  assert 'model.dropout_rate: 0.0 -> 0.2; num_epochs: 1 -> 2' in caplog.text
  for fields, differing in [
      ({'optimizer.name': 'adam'}, 'optimizer.name'),
      ({'data.image_size': 20}, 'data.image_size'),
      ({'optimizer.momentum': 0.9, 'seed': 3}, 'optimizer.momentum'),
  ]:
    changed = override(more.copy_and_resolve_references(), **fields)
    with pytest.raises(
        WorkdirError,
        match=rf'change the parameters or optimizer state '
        rf'\({differing}\).*new --workdir.*init_from',
    ):
      train.train_and_evaluate(changed, workdir)


# ----------------------------------------------------------------- damaged checkpoints


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def test_a_truncated_checkpoint_is_skipped_and_none_restoring_is_an_error(
    image_folder, tmp_path, caplog
):
  workdir = str(tmp_path / 'run')
  config = tiny_mlp_config(image_folder, num_epochs=2)
  train.train_and_evaluate(config, workdir)
  damaged = _largest_file(os.path.join(workdir, 'checkpoints', '6', 'state'))
  with open(damaged, 'r+b') as f:
    f.truncate(os.path.getsize(damaged) // 2)
  history = train.train_and_evaluate(override(config, num_epochs=3), workdir)
  assert 'The checkpoint at step 6' in caplog.text and 'does not restore' in caplog.text
  assert [row['step'] for row in history.epochs] == [3, 6, 9]  # epoch 2 trained again
  # The damaged one is kept aside, and step 6 was written anew.
  assert [n.split('.')[0] for n in os.listdir(os.path.join(workdir, 'checkpoints_damaged'))] == [
      '6'
  ]
  _ = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', '6', 'state'))

  for step in os.listdir(os.path.join(workdir, 'checkpoints')):
    path = _largest_file(os.path.join(workdir, 'checkpoints', step, 'state'))
    with open(path, 'r+b') as f:
      f.truncate(16)
  with pytest.raises(
      WorkdirError, match='(?s)No checkpoint in .* restores.*step 3.*Nothing was changed'
  ):
    train.train_and_evaluate(override(config, num_epochs=4), workdir)


# ----------------------------------------------------------------- non-finite loss


def test_skipped_step_runs_merge_like_counting_them_one_by_one():
  rng = np.random.default_rng(0)
  for _ in range(20):
    flags = rng.integers(0, 2, rng.integers(1, 12))
    parts = [metrics_lib.SkippedSteps.from_model_output(skipped=bool(f)) for f in flags]
    parts.insert(rng.integers(0, len(parts) + 1), metrics_lib.SkippedSteps.empty())
    while len(parts) > 1:  # merge neighbours in a random order, as any split of an epoch would
      i = rng.integers(0, len(parts) - 1)
      parts[i : i + 2] = [parts[i].merge(parts[i + 1])]
    got = jax.tree.map(int, parts[0].compute())
    runs = [len(r) for r in ''.join(map(str, flags)).split('0')]
    assert got == {
        'total': int(flags.sum()),
        'leading': runs[0],
        'trailing': runs[-1],
        'longest': max(runs),
        'every': int(flags.all()),
    }, flags


def _diverging(folder, **fields):
  return tiny_config(
      folder,
      num_epochs=4,
      log_every_steps=2,
      **{'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e3, **fields},
  )


def test_non_finite_loss_stops_within_a_log_interval_and_earlier_checkpoints_restore(
    image_folder, tmp_path
):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(
      tiny_config(image_folder, **{'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e-2}),
      workdir,
  )
  with pytest.raises(
      train.NonFiniteLossError,
      match=r'Non-finite loss or gradients before step 6 \(epoch 2, learning '
      r'rate 1e\+03\).*lr_find.*Earlier checkpoints are kept',
  ):
    train.train_and_evaluate(_diverging(image_folder), workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['3']
  params = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', '3', 'state'))[
      'params'
  ]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_skip_policy_skips_counts_and_stops_after_too_many_in_a_row(image_folder, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(
      tiny_config(image_folder, **{'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e-2}),
      workdir,
  )
  with pytest.raises(
      train.NonFiniteLossError, match=r'^3 steps in a row .* skipped \(config.max_skipped_steps=3\)'
  ):
    train.train_and_evaluate(
        _diverging(image_folder, nan_policy='skip', max_skipped_steps=3), workdir
    )
  rows = epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))
  assert [r['skipped_steps'] for r in rows] == ['0', '1']
  assert np.isfinite(float(rows[1]['loss']))  # the skipped step's loss is left out


# ----------------------------------------------------------------- full disk, unwritable workdir


def test_enospc_while_saving_is_clear_and_the_previous_checkpoint_resumes(
    image_folder, tmp_path, monkeypatch
):
  save = ocp.CheckpointManager.save

  def full_disk_at_step_6(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk_at_step_6)
  workdir = str(tmp_path / 'run')
  config = tiny_mlp_config(image_folder, num_epochs=2)
  with pytest.raises(
      WorkdirError,
      match=r'disk holding .* is full \(.* MiB free of .* MiB\).*'
      r'checkpoint at step 3 is intact',
  ):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  history = train.train_and_evaluate(config, workdir)
  assert [row['step'] for row in history.epochs] == [3, 6]


def test_a_really_full_file_system(image_folder, tmp_path):
  mount = tmp_path / 'small_disk'
  mount.mkdir()
  if subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=5m', 'tmpfs', str(mount)], capture_output=True
  ).returncode:
    pytest.skip('mounting a small tmpfs needs root')
  try:
    workdir = str(mount / 'run')
    # Each checkpoint of this MLP takes about 3 MiB: the second one cannot fit.
    config = tiny_mlp_config(image_folder, num_epochs=3, **{'checkpoint.keep': 1})
    with pytest.raises(WorkdirError, match=r'is full .*checkpoint at step 3 is intact'):
      train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
    subprocess.run(['mount', '-o', 'remount,size=20m', str(mount)], check=True)
    history = train.train_and_evaluate(config, workdir)
    assert [row['step'] for row in history.epochs] == [3, 6, 9]
  finally:
    subprocess.run(['umount', '-l', str(mount)])  # lazy: open handles must not keep it


def test_an_unwritable_workdir_is_refused_before_training(image_folder, tmp_path):
  (tmp_path / 'a_file').write_text('')
  # Before the data is read: the missing dataset folder would be the error otherwise.
  with pytest.raises(WorkdirError, match=r"--workdir='.*a_file/run' cannot be a folder: .*a_file"):
    train.train_and_evaluate(
        tiny_mlp_config(str(tmp_path / 'no_data')), str(tmp_path / 'a_file' / 'run')
    )
