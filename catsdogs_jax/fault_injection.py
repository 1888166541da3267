"""Faults on purpose, to prove that training survives them (tests and benchmarks/fault_injection.py).

`python -m catsdogs_jax.fault_injection --config=... --workdir=... --fault=KIND:N` trains
like `main.py` with one fault injected at the N-th occurrence of a point of the run:

- `kill_step:N`  SIGKILL (kill -9) right after train step N returns;
- `kill_save:N`  SIGKILL while the N-th checkpoint save is being written;
- `kill_eval:N`  SIGKILL in the middle of the N-th evaluation (after its first batch);
- `term_step:N`  SIGTERM after train step N (the run checkpoints that step and exits);
- `enospc_save:N` the N-th checkpoint save fails with "No space left on device" at the
  file-writing layer;
- `pause_step:N` sleeps 20 s after train step N (a slow run, for a second run to meet).

A SIGKILL is real: the process dies without any cleanup, as with `kill -9`.
With JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, it runs
as one of several processes (`catsdogs_jax.distributed`), e.g. to kill one of them.
"""

import errno
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from absl import app, flags
from ml_collections import config_flags

FAULT_KINDS = ('kill_step', 'kill_save', 'kill_eval', 'term_step', 'enospc_save', 'pause_step')
PAUSE_SECONDS = 20

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir.')
flags.DEFINE_string('fault', None, 'KIND:N (see the module docstring); none: train normally.')
flags.DEFINE_integer('heartbeat_timeout', 100, 'Several processes: seconds after which a silent '
                     'one counts as dead.')


def command(config_file: str, workdir: str, overrides: Dict[str, Any],
            fault: Optional[str] = None) -> List[str]:
  """The command line that trains `config_file` with `overrides` (and a fault) in a new process."""
  return [sys.executable, '-m', 'catsdogs_jax.fault_injection', f'--config={config_file}',
          f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items()),
          *([f'--fault={fault}'] if fault else [])]


def outcome(workdir: str):
  """(parameters of the newest checkpoint, log.csv rows without timing columns) of a run."""
  from catsdogs_jax import callbacks, checkpointing, weights
  newest = checkpointing.saved_steps(workdir)[-1]
  state = weights.restore_numpy(os.path.join(workdir, checkpointing.CHECKPOINTS_DIR, str(newest),
                                             checkpointing.STATE))
  rows = [{k: v for k, v in r.items() if k not in callbacks.TIMING_COLUMNS}
          for r in callbacks.read_csv(os.path.join(workdir, callbacks.LOG_CSV))]
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


def _counting(function, at: int, action):
  """`function`, calling `action(result)` once, on its `at`-th call."""
  calls = [0]

  def wrapped(*args, **kwargs):
    calls[0] += 1
    result = function(*args, **kwargs)
    if calls[0] == at:
      action(result)
    return result

  return wrapped


def _kill(*_):
  os.kill(os.getpid(), signal.SIGKILL)


def _term(*_):
  os.kill(os.getpid(), signal.SIGTERM)


def inject(kind: str, at: int):
  """Patches the training code in this process so that fault `kind` happens at occurrence `at`."""
  from catsdogs_jax import checkpointing, parallel, train

  if kind in ('kill_step', 'term_step', 'pause_step'):
    jit_train_step = parallel.jit_train_step
    action = {'kill_step': _kill, 'term_step': _term,
              'pause_step': lambda *_: time.sleep(PAUSE_SECONDS)}[kind]
    train.parallel.jit_train_step = lambda *a: _counting(jit_train_step(*a), at, action)
  elif kind == 'kill_save':
    # The save is asynchronous: killing right after it starts catches the write in flight.
    checkpointing.Checkpoints.save = _counting(checkpointing.Checkpoints.save, at, _kill)
  elif kind == 'kill_eval':
    run_eval = train.run_eval

    def run_eval_with_fault(eval_step, state, pipeline, mesh):
      run_eval_with_fault.calls += 1
      if run_eval_with_fault.calls == at:
        batches = pipeline.eval_batches

        def killed_after_one_batch():
          for i, batch in enumerate(batches()):
            if i == 1:
              _kill()
            yield batch

        pipeline.eval_batches = killed_after_one_batch
      return run_eval(eval_step, state, pipeline, mesh)

    run_eval_with_fault.calls = 0
    train.run_eval = run_eval_with_fault
  elif kind == 'enospc_save':
    # Below our code: Orbax's save fails as a write to a full disk would.
    import orbax.checkpoint as ocp
    save = ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
      failing_save.calls += 1
      if failing_save.calls == at:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))
      return save(self, step, *args, **kwargs)

    failing_save.calls = 0
    ocp.CheckpointManager.save = failing_save


def main(argv):
  del argv
  from catsdogs_jax import distributed, preemption, train, workdir
  distributed.initialize(heartbeat_timeout=FLAGS.heartbeat_timeout)
  if FLAGS.fault:
    inject(*parse(FLAGS.fault))
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (preemption.Preempted, workdir.WorkdirError, OSError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
