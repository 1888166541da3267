"""Train-step speed on this machine: the project's jitted step against Keras (TensorFlow) and a matmul roofline.

  python benchmarks/train_step.py [--models=small_cnn,vgg16] [--steps=10] [--rounds=1]
      [--layers=onednn,cpu,plain] [--dtypes=float32,bfloat16] [--keras] [--torch] [--json=FILE]

For the small CNN (150 px, batch 32, RMSprop) and VGG16 (2 classes, 112 px, batch 16,
SGD momentum 0.9), times the project's own train step after compilation, data already in
memory, with oneDNN's convolutions (`onednn`, catsdogs_jax/models/onednn.py), the XLA CPU
layer forms (`cpu`, catsdogs_jax/models/layers.py) and the plain Flax forms (`plain`), in
float32 and, but for the plain forms, with config.half_precision (bfloat16).
Achieved GFLOP/s count the model's forward FLOPs (XLA's cost analysis of the plain forward
pass) times 3 for forward plus backward, against a float32 matmul measured in the same run.
With Keras and TensorFlow importable, the same model is trained by Keras (TensorFlow backend,
train_on_batch) in a subprocess, and with PyTorch importable by PyTorch (channels-last, its
oneDNN convolutions) in another, and the ratios are reported. Prints a table; JSON with --json.
A machine whose speed drifts between runs minutes apart needs paired measurements:
--rounds=N times every implementation once per round, in turn, and reports each one's median
images/s and its range, and its ratios as the median of the rounds' own ratios.
"""

import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roofline import matmul_gflops, timed  # noqa: E402
from train_setups import benchmark_config, project_step  # noqa: E402

flags.DEFINE_list('models', ['small_cnn', 'vgg16'], 'small_cnn and/or vgg16')
flags.DEFINE_list('layers', ['onednn', 'cpu', 'plain'], 'layer forms to time (config.model.layers)')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'compute dtypes to time (cpu layers)')
flags.DEFINE_integer('steps', 10, 'timed steps per measurement (after 2 warm-up steps)')
flags.DEFINE_integer(
    'rounds', 1, 'times every implementation this many times, in turn (paired ratios)'
)
flags.DEFINE_boolean('keras', True, 'also time Keras with the TensorFlow backend if importable')
flags.DEFINE_boolean('torch', True, 'also time PyTorch (channels-last) if importable')
flags.DEFINE_string('keras_only', None, 'internal: time only this model with Keras, print JSON')
flags.DEFINE_string('torch_only', None, 'internal: time only this model with PyTorch, print JSON')
flags.DEFINE_string('json', None, 'write the results here as JSON')
FLAGS = flags.FLAGS


def forward_gflop_per_image(config) -> float:
  """XLA's FLOP count of the plain forward pass, per image."""
  import jax
  import jax.numpy as jnp

  from catsdogs_jax import models
  from catsdogs_jax.models import abstract_variables

  config.model.layers = 'plain'
  model = models.create_model(config)
  size = (config.data.image_size, config.data.image_size, config.data.channels)
  compiled = (
      jax.jit(lambda v, x: model.apply(v, x))
      .lower(abstract_variables(model, size), jax.ShapeDtypeStruct((1, *size), jnp.float32))
      .compile()
  )
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return analysis['flops'] / 1e9


def project_images_per_second(config, forms: str, steps: int) -> float:
  step, state, batch = project_step(config, forms)
  return config.batch_size / timed(lambda s, b: step(s, b)[0], (state, batch), steps)


def keras_images_per_second(name: str, steps: int) -> float:
  """The same model and optimiser in Keras 3 on TensorFlow (run in its own process)."""
  os.environ['KERAS_BACKEND'] = 'tensorflow'
  import keras
  import numpy as np

  config = benchmark_config(name)
  size = config.data.image_size
  if name == 'small_cnn':
    layers = [keras.Input((size, size, 3))]
    for features in (32, 64, 128, 128):
      layers += [keras.layers.Conv2D(features, 3, activation='relu'), keras.layers.MaxPooling2D(2)]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(512, activation='relu'),
        keras.layers.Dense(1),
    ]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.RMSprop(1e-4), keras.losses.BinaryCrossentropy(from_logits=True))
    labels = np.random.default_rng(0).integers(0, 2, (config.batch_size, 1)).astype(np.float32)
  else:
    model = keras.applications.VGG16(
        weights=None, classes=2, input_shape=(size, size, 3), classifier_activation=None
    )
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    labels = np.random.default_rng(0).integers(0, 2, (config.batch_size,))
  images = np.random.default_rng(0).random((config.batch_size, size, size, 3), np.float32)
  for _ in range(2):
    model.train_on_batch(images, labels)
  start = time.perf_counter()
  for _ in range(steps):
    model.train_on_batch(images, labels)
  return config.batch_size * steps / (time.perf_counter() - start)


