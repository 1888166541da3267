"""Fault injection at scale: many trials of every fault kind against an uninterrupted run.

  python benchmarks/fault_injection.py --trials=50 [--seed=0] [--workdir=/tmp/faults]

A tiny MLP trains 4 epochs of 3 steps on generated images, in a new process per
run. Each trial injects one fault at a random point, goes on the way a user
would (run the same command again, free the disk, ...) and checks the result:

  survived  the final parameters and log.csv (timing aside) equal the uninterrupted
            run's, bit for bit, and every refusal came with its message;
  different the run finished but its result differs;
  lost      a finished checkpoint or the run could not be recovered.

Prints a table (fault kind, trials, survived, different, lost) and, as its last
line, JSON with `trials`, `survived` and `lost`.
"""

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from catsdogs_jax.runtime import checkpointing

import inject_fault

CONFIG = os.path.join(ROOT, 'configs', 'mnist_mlp.py')
STEPS, EPOCHS = 3, 4
KINDS = (
    'kill_step',
    'kill_save',
    'kill_eval',
    'term_step',
    'enospc_save',
    'nan',
    'second_run',
    'truncated_checkpoint',
    'config_change',
)


def make_data(root: str) -> str:
  """24 / 10 / 10 small JPEGs per split, the class visible in the colour."""
  rng = np.random.default_rng(0)
  for split, n in (('train', 24), ('validation', 10), ('test', 10)):
    for label, (name, colour) in enumerate((('cats', (200, 60, 60)), ('dogs', (60, 60, 200)))):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(n // 2):
        pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 48, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(
            os.path.join(root, split, name, f'{name}.{i}.jpg')
        )
  return root


def overrides(data: str, **fields):
  return {
      'data.dataset': f'folder:{data}',
      'data.train_split': 'train',
      'data.eval_split': 'validation',
      'data.test_split': 'test',
      'data.image_size': 16,
      'data.channels': 3,
      'data.num_classes': 2,
      'batch_size': 8,
      'loss': 'softmax',
      'data.preprocess': 'rescale',
      'optimizer.weight_decay': 0.0,
      'log_every_steps': 2,
      'data.cache': True,
      'num_epochs': EPOCHS,
      'model.dropout_rate': 0.3,
      'checkpoint.keep': 2,
      **fields,
  }


def run(data, workdir, fault=None, **fields):
  return subprocess.run(
      inject_fault.command(CONFIG, workdir, overrides(data, **fields), fault),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )


def finished_same(workdir, reference) -> str:
  try:
    return (
        'survived'
        if inject_fault.same_outcome(inject_fault.outcome(workdir), reference)
        else 'different'
    )
  except Exception:  # no checkpoint, no log: nothing to compare
    return 'lost'


def resume(data, workdir, reference) -> str:
  return finished_same(workdir, reference) if run(data, workdir).returncode == 0 else 'lost'


def trial(kind: str, rng, data: str, workdir: str, reference) -> str:
  if kind in ('kill_step', 'kill_save', 'kill_eval', 'term_step', 'enospc_save'):
    limit = STEPS * EPOCHS if kind.endswith('step') else EPOCHS
    faulty = run(data, workdir, f'{kind}:{rng.integers(1, limit + 1)}')
    expected = {'kill': -9, 'term': 1, 'enospc': 1}[kind.split('_')[0]]
    if faulty.returncode != expected:
      return 'lost'
    return resume(data, workdir, reference)
  if kind == 'nan':  # diverges after 1 to 3 good epochs; the good checkpoints must stay
    good = int(rng.integers(1, EPOCHS))
    cnn = {'model.name': 'small_cnn', 'data.image_size': 48, 'model.dropout_rate': 0.0}
    run(data, workdir, num_epochs=good, **cnn, **{'optimizer.learning_rate': 1e-2})
    diverged = run(data, workdir, **cnn, **{'optimizer.learning_rate': 1e3})
    if diverged.returncode == 0 or 'Non-finite loss' not in diverged.stderr:
      return 'different'
    steps = checkpointing.saved_steps(workdir)
    return 'survived' if steps and steps[-1] == good * STEPS else 'lost'
  if kind == 'second_run':  # the first run pauses mid-training while a second one starts
    first = subprocess.Popen(
        inject_fault.command(
            CONFIG, workdir, overrides(data), f'pause_step:{rng.integers(1, STEPS * EPOCHS + 1)}'
        ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # never read: a pipe would fill and block it
    )
    lock = os.path.join(workdir, 'lock.json')
    while not os.path.exists(lock) and first.poll() is None:
      time.sleep(0.05)
    second = run(data, workdir)
    first.wait(timeout=600)
    if second.returncode == 0 or 'in use by process' not in second.stderr:
      return 'different'
    return finished_same(workdir, reference) if first.returncode == 0 else 'lost'
  if kind == 'truncated_checkpoint':
    epochs = int(rng.integers(2, EPOCHS + 1))
    run(data, workdir, num_epochs=epochs)
    newest = os.path.join(workdir, 'checkpoints', str(epochs * STEPS), 'state')
    files = [os.path.join(d, f) for d, _, names in os.walk(newest) for f in names]
    target = max(files, key=os.path.getsize)
    with open(target, 'r+b') as f:
      f.truncate(int(os.path.getsize(target) * rng.uniform(0, 0.9)))
    return resume(data, workdir, reference)
  if kind == 'config_change':  # a structural change is refused; a harmless one resumes
    run(data, workdir, num_epochs=int(rng.integers(1, EPOCHS)))
    refused = run(data, workdir, **{'optimizer.name': 'adam'})
    if refused.returncode == 0 or 'change the parameters or optimizer state' not in refused.stderr:
      return 'different'
    return resume(data, workdir, reference)
  raise ValueError(kind)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--trials', type=int, default=len(KINDS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default=None, help='default: a temporary folder')
  args = parser.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix='fault_injection_')
  data = make_data(os.path.join(root, 'data'))
  reference_dir = os.path.join(root, 'reference')
  shutil.rmtree(reference_dir, ignore_errors=True)
  if run(data, reference_dir).returncode:
    sys.exit('the uninterrupted reference run failed')
  reference = inject_fault.outcome(reference_dir)
  rng = np.random.default_rng(args.seed)
  counts = collections.defaultdict(collections.Counter)
  start = time.time()
  for i in range(args.trials):
    kind = KINDS[i % len(KINDS)]
    workdir = os.path.join(root, f'trial_{i}')
    shutil.rmtree(workdir, ignore_errors=True)
    result = trial(kind, rng, data, workdir, reference)
    counts[kind][result] += 1
    print(f'trial {i + 1}/{args.trials}: {kind}: {result}', flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
  print(f'\n{"fault kind":<22}{"trials":>8}{"survived":>10}{"different":>11}{"lost":>6}')
  for kind in KINDS:
    c = counts[kind]
    if c:
      print(f'{kind:<22}{sum(c.values()):>8}{c["survived"]:>10}{c["different"]:>11}{c["lost"]:>6}')
  total = collections.Counter()
  for c in counts.values():
    total.update(c)
  print(
      f'{"all":<22}{args.trials:>8}{total["survived"]:>10}{total["different"]:>11}'
      f'{total["lost"]:>6}   ({time.time() - start:.0f} s on {socket.gethostname()})'
  )
  print(
      json.dumps(
          {
              'trials': args.trials,
              'survived': total['survived'],
              'different': total['different'],
              'lost': total['lost'],
          }
      )
  )


if __name__ == '__main__':
  main()
