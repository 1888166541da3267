"""Achieved GFLOP/s of each small-CNN convolution, per layer form, against a matmul roofline.

  python benchmarks/conv_layers.py [--image_size=150] [--batch_size=32] [--steps=5]
      [--layers=onednn,cpu,plain] [--json=FILE]

For each of the small CNN's four 3x3 convolutions at the tutorial's size (150 px, batch 32),
times the forward pass, the input gradient and the kernel gradient, each jitted alone, with
oneDNN's convolutions (`onednn`), the XLA CPU forms (`cpu`) and plain `lax.conv_general_dilated`
(`plain`), and reports GFLOP/s (2 * N * H' * W' * O * C * 9 per pass) beside a float32
matmul (2048 x 2048, `roofline.py`, as train_step.py) measured in the same run. Prints a table; JSON with --json.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roofline import matmul_gflops  # noqa: E402

flags.DEFINE_integer('image_size', 150, 'input size of the first convolution')
flags.DEFINE_integer('batch_size', 32, 'batch size')
flags.DEFINE_integer('steps', 5, 'timed calls per measurement (after one warm-up call)')
flags.DEFINE_list('layers', ['onednn', 'cpu', 'plain'], 'layer forms to time')
flags.DEFINE_string('json', None, 'write the results here as JSON')
FLAGS = flags.FLAGS

DN = ('NHWC', 'HWIO', 'NHWC')


def _seconds(fn, *args) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / FLAGS.steps


def _shapes(size: int):
  """(input H, C, O) of the small CNN's convolutions: 3x3 'VALID', each followed by a 2x2 pool."""
  shapes, channels = [], 3
  for features in (32, 64, 128, 128):
    shapes.append((size, channels, features))
    size, channels = (size - 2) // 2, features
  return shapes


def main(_):
  from catsdogs_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()  # as main.py does
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax

  from catsdogs_jax.models import layers

  convs = {
      'plain': lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=DN),
      'cpu': lambda x, w: layers.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=DN),
      'onednn': lambda x, w: layers.onednn_conv_general_dilated(
          x, w, (1, 1), 'VALID', dimension_numbers=DN
      ),
  }
  roofline = matmul_gflops()
  rng = np.random.default_rng(0)
  rows = []
  for index, (size, c, o) in enumerate(_shapes(FLAGS.image_size)):
    x = jnp.asarray(rng.normal(size=(FLAGS.batch_size, size, size, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, c, o)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(FLAGS.batch_size, size - 2, size - 2, o)), jnp.float32)
    gflop = 2 * FLAGS.batch_size * (size - 2) ** 2 * o * c * 9 / 1e9
    for forms in FLAGS.layers:
      conv = convs[forms]
      passes = {
          'forward': (jax.jit(conv), (x, w)),
          'input gradient': (
              jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
              (x, w, dy),
          ),
          'kernel gradient': (
              jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
              (x, w, dy),
          ),
      }
      for name, (fn, args) in passes.items():
        seconds = _seconds(fn, *args)
        rows.append(
            {
                'layer': f'conv{index + 1} {size}x{size}x{c}->{o}',
                'forms': forms,
                'pass': name,
                'ms': seconds * 1e3,
                'gflops': gflop / seconds,
                'roofline_fraction': gflop / seconds / roofline,
            }
        )
  print(
      f'batch {FLAGS.batch_size}, {FLAGS.image_size} px, {os.cpu_count()} cores; '
      f'float32 matmul roofline {roofline:.0f} GFLOP/s'
  )
  print(f'{"layer":24} {"forms":7} {"pass":16} {"ms":>8} {"GFLOP/s":>8} {"roofline":>8}')
  for r in rows:
    print(
        f'{r["layer"]:24} {r["forms"]:7} {r["pass"]:16} {r["ms"]:8.1f} {r["gflops"]:8.1f} '
        f'{r["roofline_fraction"]:8.0%}'
    )
  result = {'roofline_gflops': roofline, 'rows': rows}
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(result, f, indent=1)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
