"""Train steps as several processes (jax.distributed on 127.0.0.1) against one process.

  python benchmarks/multiprocess.py --layouts=1x2,2x1 [--config=configs/small_cnn.py]
      [--config.data.image_size=64] [--steps=20] [--json=FILE]

A layout PxD runs P processes with D simulated CPU devices each (gloo collectives).
Every layout trains the config's model on the same global batches (fixed random
images): process p feeds rows p*B/P..(p+1)*B/P of each batch, one jitted step over
the mesh of all P*D devices. Reports images/s of the train step (after `--warmup`
compiled steps, data already in memory) and, per layout, the loss of every step,
a digest of the final parameters and an exact evaluation of `--eval_examples`
images (each process holds every P-th one, padded batches), so that layouts can be
compared: tests/runtime/test_distributed.py checks 2x2 against 1x4 with it.
On one machine this shows the cost of the processes and their collectives, not a
speed-up: the cores are shared.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

config_flags.DEFINE_config_file(
    'config',
    os.path.join(ROOT, 'configs', 'small_cnn.py'),
    'Config of the model, optimizer and batch size.',
)
flags.DEFINE_list('layouts', ['1x2', '2x1'], 'PROCESSESxDEVICES_PER_PROCESS, one run each.')
flags.DEFINE_integer('steps', 20, 'Timed train steps.')
flags.DEFINE_integer('warmup', 2, 'Steps before timing (compilation).')
flags.DEFINE_integer('eval_examples', 13, 'Images of the evaluation (odd on purpose).')
flags.DEFINE_string('json', None, 'Write the results here as JSON.')
flags.DEFINE_string('out', None, 'Internal (a worker): process 0 writes its result here.')
FLAGS = flags.FLAGS


def launch(processes: int, devices: int, argv, out: str, timeout: int = 600) -> dict:
  """Runs this script's worker as `processes` processes of `devices` devices; process 0's result."""
  from catsdogs_jax.runtime import distributed

  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  if processes > 1:
    env.update(
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{distributed.free_port()}',
        JAX_NUM_PROCESSES=str(processes),
    )
  # Each process writes to a file, not a pipe: a pipe left unread while process 0 is
  # awaited would fill, block its writer and so both processes.
  logs = [tempfile.TemporaryFile('w+') for _ in range(processes)]
  procs = [
      subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), *argv, f'--out={out}'],
          env=dict(env, JAX_PROCESS_ID=str(i)) if processes > 1 else env,
          stdout=log,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i, log in enumerate(logs)
  ]
  deadline = time.monotonic() + timeout
  for p in procs:
    p.wait(timeout=max(deadline - time.monotonic(), 0))
  for i, (p, log) in enumerate(zip(procs, logs)):
    if p.returncode:
      log.seek(0)
      raise RuntimeError(f'process {i} of {processes}x{devices} failed:\n{log.read()[-3000:]}')
  with open(out) as f:
    return json.load(f)


def worker(config, steps: int, warmup: int, eval_examples: int, out: str):
  import jax
  import numpy as np

  from catsdogs_jax import models
  from catsdogs_jax.data.feature_cache import FeaturePipeline
  from catsdogs_jax.runtime import distributed, parallel
  from catsdogs_jax.training import optimizers
  from catsdogs_jax.training.steps import make_eval_step, make_train_step, run_eval
  from catsdogs_jax.training.train_state import make_init_fn

  distributed.initialize(heartbeat_timeout=30)  # from JAX_* variables, when launched as several
  index, count = jax.process_index(), jax.process_count()
  mesh = parallel.create_mesh()
  shape = models.input_shape(config)
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch=max(1, steps + warmup))
  init_fn = make_init_fn(model, tx, optimizers.create_plateau(config), shape)
  state = parallel.jit_init(init_fn, mesh)(jax.random.PRNGKey(config.seed))
  train_step = parallel.jit_train_step(make_train_step(model, tx, config), mesh)

  rng = np.random.default_rng(0)
  batch, local = config.batch_size, config.batch_size // count
  num_batches = steps + warmup
  images = rng.integers(0, 256, (num_batches, batch, *shape), dtype=np.uint8)
  labels = rng.integers(0, config.data.num_classes, (num_batches, batch)).astype(np.int32)
  mine = slice(index * local, (index + 1) * local)
  batches = [
      parallel.shard_batch({'image': images[i, mine], 'label': labels[i, mine]}, mesh)
      for i in range(num_batches)
  ]

  losses = []
  for i in range(warmup):
    state, metrics, _ = train_step(state, batches[i])
    losses.append(metrics)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(warmup, num_batches):
    state, metrics, _ = train_step(state, batches[i])
    losses.append(metrics)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  losses = [float(m.compute()['loss']) for m in losses]

  eval_images = rng.integers(0, 256, (eval_examples, *shape), dtype=np.uint8)
  eval_labels = rng.integers(0, config.data.num_classes, eval_examples).astype(np.int32)
  parts = [len(range(p, eval_examples, count)) for p in range(count)]
  pipeline = FeaturePipeline(
      config, eval_images[index::count], eval_labels[index::count], parts, local
  )
  evaluation = run_eval(
      parallel.jit_eval_step(make_eval_step(model, config), mesh), state, pipeline, mesh
  )
  params = [np.asarray(x).astype(np.float64) for x in jax.tree.leaves(jax.device_get(state.params))]
  result = {
      'processes': count,
      'devices': jax.device_count(),
      'losses': losses,
      'images_per_second': steps * batch / seconds,
      'step_ms': 1e3 * seconds / steps,
      'params_sum': [float(p.sum()) for p in params],
      'params_abs_sum': [float(np.abs(p).sum()) for p in params],
      # Sensitive to where each value is, not only to the values.
      'params_weighted': [float((p.ravel() * np.cos(np.arange(p.size))).sum()) for p in params],
      'eval': {k: evaluation[k] for k in ('loss', 'accuracy', 'num_images')},
  }
  if index == 0:
    with open(out, 'w') as f:
      json.dump(result, f)


def main(argv):
  del argv
  if FLAGS.out is not None:
    worker(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.eval_examples, FLAGS.out)
    return
  passed = [a for a in sys.argv[1:] if not a.startswith(('--layouts', '--json'))]
  results = []
  for layout in FLAGS.layouts:
    processes, devices = (int(v) for v in layout.split('x'))
    out = f'/tmp/multiprocess_{os.getpid()}_{layout}.json'
    results.append(launch(processes, devices, passed, out))
    os.remove(out)
  config = FLAGS.config
  print(
      f'{config.model.name}, {config.data.image_size} px, global batch {config.batch_size}, '
      f'{FLAGS.steps} steps\n{"layout":<10}{"images/s":>10}{"ms/step":>10}{"final loss":>12}'
      f'{"eval images":>13}'
  )
  for layout, r in zip(FLAGS.layouts, results):
    print(
        f'{layout:<10}{r["images_per_second"]:>10.1f}{r["step_ms"]:>10.1f}'
        f'{r["losses"][-1]:>12.5f}{r["eval"]["num_images"]:>13}'
    )
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(dict(zip(FLAGS.layouts, results)), f, indent=1)


if __name__ == '__main__':
  app.run(main)
