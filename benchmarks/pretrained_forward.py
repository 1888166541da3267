"""Forward-pass throughput of EfficientNet-Lite (feature extraction) here and in PyTorch's reference model.

  python benchmarks/pretrained_forward.py [--model=efficientnet_lite0] [--batch_size=32] [--steps=5]

Ours with the CPU layer forms (`auto`, the default: depthwise convolutions as shifted sums)
and with the plain lax forms; the reference `efficientnet-lite-pytorch` model in NCHW and
channels-last, on the same random images (needs the test extra). Prints a table and, last, JSON.
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


def main(argv):
  del argv
  images = (
      np.random.default_rng(0)
      .normal(size=(FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3))
      .astype(np.float32)
  )
  rows = {
      'ours (auto: CPU layer forms)': ours(images, 'auto'),
      'ours (plain lax forms)': ours(images, 'plain'),
  }
  try:
    import torch

    rows[f'PyTorch {torch.__version__} NCHW'] = pytorch(images, False)
    rows[f'PyTorch {torch.__version__} channels-last'] = pytorch(images, True)
  except ImportError as e:
    print(f'PyTorch reference skipped: {e}')
  print(
      f'{FLAGS.model} forward pass (features), batch {FLAGS.batch_size}, {FLAGS.image_size} px, '
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
