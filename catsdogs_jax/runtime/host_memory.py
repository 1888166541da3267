"""Host buffers on transparent huge pages, for CPU training.

XLA:CPU allocates each large buffer of a step afresh with malloc, and glibc serves
allocations above 32 MB with new mmap'd pages, so every step first faults in its big
activations 4 KB at a time: writing a 90 MB array (the small CNN's first activation at
150 px, batch 32) took 90 ms here instead of 5. Where the kernel gives huge pages on
request (`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise`, common), glibc asks
for them when started with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which cuts the faults
512-fold (the small CNN's train step: about 100 -> 145 images/s on 2 cores). glibc reads
its tunables only when a process starts, so `main.py` and the benchmarks restart
themselves once with it (`restart_with_huge_pages`); scripts that import the package can
be started with the variable set.
"""

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_pages_on_request() -> bool:
  """Whether this kernel gives transparent huge pages to memory that asks for them."""
  try:
    with open(_THP) as f:
      return '[madvise]' in f.read()
  except OSError:
    return False


def restart_with_huge_pages() -> None:
  """Re-executes this process (same pid, arguments and interpreter options) with `TUNABLE` set.

  Does nothing when the variable already names `glibc.malloc.hugetlb`, off Linux, where the
  kernel gives huge pages always or never, or with CATSDOGS_HUGE_PAGES=0. Call it first,
  before importing JAX: the process is replaced, nothing it did survives.
  """
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if (
      not sys.platform.startswith('linux')
      or 'glibc.malloc.hugetlb' in tunables
      or os.environ.get('CATSDOGS_HUGE_PAGES', '1') == '0'
      or not huge_pages_on_request()
  ):
    return
  env = dict(os.environ, GLIBC_TUNABLES=f'{tunables}:{TUNABLE}' if tunables else TUNABLE)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