def torch_images_per_second(name: str, steps: int) -> float:
  """The same model and optimiser in PyTorch, channels-last (run in its own process)."""
  import torch
  from torch import nn

  config = benchmark_config(name)
  size = config.data.image_size
  if name == 'small_cnn':
    layers, channels = [], 3
    for features in (32, 64, 128, 128):
      layers += [nn.Conv2d(channels, features, 3), nn.ReLU(), nn.MaxPool2d(2)]
      channels, size = features, (size - 2) // 2
    model = nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(channels * size * size, 512), nn.ReLU(), nn.Linear(512, 1)
    )
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    labels = torch.randint(0, 2, (config.batch_size, 1)).float()
    loss_fn = nn.BCEWithLogitsLoss()
  else:
    import torchvision

    # Keras' VGG16 at this size: the features flattened into fc1, no dropout.
    features = torchvision.models.vgg16().features
    side = config.data.image_size // 32
    model = nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(512 * side * side, 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, 2),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = torch.randint(0, 2, (config.batch_size,))
    loss_fn = nn.CrossEntropyLoss()
  model = model.to(memory_format=torch.channels_last)
  images = torch.rand(config.batch_size, 3, config.data.image_size, config.data.image_size)
  images = images.to(memory_format=torch.channels_last)

  def step():
    optimizer.zero_grad()
    loss_fn(model(images), labels).backward()
    optimizer.step()

  for _ in range(2):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return config.batch_size * steps / (time.perf_counter() - start)


def paired_ratio(each, reference):
  """The median of the rounds' own ratios each[i] / reference[i]; None without a reference."""
  return statistics.median(a / b for a, b in zip(each, reference)) if reference else None


def _in_subprocess(framework: str, name: str, steps: int):
  # Found, not imported: TensorFlow's and PyTorch's thread pools stay out of the process
  # that times JAX.
  needs = {'keras': ('keras', 'tensorflow'), 'torch': ('torch',)}[framework]
  if not all(importlib.util.find_spec(module) for module in needs):
    return None
  out = subprocess.run(
      [sys.executable, __file__, f'--{framework}_only={name}', f'--steps={steps}'],
      capture_output=True,
      text=True,
      check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])['images_per_second']


def main(_):
  from catsdogs_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()  # as main.py does; Keras' subprocess inherits it
  if FLAGS.keras_only:
    print(json.dumps({'images_per_second': keras_images_per_second(FLAGS.keras_only, FLAGS.steps)}))
    return
  if FLAGS.torch_only:
    print(json.dumps({'images_per_second': torch_images_per_second(FLAGS.torch_only, FLAGS.steps)}))
    return
  import jax

  roofline = matmul_gflops()
  rows = []
  for name in FLAGS.models:
    config = benchmark_config(name)
    gflop = 3 * forward_gflop_per_image(config)
    runs = [(forms, 'float32') for forms in FLAGS.layers]
    runs += [
        (forms, d)
        for forms in FLAGS.layers
        if forms != 'plain'
        for d in FLAGS.dtypes
        if d != 'float32'
    ]
    keras, torch = ('Keras 3, TensorFlow', 'float32'), ('PyTorch, channels-last', 'float32')
    # {(implementation, dtype): images/s of each round}; a round times every one in turn.
    rates = {}
    for _ in range(FLAGS.rounds):
      for framework, key in (('keras', keras), ('torch', torch)):
        rate = _in_subprocess(framework, name, FLAGS.steps) if FLAGS[framework].value else None
        if rate:
          rates.setdefault(key, []).append(rate)
      for forms, dtype in runs:
        config.half_precision = dtype == 'bfloat16'
        rate = project_images_per_second(config, forms, FLAGS.steps)
        rates.setdefault((f'project, {forms} layers', dtype), []).append(rate)

    for implementation, dtype in [(f'project, {f} layers', d) for f, d in runs] + [keras, torch]:
      each = rates.get((implementation, dtype))
      if not each:
        continue
      rate = statistics.median(each)
      rows.append(
          {
              'model': name,
              'image_size': config.data.image_size,
              'batch_size': config.batch_size,
              'implementation': implementation,
              'dtype': dtype,
              'images_per_second': rate,
              'rounds': each,
              'gflops': rate * gflop,
              'roofline_fraction': rate * gflop / roofline,
              'vs_keras': paired_ratio(each, rates.get(keras)),
              'vs_torch': paired_ratio(each, rates.get(torch)),
          }
      )
  print(
      f'{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} cores; '
      f'float32 matmul roofline {roofline:.0f} GFLOP/s'
  )
  print(
      f'{"model":10} {"implementation":24} {"dtype":9} {"images/s":>9} {"GFLOP/s":>8} '
      f'{"roofline":>8} {"vs Keras":>8} {"vs PyTorch":>10}'
      + (f'  {"range of the rounds":>19}' if FLAGS.rounds > 1 else '')
  )
  ratio = lambda x: f'{x:.2f}x' if x else '-'
  for r in rows:
    print(
        f'{r["model"]:10} {r["implementation"]:24} {r["dtype"]:9} '
        f'{r["images_per_second"]:9.1f} {r["gflops"]:8.1f} {r["roofline_fraction"]:8.0%} '
        f'{ratio(r["vs_keras"]):>8} {ratio(r["vs_torch"]):>10}'
        + (f'  {min(r["rounds"]):9.1f}-{max(r["rounds"]):<9.1f}' if FLAGS.rounds > 1 else '')
    )
  result = {'roofline_gflops': roofline, 'devices': jax.device_count(), 'rows': rows}
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(result, f, indent=1)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
