"""Models, steps, optimisers and checkpoints import without TensorFlow (e.g. on a bare GPU machine)."""

import ast
import glob
import os
import subprocess
import sys

TF_FREE = (
    'models',
    'models.summary',
    'training.steps',
    'training.train_state',
    'training.optimizers',
    'training.config_checks',
    'training.experiment',
    'training.losses',
    'training.metrics',
    'training.epoch_log',
    'runtime.parallel',
    'runtime.checkpointing',
    'runtime.distributed',
    'runtime.preemption',
    'runtime.workdir_files',
    'data.preprocessing',
    'data.augment',
    'data.batching',
    'data.feature_cache',
    'weights.converted',
    'weights.keras_h5',
    'weights.pytorch',
    'weights.loading',
    'weights.pretrained',
    'weights.convert',
    'tools.summary',
    'tools.evaluate',
)


def test_core_modules_do_not_import_tensorflow():
  code = (
      'import sys\n'
      + ''.join(f'import catsdogs_jax.{m}\n' for m in TF_FREE)
      + 'loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]\n'
      'assert not loaded, loaded\n'
      'import catsdogs_jax.data.input_pipeline\n'
      'assert "tensorflow" in sys.modules\n'
  )
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


# What each package folder may import (its __init__.py says the same); tools/ is imported by none.
ALLOWED = {
    'defaults': set(),
    'registry': set(),
    'runtime': {'registry', 'defaults'},
    'models': {'registry'},
    'data': {'registry', 'defaults', 'models', 'runtime'},
    'weights': {'registry', 'defaults', 'models', 'runtime', 'data'},
    'training': {'registry', 'defaults', 'models', 'runtime', 'data', 'weights'},
    'tools': {'registry', 'defaults', 'models', 'runtime', 'data', 'weights', 'training'},
}


def test_package_folders_import_only_the_folders_below_them():
  package = os.path.join(os.path.dirname(__file__), '..', 'catsdogs_jax')
  wrong = []
  for path in glob.glob(os.path.join(package, '**', '*.py'), recursive=True):
    relative = os.path.relpath(path, package)
    folder = relative.split(os.sep)[0].removesuffix('.py')
    if folder == '__init__':
      continue
    for node in ast.walk(ast.parse(open(path).read())):  # lazy imports inside functions too
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('catsdogs_jax'):
        parts = node.module.split('.')
        used = {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        wrong += [f'{relative} imports {u}' for u in used - ALLOWED[folder] - {folder}]
  assert set(ALLOWED) == {
      f.removesuffix('.py')
      for f in os.listdir(package)
      if not f.startswith('_') and f != '__pycache__'
  }
  assert not wrong, wrong
