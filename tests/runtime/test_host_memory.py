"""main.py restarts itself once with glibc asking for huge pages (runtime/host_memory.py)."""

import os
import subprocess
import sys

import pytest

from catsdogs_jax.runtime import host_memory

_SCRIPT = """
import os, sys
print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), flush=True)
from catsdogs_jax.runtime import host_memory
host_memory.restart_with_huge_pages()
print('after', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])
"""


def _run(tmp_path, **env):
  script = tmp_path / 'script.py'
  script.write_text(_SCRIPT)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  environ = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES',)}
  environ.update(PYTHONPATH=root, **env)
  out = subprocess.run(
      [sys.executable, '-u', str(script), '--flag=1'],
      env=environ,
      capture_output=True,
      text=True,
      check=True,
  )
  return [line.split(' ', 3) for line in out.stdout.splitlines()]


@pytest.mark.skipif(
    not (sys.platform.startswith('linux') and host_memory.huge_pages_on_request()),
    reason='the kernel does not give transparent huge pages on request here',
)
def test_restarts_once_in_the_same_process_with_the_tunable(tmp_path):
  lines = _run(tmp_path)
  # Started without it, then the same pid again with it, arguments kept; no third start.
  assert [line[0] for line in lines] == ['start', 'start', 'after']
  assert lines[0][1] == lines[1][1] == lines[2][1]
  assert lines[0][2:] == [''] and lines[1][2] == host_memory.TUNABLE
  assert lines[2][2:] == [host_memory.TUNABLE, "['--flag=1']"]
  # Other tunables are kept, the new one added after them.
  lines = _run(tmp_path, GLIBC_TUNABLES='glibc.malloc.tcache_count=0')
  assert lines[-1][2] == f'glibc.malloc.tcache_count=0:{host_memory.TUNABLE}'


def test_does_not_restart_when_turned_off_or_already_set(tmp_path):
  lines = _run(tmp_path, CATSDOGS_HUGE_PAGES='0')
  assert [line[0] for line in lines] == ['start', 'after']
  lines = _run(tmp_path, GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
  assert [line[0] for line in lines] == ['start', 'after']
  assert lines[-1][2] == 'glibc.malloc.hugetlb=0'
