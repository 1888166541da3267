"""SIGTERM and SIGINT (SLURM, Kubernetes, Ctrl-C): finish the step, checkpoint it, exit saying how to resume.

A second Ctrl-C exits at once. Signals can only be caught in the main thread;
elsewhere (a library caller's worker thread) the guard does nothing. Several
processes stop together: they agree at log steps and epoch ends, where a host
sync happens anyway, so a signal to any of them stops all of them there.
"""

import signal
import threading
from typing import Optional

import jax
from absl import logging

from catsdogs_jax.runtime import distributed

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal after checkpointing; the message says how to resume."""


class Guard:
  """Context manager: `received` names the first signal caught, or is None."""

  def __init__(self):
    self.received: Optional[str] = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt('second Ctrl-C: exiting without a checkpoint')
    self.received = signal.Signals(signum).name
    logging.warning(
        '%s received: finishing the current step, then writing a checkpoint '
        '(press Ctrl-C again to exit at once, without one).',
        self.received,
    )

  def stop(self, sync_point: bool) -> bool:
    """Whether to stop now. With several processes, only at a `sync_point` (a collective: all call it)."""
    if jax.process_count() == 1:
      return self.received is not None
    if not sync_point:
      return False
    if distributed.any_process(self.received is not None) and self.received is None:
      self.received = 'A signal to another process (SIGTERM or SIGINT)'
    return self.received is not None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False
