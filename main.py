"""Command line: train a config, or evaluate a workdir's best checkpoint.

  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn
  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn --mode=evaluate
  python main.py --config=configs/small_cnn.py --config.optimizer.learning_rate=1e-3 ...
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from catsdogs_jax import summary

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and TensorBoard events.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'preview_augment'], 'What to do.')
flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'], '--mode=evaluate: the split.')
flags.DEFINE_integer('step', None, '--mode=evaluate: checkpoint step (default: the best).')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_orbax(record) -> bool:
  # Orbax logs every file it writes at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  logging.info('%s', summary.environment())
  logging.info('config:\n%s', FLAGS.config)
  from catsdogs_jax import (checkpointing, convert, evaluate, input_pipeline, preview, train,
                            validation, weights)
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'preview_augment':
      validation.validate_config(FLAGS.config)
      preview.write_preview(FLAGS.config, FLAGS.workdir)
    else:
      evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.step)
  except (validation.ConfigError, input_pipeline.DataError, checkpointing.WorkdirError,
          weights.WeightsError, convert.ConversionError, FileNotFoundError) as e:
    # Mistakes in the command or the data: the message, not a traceback.
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
