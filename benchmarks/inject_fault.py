"""Faults on purpose, to prove that training survives them (tests/runtime/test_faults.py and
benchmarks/fault_injection.py).

`python benchmarks/inject_fault.py --config=... --workdir=... --fault=KIND:N` trains
like `main.py` with one fault injected at the N-th occurrence of a point of the run:

- `kill_step:N`  SIGKILL (kill -9) right after train step N returns;
- `kill_save:N`  SIGKILL while the N-th checkpoint save is being written;
- `kill_eval:N`  SIGKILL in the middle of the N-th evaluation (after its first batch);
- `term_step:N`  SIGTERM after train step N (the run checkpoints that step and exits);
- `enospc_save:N` the N-th checkpoint save fails with "No space left on device" at the
  file-writing layer;
- `pause_step:N` sleeps 20 s after train step N (a slow run, for a second run to meet).

Faults enter through the train loop's hooks (`catsdogs_jax.training.train.Hook`);
the full disk below our code, in Orbax's save. A SIGKILL is real: the process
dies without any cleanup, as with `kill -9`.
With JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, it runs
as one of several processes (`catsdogs_jax.runtime.distributed`), e.g. to kill one of them.
"""

import errno
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ import each other (`from configs import default`)

FAULT_KINDS = ('kill_step', 'kill_save', 'kill_eval', 'term_step', 'enospc_save', 'pause_step')
PAUSE_SECONDS = 20

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir.')
flags.DEFINE_string('fault', None, 'KIND:N (see the module docstring); none: train normally.')
flags.DEFINE_integer(
    'heartbeat_timeout',
    100,
    'Several processes: seconds after which a silent one counts as dead.',
)


def command(
    config_file: str, workdir: str, overrides: Dict[str, Any], fault: Optional[str] = None
) -> List[str]:
  """The command line that trains `config_file` with `overrides` (and a fault) in a new process."""
  return [
      sys.executable,
      os.path.abspath(__file__),
      f'--config={config_file}',
      f'--workdir={workdir}',
      *(f'--config.{k}={v}' for k, v in overrides.items()),
      *([f'--fault={fault}'] if fault else []),
  ]


def outcome(workdir: str):
  """(parameters of the newest checkpoint, log.csv rows without timing columns) of a run."""
  from catsdogs_jax.runtime import checkpointing
  from catsdogs_jax.training import epoch_log
  from catsdogs_jax.weights import loading

  newest = checkpointing.saved_steps(workdir)[-1]
  state = loading.restore_numpy(
      os.path.join(workdir, checkpointing.CHECKPOINTS_DIR, str(newest), checkpointing.STATE)
  )
  rows = [
      {k: v for k, v in r.items() if k not in epoch_log.TIMING_COLUMNS}
      for r in epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))
  ]
  return state['params'], rows


def same_outcome(a, b) -> bool:
  """Bit-identical parameters and equal log rows."""
  import jax
  import numpy as np

  if a[1] != b[1] or jax.tree.structure(a[0]) != jax.tree.structure(b[0]):
    return False
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])))


def parse(fault: str):
  kind, _, count = fault.partition(':')
  if kind not in FAULT_KINDS or not count.isdigit() or int(count) < 1:
    raise ValueError(f'--fault={fault!r}: expected KIND:N with KIND in {FAULT_KINDS}, N >= 1.')
  return kind, int(count)


def _kill():
  os.kill(os.getpid(), signal.SIGKILL)


def _term():
  os.kill(os.getpid(), signal.SIGTERM)


def fault_hook(kind: str, at: int):
  """A train-loop hook that makes fault `kind` happen at occurrence `at` (see the docstring)."""
  from catsdogs_jax.training import train

  class Fault(train.Hook):

    def __init__(self):
      self.steps = self.saves = self.evals = 0

    def after_step(self, loop):
      self.steps += 1
      if self.steps == at:
        {
            'kill_step': _kill,
            'term_step': _term,
            'pause_step': lambda: time.sleep(PAUSE_SECONDS),
        }.get(kind, lambda: None)()

    def after_save(self, loop):
      # The save is asynchronous: killing right after it starts catches the write in flight.
      self.saves += 1
      if kind == 'kill_save' and self.saves == at:
        _kill()

    def after_eval_batch(self, loop, index):
      self.evals += index == 0
      if kind == 'kill_eval' and self.evals == at:
        _kill()  # in the middle of the evaluation: after its first batch

  return Fault()


def fail_saves_with_a_full_disk(at: int):
  """The `at`-th checkpoint save fails below our code, in Orbax, as a write to a full disk does."""
  import orbax.checkpoint as ocp

  save = ocp.CheckpointManager.save
  calls = [0]

  def failing_save(self, step, *args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))
    return save(self, step, *args, **kwargs)

  ocp.CheckpointManager.save = failing_save


def main(argv):
  del argv
  from catsdogs_jax.runtime import distributed, preemption, workdir_files
  from catsdogs_jax.training import train

  distributed.initialize(heartbeat_timeout=FLAGS.heartbeat_timeout)
  hooks = []
  if FLAGS.fault:
    kind, at = parse(FLAGS.fault)
    if kind == 'enospc_save':
      fail_saves_with_a_full_disk(at)
    else:
      hooks.append(fault_hook(kind, at))
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, hooks=hooks)
  except (preemption.Preempted, workdir_files.WorkdirError, OSError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
