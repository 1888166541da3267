"""Models, steps, optimisers and checkpoints import without TensorFlow (e.g. on a bare GPU machine)."""

import subprocess
import sys

TF_FREE = ('models', 'steps', 'train_state', 'parallel', 'optimizers', 'checkpointing',
           'validation', 'summary', 'experiment', 'evaluate', 'preprocessing', 'losses', 'metrics',
           'augment', 'batching', 'features', 'convert', 'weights', 'pretrained')


def test_core_modules_do_not_import_tensorflow():
  code = ('import sys\n' + ''.join(f'import catsdogs_jax.{m}\n' for m in TF_FREE) +
          'loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]\n'
          'assert not loaded, loaded\n'
          'import catsdogs_jax.input_pipeline\n'
          'assert "tensorflow" in sys.modules\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
