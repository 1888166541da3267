"""EfficientNet's forward pass (feature extraction) and train step here and in PyTorch's reference model.

  python benchmarks/pretrained_forward.py [--model=efficientnet_lite0] [--batch_size=32] [--steps=5]
      [--layers=onednn,cpu,plain] [--train]

Ours with oneDNN's convolutions (`onednn`, what `auto` picks where the library loads), the
XLA CPU layer forms (`cpu`: depthwise convolutions as shifted sums) and the plain lax forms;
the reference `efficientnet-lite-pytorch` model in NCHW and
channels-last, on the same random images (needs the test extra). With --train, also the
fine-tuning train step (every layer trains, 2 classes, SGD with momentum, BatchNorm in
training mode) of both. For efficientnet_b0, Keras 3's EfficientNetB0 on TensorFlow too
(in its own process, when importable). Prints a table and, last, JSON.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from catsdogs_jax.runtime import host_memory  # noqa: E402

host_memory.restart_with_huge_pages()  # as main.py does, before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402

from catsdogs_jax import models
from catsdogs_jax.models import (
    init_variables,
    layers,  # noqa: E402
)

flags.DEFINE_string(
    'model', 'efficientnet_lite0', 'efficientnet_lite0, _lite1, _lite2, efficientnet_b0'
)
flags.DEFINE_integer('image_size', 224, 'image size')
flags.DEFINE_integer('batch_size', 32, 'batch size')
flags.DEFINE_integer('steps', 5, 'timed batches (after one to compile / warm up)')
flags.DEFINE_list('layers', ['onednn', 'cpu', 'plain'], 'our layer forms to time (model.layers)')
flags.DEFINE_boolean('train', False, 'also time the fine-tuning train step')
flags.DEFINE_boolean('keras_only', False, 'internal: time only Keras (efficientnet_b0), print JSON')
FLAGS = flags.FLAGS


def _rate(run, batch) -> float:
  run(batch)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    run(batch)
  return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)


def ours(images, forms: str) -> float:
  model = models.MODELS[FLAGS.model](
      num_outputs=1000, include_top=False, pooling='avg', layers=layers.layer_forms(forms)
  )
  size = images.shape[1:]
  variables = jax.jit(lambda rng: init_variables(model, rng, size))(jax.random.PRNGKey(0))
  forward = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images).compile()
  return _rate(lambda x: forward(variables, x).block_until_ready(), images)


def ours_train(images, forms: str) -> float:
  from catsdogs_jax.runtime import parallel
  from catsdogs_jax.training import optimizers
  from catsdogs_jax.training.steps import make_train_step
  from catsdogs_jax.training.train_state import make_init_fn
  from configs import default

  config = default.get_config()
  config.model.name, config.model.layers, config.loss = FLAGS.model, forms, 'softmax'
  config.data.image_size, config.batch_size = FLAGS.image_size, FLAGS.batch_size
  config.optimizer.name, config.optimizer.momentum = 'sgd', 0.9
  mesh = parallel.create_mesh()
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, 100)
  init = make_init_fn(model, tx, optimizers.create_plateau(config), images.shape[1:])
  state = parallel.jit_init(init, mesh)(jax.random.PRNGKey(0))
  step = parallel.jit_train_step(make_train_step(model, tx, config), mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {
          'image': rng.integers(0, 256, images.shape, dtype=np.uint8),
          'label': rng.integers(0, 2, (images.shape[0],), dtype=np.int32),
      },
      mesh,
  )
  holder = [state]

  def run(batch):
    holder[0] = step(holder[0], batch)[0]
    jax.block_until_ready(holder[0])

  return _rate(run, batch)


def pytorch_train(images, channels_last: bool) -> float:
  import torch
  from efficientnet_lite_pytorch import EfficientNet

  model = EfficientNet.from_name(
      FLAGS.model.replace('_', '-'), image_size=FLAGS.image_size, num_classes=2
  ).train()
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  if channels_last:
    model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
  labels = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (len(images),)))
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def run(batch):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(batch), labels).backward()
    optimizer.step()

  return _rate(run, x)


def pytorch(images, channels_last: bool) -> float:
  import torch
  from efficientnet_lite_pytorch import EfficientNet

  model = EfficientNet.from_name(FLAGS.model.replace('_', '-'), image_size=FLAGS.image_size).eval()
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  if channels_last:
    model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

  def run(batch):
    with torch.no_grad():
      model.extract_features(batch)

  return _rate(run, x)


def keras_rates(images) -> dict:
  """Keras 3's EfficientNetB0 on TensorFlow: forward (features) and train step, images/s."""
  os.environ['KERAS_BACKEND'] = 'tensorflow'
  import keras

  size = images.shape[1:]
  features = keras.applications.EfficientNetB0(
      weights=None, include_top=False, pooling='avg', input_shape=size
  )
  forward = lambda x: features.predict_on_batch(x)
  model = keras.applications.EfficientNetB0(
      weights=None, classes=2, input_shape=size, classifier_activation=None
  )
  model.compile(
      keras.optimizers.SGD(0.01, momentum=0.9),
      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  labels = np.random.default_rng(0).integers(0, 2, (len(images),))
  return {
      'forward': _rate(forward, images),
      'train': _rate(lambda x: model.train_on_batch(x, labels), images),
  }


def _keras_in_subprocess():
  # Found, not imported: TensorFlow's thread pools stay out of the process that times JAX.
  if FLAGS.model != 'efficientnet_b0' or not importlib.util.find_spec('tensorflow'):
    return None
  out = subprocess.run(
      [sys.executable, __file__, '--keras_only', *sys.argv[1:]],
      capture_output=True,
      text=True,
      check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  images = (
      np.random.default_rng(0)
      .normal(size=(FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3))
      .astype(np.float32)
  )
  if FLAGS.keras_only:
    print(json.dumps(keras_rates(images)))
    return
  keras = _keras_in_subprocess()
  rows = {f'ours ({forms} layer forms)': ours(images, forms) for forms in FLAGS.layers}
  try:
    import torch

    rows[f'PyTorch {torch.__version__} NCHW'] = pytorch(images, False)
    rows[f'PyTorch {torch.__version__} channels-last'] = pytorch(images, True)
  except ImportError as e:
    print(f'PyTorch reference skipped: {e}')
    torch = None
  if FLAGS.train:
    for forms in FLAGS.layers:
      rows[f'train step: ours ({forms} layer forms)'] = ours_train(images, forms)
    if torch is not None:
      rows[f'train step: PyTorch {torch.__version__} NCHW'] = pytorch_train(images, False)
      rows[f'train step: PyTorch {torch.__version__} channels-last'] = pytorch_train(images, True)
  if keras:
    rows['Keras 3 EfficientNetB0, TensorFlow'] = keras['forward']
    if FLAGS.train:
      rows['train step: Keras 3 EfficientNetB0, TensorFlow'] = keras['train']
  print(
      f'{FLAGS.model} forward pass (features) and train step, batch {FLAGS.batch_size}, {FLAGS.image_size} px, '
      f'{os.cpu_count()} CPU threads'
  )
  for name, rate in rows.items():
    print(f'  {name:<40} {rate:8.1f} images/s')
  print(
      json.dumps(
          {
              'model': FLAGS.model,
              'batch_size': FLAGS.batch_size,
              'image_size': FLAGS.image_size,
              'images_per_second': rows,
          }
      )
  )


if __name__ == '__main__':
  app.run(main)
