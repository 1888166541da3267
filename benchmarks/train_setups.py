"""The models, image sizes and batches the train-step benchmarks time, and the project's step for them.

Imported by `train_step.py` and `step_profile.py` (run as scripts from this folder).
"""

import importlib

# (config module, image size, batch size) as in the tutorials' comparisons.
SETUPS = {'small_cnn': ('small_cnn', 150, 32), 'vgg16': ('vgg16', 112, 16)}


def benchmark_config(name: str):
  """The config of model `name` at its size, batch and 2 classes (SETUPS)."""
  module, size, batch = SETUPS[name]
  config = importlib.import_module(f'configs.{module}').get_config()
  config.data.image_size, config.batch_size, config.data.num_classes = size, batch, 2
  return config


def project_step(config, forms: str):
  """The project's jitted train step for `config` with the layer forms `forms`, a state and a batch.

  Returns (step, state, batch): step is jitted, step(state, batch) -> (new state, metrics);
  the batch is random uint8 images and labels, sharded over the default mesh.
  """
  import jax
  import numpy as np

  from catsdogs_jax import models
  from catsdogs_jax.runtime import parallel
  from catsdogs_jax.training import optimizers
  from catsdogs_jax.training.steps import make_train_step
  from catsdogs_jax.training.train_state import make_init_fn

  mesh = parallel.create_mesh()
  config.model.layers = forms
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, 100)
  size = (config.data.image_size, config.data.image_size, config.data.channels)
  state = parallel.jit_init(make_init_fn(model, tx, optimizers.create_plateau(config), size), mesh)(
      jax.random.PRNGKey(0)
  )
  train_step = parallel.jit_train_step(make_train_step(model, tx, config), mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {
          'image': rng.integers(0, 256, (config.batch_size, *size), dtype=np.uint8),
          'label': rng.integers(0, 2, (config.batch_size,), dtype=np.int32),
      },
      mesh,
  )
  return train_step, state, batch
