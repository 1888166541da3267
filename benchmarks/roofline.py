"""The float32 matmul roofline the speed benchmarks report against, measured one way for all.

Imported by `train_step.py` and `conv_layers.py` (run as scripts from this folder).
"""

import time


def timed(step, args, steps: int) -> float:
  """Seconds per call of `step(*args) -> new first arg`, after two warm-up calls."""
  import jax

  state, rest = args[0], args[1:]
  for _ in range(2):
    state = step(state, *rest)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state, *rest)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


def matmul_gflops(dtype='float32', n: int = 2048) -> float:
  """GFLOP/s of an n x n matmul in XLA, chained 10 times."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), dtype)
  seconds = timed(jax.jit(lambda a: (a @ a) * (1.0 / n)), (a,), 10)
  return 2 * n**3 / seconds / 1e9
