"""Data parallelism: a 1-D device mesh, batches sharded over it, state replicated."""

import collections
from typing import Iterable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A mesh over all devices of all processes (or the given ones)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
  """Places this process's part of a global batch on its devices."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(batches: Iterable, mesh: Mesh, size: int = 2) -> Iterator:
  """Keeps `size` batches in flight to the devices while the step runs."""
  queue = collections.deque()
  for batch in batches:
    queue.append(shard_batch(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def jit_init(init_fn, mesh: Mesh):
  return jax.jit(init_fn, out_shardings=replicated(mesh))


def jit_train_step(train_step, mesh: Mesh):
  """Jits the train step once: batch split over `data`, state replicated and donated."""
  rep = replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(rep, batch_sharding(mesh)),
      out_shardings=(rep, rep, rep),
      donate_argnums=(0,),
  )


def jit_eval_step(eval_step, mesh: Mesh):
  rep = replicated(mesh)
  return jax.jit(eval_step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=rep)
