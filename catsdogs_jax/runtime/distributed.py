"""Several processes as one run (one per host, JAX's multi-controller runtime).

`initialize` starts `jax.distributed` when asked: by the coordinator address,
the number of processes and the process id (flags or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or by `auto`, which lets JAX detect them
(SLURM, Open MPI, Kubernetes, Cloud TPU). A single process needs none of it.

After that, every process runs the same program on its own part of the data:
one mesh over all devices (`parallel.create_mesh`), process 0 writes the files.
`check_same` makes sure the processes agree on what they run, and
`any_process` lets them agree on when to stop.

A process that dies takes the others down: JAX's distributed service aborts
them within `heartbeat_timeout` seconds (after its own message naming the task
that stopped sending heartbeats). Restart every process with the same command
to resume from the last checkpoint.
"""

import hashlib
import importlib.metadata
import json
import os
import socket
import time
from typing import Any, Dict, List, Optional

import jax
import numpy as np
from absl import flags, logging

from catsdogs_jax.runtime.workdir_files import differences

ENV_NUM_PROCESSES, ENV_PROCESS_ID = 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'  # JAX reads it too


class DistributedError(RuntimeError):
  """The processes cannot work together; the message says what to check."""


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f'{name}={value!r} is not an integer.') from None


def _split_address(address: str):
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit():
    raise DistributedError(
        f'Coordinator address {address!r} is not HOST:PORT (e.g. '
        '10.0.0.1:1234, the first host and a free port).'
    )
  return host.strip('[]'), int(port)


def free_port(host: str = '127.0.0.1') -> int:
  """A TCP port free on this host now: for a coordinator of processes started on one machine."""
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def wait_for_coordinator(address: str, timeout: float, process_id: int):
  """Waits until `address` accepts TCP connections: JAX would abort, not raise, otherwise."""
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, port), timeout=min(5.0, timeout)).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
            f'Process {process_id} could not reach the coordinator at {address} within '
            f'{timeout:g} s ({e.strerror or e}). Check that process 0 is running (started with '
            f'--process_id=0 and this --coordinator_address), that {host} is the address of '
            f'its host as seen from here, that port {port} is open between the hosts '
            '(firewall), and raise --distributed_timeout if process 0 starts later.'
        ) from None
      time.sleep(0.5)


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    auto: bool = False,
    timeout: int = 300,
    heartbeat_timeout: int = 100,
) -> bool:
  """Starts jax.distributed if asked (see the module doc); returns whether it did.

  Call it before anything else touches JAX's devices.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = _env_int(ENV_NUM_PROCESSES) if num_processes is None else num_processes
  process_id = _env_int(ENV_PROCESS_ID) if process_id is None else process_id
  given = {
      '--coordinator_address': coordinator_address,
      '--num_processes': num_processes,
      '--process_id': process_id,
  }
  if not auto and all(v is None for v in given.values()):
    return False
  missing = [k for k, v in given.items() if v is None]
  if missing and not auto:
    raise DistributedError(
        f'Several processes need {", ".join(missing)} too (or the environment variables '
        f'{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); or pass --distributed '
        'alone to let JAX detect them (SLURM, Open MPI, Kubernetes, Cloud TPU).'
    )
  if not missing:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(
          f'--process_id={process_id} must be in 0..{num_processes - 1} '
          f'for --num_processes={num_processes}.'
      )
    _split_address(coordinator_address)
  # Collectives between the CPU devices of several processes (GPUs use NCCL).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if process_id == 0:
    logging.info(
        'process 0 of %d: coordinator on %s; waiting up to %d s for every process to connect',
        num_processes,
        coordinator_address,
        timeout,
    )
  elif process_id is not None:
    wait_for_coordinator(coordinator_address, timeout, process_id)
  try:
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
    )
  except (ValueError, RuntimeError) as e:  # e.g. auto-detection found no cluster
    raise DistributedError(
        f'jax.distributed could not start: {e}. Pass --coordinator_address, '
        '--num_processes and --process_id.'
    ) from e
  _orbax_barriers_through_the_distributed_client()
  logging.info(
      'process %d of %d (%s), %d local devices of %d; if a process dies, the others '
      'stop within %d s (--heartbeat_timeout): then start all of them again with the '
      'same command to resume',
      jax.process_index(),
      jax.process_count(),
      socket.gethostname(),
      jax.local_device_count(),
      jax.device_count(),
      heartbeat_timeout,
  )
  return True


def _orbax_barriers_through_the_distributed_client():
  """Orbax's barriers between processes as jax.distributed's, not as device collectives.

  A collective barrier from Orbax's background save thread can interleave with the
  train step's collectives in a different order on each process: a deadlock.
  """
  try:
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True
  except (AttributeError, flags.Error):  # flags not parsed (a library caller): Orbax's default
    logging.warning(
        'Could not make Orbax use distributed barriers; several processes may '
        'deadlock while saving. Parse absl flags first (absl.app.run).'
    )


def _allgather_bytes(data: bytes) -> List[bytes]:
  from jax.experimental import multihost_utils

  lengths = multihost_utils.process_allgather(np.array([len(data)], np.int64)).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[: len(data)] = np.frombuffer(data, np.uint8)
  rows = multihost_utils.process_allgather(padded).reshape(len(lengths), -1)
  return [bytes(row[:n]) for row, n in zip(rows, lengths)]


def check_same(what: Dict[str, Any]):
  """Fails on every process, naming the fields, unless `what` (JSON-able) is equal on all of them.

  Compares a hash first; only when hashes differ are the full descriptions exchanged.
  """
  if jax.process_count() == 1:
    return
  text = json.dumps(what, sort_keys=True, default=repr)
  digests = _allgather_bytes(hashlib.sha256(text.encode()).digest())
  if len(set(digests)) == 1:
    return
  texts = [json.loads(t) for t in _allgather_bytes(text.encode())]
  lines = []
  for i, text in enumerate(texts):
    if digests[i] != digests[0]:
      fields = '; '.join(
          f'{k}: {a!r} vs {b!r}' for k, (a, b) in differences(texts[0], text).items()
      )
      lines.append(f'process {i} differs from process 0 in {fields}')
  raise DistributedError(
      'The processes were started with different configs or flags ('
      + '. '.join(lines)
      + '). Start every process with the same command; '
      'only the process id may differ.'
  )


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (a collective: call it on all)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(multihost_utils.process_allgather(np.array([bool(flag)])).any())


def barrier(name: str):
  """Waits until every process gets here (e.g. after process 0 changed files)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


LIBRARIES = (
    'jax',
    'jaxlib',
    'flax',
    'optax',
    'orbax-checkpoint',
    'clu',
    'ml-collections',
    'numpy',
    'tensorflow-cpu',
    'tensorflow',
    'tensorflow-datasets',
)


def environment() -> str:
  versions = []
  for name in LIBRARIES:
    try:
      versions.append(f'{name} {importlib.metadata.version(name)}')
    except importlib.metadata.PackageNotFoundError:
      pass
  devices = ', '.join(f'{d.platform}:{d.id}' for d in jax.devices())
  return (
      f'processes: {jax.process_count()} (this is {jax.process_index()}), '
      f'devices: {jax.device_count()} [{devices}]\nversions: {", ".join(versions)}'
  )
