"""Several processes (jax.distributed on 127.0.0.1, gloo CPU collectives), 2 simulated devices each.

Two processes x 2 devices train like one process x 4 devices fed the same global
batches; main.py writes one log and one set of checkpoints; SIGTERM to one process
stops both at the same step with a checkpoint; a killed process takes the other down
within the heartbeat timeout; each time both resume exactly; processes started
differently, or without a coordinator, fail with a message.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from catsdogs_jax.runtime import checkpointing, distributed
from catsdogs_jax.training import epoch_log

import inject_fault
from conftest import ROOT, make_image_folder, tiny_mlp_fields

MLP = os.path.join(ROOT, 'configs', 'mnist_mlp.py')
HEARTBEAT = 5  # seconds: how soon a dead process is noticed here
EPOCHS, STEPS_PER_EPOCH = 4, 3
VALIDATION_IMAGES = 9  # odd: 5 + 4 over two processes


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = make_image_folder(
      tmp_path_factory.mktemp('images'), counts=(('train', 24), ('validation', 10), ('test', 2))
  )
  os.remove(os.path.join(root, 'validation', 'dogs', 'dogs.4.jpg'))
  return root


def _flags(folder, workdir, **fields):
  fields = {**tiny_mlp_fields(folder), 'num_epochs': EPOCHS, 'model.dropout_rate': 0.3, **fields}
  return [
      f'--config={MLP}',
      f'--workdir={workdir}',
      f'--heartbeat_timeout={HEARTBEAT}',
      *(f'--config.{k}={v}' for k, v in fields.items()),
  ]


def _start(folder, workdir, per_process=((), ()), program='main.py', **fields):
  """Starts one process per entry of `per_process` (extra arguments of each); returns them.

  Each writes to its own temporary file, not a pipe: a pipe nobody reads while the test
  waits on the other process fills, blocks its writer, and both processes then hang.
  """
  port = distributed.free_port()
  env = dict(
      os.environ,
      XLA_FLAGS='--xla_force_host_platform_device_count=2',
      JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
      JAX_NUM_PROCESSES=str(len(per_process)),
      PYTHONFAULTHANDLER='1',  # SIGABRT (see _finish) prints every thread's stack
  )
  procs = []
  for i, extra in enumerate(per_process):
    log = tempfile.TemporaryFile('w+')
    proc = subprocess.Popen(
        [sys.executable, program, *_flags(folder, workdir, **fields), *extra],
        cwd=ROOT,
        env=dict(env, JAX_PROCESS_ID=str(i)),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log = log
    procs.append(proc)
  return procs


def _finish(procs, timeout=240):
  """The processes' exit codes and logs once they end; past `timeout`, their stacks fail the test."""
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 0))
  except subprocess.TimeoutExpired:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGABRT)
        p.wait(timeout=30)
    pytest.fail(
        f'still running after {timeout} s; stacks and logs:\n'
        + '\n-----\n'.join(log[-6000:] for log in _logs(procs))
    )
  return [p.returncode for p in procs], _logs(procs)


def _logs(procs):
  for p in procs:
    p.log.seek(0)
  return [p.log.read() for p in procs]


def test_two_processes_train_and_evaluate_like_one():
  out = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'layouts_{os.getpid()}.json')
  result = subprocess.run(
      [
          sys.executable,
          'benchmarks/multiprocess.py',
          '--layouts=1x4,2x2',
          f'--json={out}',
          f'--config={MLP}',
          '--config.data.image_size=8',
          '--config.data.channels=3',
          '--config.data.num_classes=2',
          '--config.batch_size=8',
          '--config.loss=softmax',
          '--config.data.preprocess=rescale',
          '--config.model.dropout_rate=0.3',
          '--steps=3',
          '--warmup=1',
          '--eval_examples=13',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    layouts = json.load(f)
  one, two = layouts['1x4'], layouts['2x2']
  os.remove(out)
  assert (one['processes'], one['devices'], two['processes'], two['devices']) == (1, 4, 2, 4)
  np.testing.assert_allclose(two['losses'], one['losses'], rtol=1e-5)
  assert len(one['losses']) == 4 and one['losses'][0] != one['losses'][-1]  # it trained
  for key in ('params_sum', 'params_abs_sum', 'params_weighted'):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-5)
  assert one['eval']['num_images'] == two['eval']['num_images'] == 13
  np.testing.assert_allclose(two['eval']['loss'], one['eval']['loss'], rtol=1e-5)
  assert two['eval']['accuracy'] == one['eval']['accuracy']


@pytest.fixture(scope='module')
def two_process_run(folder, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('two') / 'run')
  codes, logs = _finish(_start(folder, workdir))
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  return workdir, logs


def test_main_writes_one_log_and_one_set_of_checkpoints(two_process_run):
  workdir, logs = two_process_run
  rows = epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))
  assert [int(r['step']) for r in rows] == [3, 6, 9, 12]
  # The last 3 (config.checkpoint.keep), nothing half-written.
  checkpoints = os.listdir(os.path.join(workdir, checkpointing.CHECKPOINTS_DIR))
  assert sorted(checkpoints) == ['12', '6', '9']
  assert len([f for f in os.listdir(workdir) if f.startswith('events.out')]) == 1
  assert not [f for f in os.listdir(workdir) if f.endswith('.tmp') or f == 'lock.json']
  for log in logs:  # every validation image counted once, over both processes
    assert log.count(f'({VALIDATION_IMAGES} images)') == EPOCHS
    assert 'process 1 of 2' in log or 'process 0 of 2' in log
  assert 'images/s | ETA' in logs[0] and 'images/s | ETA' not in logs[1]  # progress: process 0


