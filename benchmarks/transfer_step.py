"""Train-step throughput of VGG16 with a frozen base versus fully trained, at the same size.

  python benchmarks/transfer_step.py [--image_size=64] [--batch_size=16] [--steps=10]

A frozen base is not differentiated (stop-gradient) and has no optimiser state, so its step
should cost little more than a forward pass. Prints a table and, last, JSON.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from catsdogs_jax import models
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import optimizers
from catsdogs_jax.training.steps import make_train_step
from catsdogs_jax.training.train_state import make_init_fn
from configs import vgg16_transfer  # noqa: E402

flags.DEFINE_integer('image_size', 64, 'image size')
flags.DEFINE_integer('batch_size', 16, 'global batch size')
flags.DEFINE_integer('steps', 10, 'timed steps')
FLAGS = flags.FLAGS


def images_per_second(trainable) -> float:
  config = vgg16_transfer.get_config()
  config.data.image_size, config.batch_size, config.trainable = (
      FLAGS.image_size,
      FLAGS.batch_size,
      trainable,
  )
  config.init_from = None
  mesh = parallel.create_mesh()
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, 100)
  init = make_init_fn(
      model,
      tx,
      optimizers.create_plateau(config),
      (config.data.image_size, config.data.image_size, 3),
  )
  state = parallel.jit_init(init, mesh)(jax.random.PRNGKey(0))
  step = parallel.jit_train_step(make_train_step(model, tx, config), mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {
          'image': rng.integers(
              0,
              256,
              (config.batch_size, config.data.image_size, config.data.image_size, 3),
              dtype=np.uint8,
          ),
          'label': rng.integers(0, 2, (config.batch_size,), dtype=np.int32),
      },
      mesh,
  )
  state, _, _ = step(state, batch)  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, _, _ = step(state, batch)
  jax.block_until_ready(state)
  return FLAGS.steps * config.batch_size / (time.perf_counter() - start)


def main(_):
  frozen = images_per_second(('^head_',))
  full = images_per_second(())
  print(
      f'VGG16 at {FLAGS.image_size} px, batch {FLAGS.batch_size}, {jax.device_count()} '
      f'{jax.devices()[0].platform} device(s)'
  )
  print(f'  frozen base, head trained   {frozen:8.1f} images/s')
  print(f'  everything trained          {full:8.1f} images/s')
  print(f'  speed-up                    {frozen / full:8.2f}x')
  print(
      json.dumps(
          {
              'image_size': FLAGS.image_size,
              'batch_size': FLAGS.batch_size,
              'frozen_images_per_second': frozen,
              'full_images_per_second': full,
          }
      )
  )


if __name__ == '__main__':
  app.run(main)
