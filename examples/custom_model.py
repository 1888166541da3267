"""A model of your own, trained with the library's parts instead of `main.py`.

Shows the import API end to end: the folder input pipeline, the optax chain of
`create_optimizer`, the jitted train step sharded over the device mesh, exact
evaluation (`run_eval`), and Orbax checkpoints (`Checkpoints`) saved each epoch
with validation metrics, the best of which is restored and tested. Works from
any folder; DATA is laid out as DATA/{train,validation,test}/<label>/<image>.

  python examples/custom_model.py --data=DATA --workdir=/tmp/custom_run \
      --image_size=64 --epochs=5 --batch_size=16
"""

import argparse

import jax
from flax import linen as nn

from catsdogs_jax import defaults, models
from catsdogs_jax.data import input_pipeline
from catsdogs_jax.runtime import checkpointing, parallel
from catsdogs_jax.training import optimizers, steps, train_state
from catsdogs_jax.training.train import History


class TinyConvNet(nn.Module):
  """Conv-BatchNorm-ReLU-pool stages, global average pooling, one logit per output."""

  num_outputs: int = 1
  features: tuple = (16, 32, 64)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in self.features:
      x = nn.Conv(features, (3, 3), use_bias=False)(x)  # BatchNorm's bias replaces it
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    return nn.Dense(self.num_outputs)(x.mean(axis=(1, 2)))


def make_config(args):
  config = defaults.get_config()  # every field with its default, locked against typos
  config.data.dataset = f'folder:{args.data}'
  config.data.train_split, config.data.eval_split, config.data.test_split = (
      'train',
      'validation',
      'test',
  )
  config.data.image_size = args.image_size
  config.data.preprocess = 'rescale'
  config.data.cache = True  # small data: decode once, keep in memory
  config.batch_size = args.batch_size
  config.num_epochs = args.epochs
  config.optimizer.name, config.optimizer.learning_rate = 'adam', 1e-3
  return config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='image folder: split/label/image')
  parser.add_argument('--workdir', required=True, help='where checkpoints are written')
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=16)
  args = parser.parse_args(argv)
  if checkpointing.has_checkpoints(args.workdir):
    # Checkpoints refuses to save over a step; say so before training rather than after.
    parser.error(f'{args.workdir} already holds checkpoints; pass a new --workdir.')
  config = make_config(args)

  info = input_pipeline.describe(config)
  pipelines = {
      role: input_pipeline.ImagePipeline(config, split, info.class_names)
      for role, split in input_pipeline.config_splits(config).items()
  }
  train_data = pipelines['train']
  mesh = parallel.create_mesh()  # batches are split over every device

  model = TinyConvNet(num_outputs=1)  # config.loss 'sigmoid': one logit for two classes
  tx, _ = optimizers.create_optimizer(config, train_data.steps_per_epoch)
  init_fn = train_state.make_init_fn(
      model, tx, optimizers.create_plateau(config), models.input_shape(config)
  )
  state = parallel.jit_init(init_fn, mesh)(jax.random.PRNGKey(config.seed))
  train_step = parallel.jit_train_step(steps.make_train_step(model, tx, config), mesh)
  eval_step = parallel.jit_eval_step(steps.make_eval_step(model, config), mesh)

  checkpoints = checkpointing.Checkpoints(args.workdir, config)
  history = History()
  for epoch in range(config.num_epochs):
    running = None
    for batch in parallel.prefetch_to_mesh(train_data.train_epoch(epoch), mesh):
      state, metrics, _ = train_step(state, batch)  # _: finite (main.py stops on NaN)
      running = metrics if running is None else running.merge(metrics)
    train = jax.device_get(running.compute())
    val = steps.run_eval(eval_step, state, pipelines['validation'], mesh)
    row = {
        'epoch': epoch + 1,
        'step': int(state.step),
        'loss': float(train['loss']),
        'accuracy': float(train['accuracy']),
        'val_loss': val['loss'],
        'val_accuracy': val['accuracy'],
    }
    history.epochs.append(row)
    # The metrics let Checkpoints keep the best epoch (config.checkpoint.best_monitor).
    checkpoints.save(
        row['step'],
        state,
        history.to_json(),
        {'val_loss': val['loss'], 'val_accuracy': val['accuracy']},
    )
    print(
        f'epoch {row["epoch"]} step={row["step"]} loss={row["loss"]:.4f} '
        f'accuracy={row["accuracy"]:.4f} val_loss={val["loss"]:.4f} '
        f'val_accuracy={val["accuracy"]:.4f}',
        flush=True,
    )
  checkpoints.wait()

  # Restoring needs the state's structure, dtypes and shardings, computed without running.
  abstract = train_state.abstract_state(init_fn, mesh, config.seed)
  best = checkpoints.best_step()
  best_state, _ = checkpoints.restore(best, abstract)
  checkpoints.close()
  test = steps.run_eval(eval_step, best_state, pipelines['test'], mesh)
  print(
      f'test best_step={best} test_loss={test["loss"]:.4f} '
      f'test_accuracy={test["accuracy"]:.4f} images={test["num_images"]}',
      flush=True,
  )
  return {
      'best_step': best,
      'test_loss': test['loss'],
      'test_accuracy': test['accuracy'],
      'history': history.epochs,
  }


if __name__ == '__main__':
  main()