def test_sigterm_then_kill_9_of_one_process_and_both_resume_exactly(
    folder, two_process_run, tmp_path
):
  workdir = str(tmp_path / 'run')
  faulty = lambda fault: _start(
      folder, workdir, per_process=((), (f'--fault={fault}',)), program='benchmarks/inject_fault.py'
  )
  # SIGTERM to process 1 after step 1: both stop at the next sync point (log step 2).
  codes, logs = _finish(faulty('term_step:1'))
  assert codes == [1, 1], logs[0][-2000:]
  assert 'SIGTERM received: stopped after step 2 (epoch 1, step 2 of 3)' in logs[1]
  assert 'A signal to another process (SIGTERM or SIGINT) received: stopped after step 2' in logs[0]
  assert checkpointing.saved_steps(workdir) == [2]

  # Resumed, process 1 is killed (kill -9) after its 3rd step: step 5, mid-epoch 2.
  procs = faulty('kill_step:3')
  procs[1].wait(timeout=240)
  died = time.monotonic()
  procs[0].wait(timeout=HEARTBEAT + 30)  # bounded: never a hang
  waited = time.monotonic() - died
  codes, logs = _finish(procs)
  assert codes[1] == -9 and codes[0] != 0, logs[0][-2000:]
  assert waited < HEARTBEAT + 20
  assert 'stopped sending heartbeats' in logs[0] or 'another task died' in logs[0], logs[0][-2000:]
  # Step 3's checkpoint is committed unless the kill came before its background save ended.
  newest = checkpointing.saved_steps(workdir)[-1]
  assert newest in (2, 3)

  codes, logs = _finish(_start(folder, workdir))  # both again: the same command
  assert codes == [0, 0], logs[0][-3000:]
  assert f'resuming from the checkpoint at step {newest}' in logs[0]
  assert inject_fault.same_outcome(
      inject_fault.outcome(workdir), inject_fault.outcome(two_process_run[0])
  )


def test_processes_with_different_configs_are_refused(folder, tmp_path):
  workdir = str(tmp_path / 'run')
  codes, logs = _finish(
      _start(folder, workdir, per_process=((), ('--config.optimizer.learning_rate=0.1',)))
  )
  assert codes == [1, 1]
  for log in logs:
    assert (
        'process 1 differs from process 0 in config.optimizer.learning_rate: 0.008 vs 0.1' in log
    ), log[-2000:]
  assert not os.path.exists(workdir)  # refused before anything was written


def test_unreachable_coordinator_is_named(tmp_path):
  port = distributed.free_port()
  result = subprocess.run(
      [
          sys.executable,
          'main.py',
          f'--config={MLP}',
          f'--workdir={tmp_path}/run',
          f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2',
          '--process_id=1',
          '--distributed_timeout=2',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 1
  assert f'could not reach the coordinator at 127.0.0.1:{port} within 2 s' in result.stderr
  assert 'firewall' in result.stderr


@pytest.mark.parametrize(
    'kwargs,expected',
    [
        ({'coordinator_address': '127.0.0.1:1234'}, '--num_processes, --process_id'),
        (
            {'coordinator_address': '127.0.0.1:1234', 'num_processes': 2, 'process_id': 2},
            '--process_id=2 must be in 0..1',
        ),
        (
            {'coordinator_address': 'host-without-port', 'num_processes': 2, 'process_id': 1},
            'is not HOST:PORT',
        ),
    ],
)
def test_incomplete_distributed_flags_are_refused(monkeypatch, kwargs, expected):
  for name in (
      distributed.ENV_COORDINATOR,
      distributed.ENV_NUM_PROCESSES,
      distributed.ENV_PROCESS_ID,
  ):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(distributed.DistributedError, match=expected):
    distributed.initialize(**kwargs)


def test_one_process_needs_no_flag(monkeypatch):
  for name in (
      distributed.ENV_COORDINATOR,
      distributed.ENV_NUM_PROCESSES,
      distributed.ENV_PROCESS_ID,
  ):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize() is False
