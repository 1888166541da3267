"""Models, steps, optimisers and checkpoints import without TensorFlow (e.g. on a bare GPU machine)."""

import subprocess
import sys

TF_FREE = ('models', 'models.summary', 'training.steps', 'training.train_state', 'training.optimizers', 'training.config_checks', 'training.experiment',
           'training.losses', 'training.metrics', 'training.epoch_log', 'runtime.parallel',
           'runtime.checkpointing', 'runtime.distributed', 'runtime.preemption',
           'runtime.workdir_files', 'data.preprocessing', 'data.augment', 'data.batching',
           'data.feature_cache', 'weights.converted', 'weights.keras_h5', 'weights.pytorch',
           'weights.loading', 'weights.pretrained', 'weights.convert', 'tools.summary',
           'tools.evaluate')


def test_core_modules_do_not_import_tensorflow():
  code = ('import sys\n' + ''.join(f'import catsdogs_jax.{m}\n' for m in TF_FREE) +
          'loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]\n'
          'assert not loaded, loaded\n'
          'import catsdogs_jax.data.input_pipeline\n'
          'assert "tensorflow" in sys.modules\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
