"""Command line: train a config, evaluate it, predict with it, and look at it.

  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn
  python main.py --config=configs/small_cnn.py --config.optimizer.learning_rate=1e-3 ...
  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn --mode=evaluate --top_losses=16
  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn --mode=predict \
      --images=photos/ --images='more/*.jpg' --kaggle --plots
  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn --mode=curves
  python main.py --config=configs/vgg16_transfer.py --mode=summary
  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn --mode=feature_maps \
      --layer=conv1 --images=cat.jpg
  python main.py --config=configs/small_cnn.py --workdir=runs/small_cnn --mode=filters
  python main.py --config=configs/small_cnn.py --workdir=runs/lr_find --mode=lr_find
  python main.py --config=configs/small_cnn_aug.py --sweep=configs/sweeps/augment_ablation.py \
      --sweep_seeds=2 --workdir=runs/aug_ablation [--dry_run]
  python main.py --mode=compare --workdirs='runs/aug_ablation/*' [--workdir=OUT]
"""

import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from catsdogs_jax.tools import summary

MODES = (
    'train',
    'evaluate',
    'predict',
    'curves',
    'summary',
    'feature_maps',
    'filters',
    'lr_find',
    'preview_augment',
    'compare',
)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True
)
flags.DEFINE_string(
    'workdir',
    None,
    'Directory for checkpoints, logs, TensorBoard events and pictures (every mode but summary).',
)
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'], '--mode=evaluate: the split.')
flags.DEFINE_integer(
    'step', None, 'Checkpoint step to evaluate, predict with or look inside (default: the best).'
)
flags.DEFINE_integer(
    'top_losses',
    0,
    '--mode=evaluate: also draw the N images with the largest loss (top_losses_<split>.png).',
)
flags.DEFINE_multi_string(
    'images',
    [],
    '--mode=predict/feature_maps: image files, globs or folders (repeat the flag for several).',
)
flags.DEFINE_bool(
    'kaggle', False, '--mode=predict: also write submission.csv (id, dog probability).'
)
flags.DEFINE_bool(
    'plots',
    False,
    '--mode=predict: also write predictions.png (a grid of up to '
    '100 images) and, for one image, prediction.png (its class probabilities).',
)
flags.DEFINE_list('layer', [], '--mode=feature_maps: layer name(s), e.g. block1_conv2.')
flags.DEFINE_enum(
    'activation',
    'relu',
    ['relu', 'none'],
    '--mode=feature_maps: apply ReLU '
    'to the layer output (as Keras layers with activation="relu" return).',
)
flags.DEFINE_string(
    'sweep',
    None,
    '--mode=train: a sweep file (configs/sweeps/*.py); each '
    'variant x seed trains in WORKDIR/<variant>/seed_<seed>, then is evaluated.',
)
flags.DEFINE_integer('sweep_seeds', 1, '--sweep: seeds per variant (config.seed, +1, ...).')
flags.DEFINE_bool('dry_run', False, '--sweep: print the variants and their main.py commands only.')
flags.DEFINE_multi_string('workdirs', [], '--mode=compare: runs or sweep variants (globs allowed).')
# Several processes (hosts): see catsdogs_jax/runtime/distributed.py and the README.
flags.DEFINE_bool(
    'distributed',
    False,
    'Start jax.distributed, letting JAX detect the cluster '
    '(SLURM, Open MPI, Kubernetes, Cloud TPU) for what the flags below leave out.',
)
flags.DEFINE_string(
    'coordinator_address',
    None,
    'HOST:PORT of process 0 (or env '
    'JAX_COORDINATOR_ADDRESS); with the two flags below, starts jax.distributed.',
)
flags.DEFINE_integer('num_processes', None, 'Number of processes (or env JAX_NUM_PROCESSES).')
flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1 (or env JAX_PROCESS_ID).'
)
flags.DEFINE_integer(
    'distributed_timeout',
    300,
    'Seconds to wait for the coordinator and for every process to connect.',
)
flags.DEFINE_integer(
    'heartbeat_timeout',
    100,
    'Seconds after which a silent process counts as dead and the others stop.',
)

MULTI_PROCESS_MODES = ('train', 'evaluate')


def _quiet_orbax(record) -> bool:
  # Orbax logs every file it writes at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def run_sweep(config, workdir):
  from catsdogs_jax.tools import sweep

  runs = sweep.plan(config, sweep.load_sweep(FLAGS.sweep), FLAGS.sweep_seeds, workdir)
  command_line = config_flags.get_override_values(FLAGS['config'])
  commands = sweep.commands(runs, config_flags.get_config_filename(FLAGS['config']), command_line)
  if FLAGS.dry_run:
    for run, command in zip(runs, commands):
      print(f'# {run.variant} seed {run.seed}\n{command}')
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
    json.dump(
        {
            'sweep': FLAGS.sweep,
            'seeds': FLAGS.sweep_seeds,
            'command_line': command_line,
            'commands': commands,
        },
        f,
        indent=1,
        default=repr,
    )
  sweep.run_sweep(runs)


def run(config, workdir, mode):
  from catsdogs_jax.tools import compare, curves, evaluate, layer_views, lr_find, predict, preview
  from catsdogs_jax.training import config_checks, train

  if mode == 'compare':
    rows, out = compare.compare(FLAGS.workdirs, workdir)
    print(compare.markdown(rows))
    logging.info(
        'wrote %s, %s and %s in %s',
        compare.COMPARE_MD,
        compare.COMPARE_CSV,
        compare.COMPARE_PNG,
        out,
    )
  elif mode == 'summary':
    print(summary.config_summary(config))
  elif mode == 'train' and FLAGS.sweep:
    run_sweep(config, workdir)
  elif mode == 'train':
    train.train_and_evaluate(config, workdir, hooks=[curves.WriteCurves()])
  elif mode == 'evaluate':
    evaluate.evaluate_checkpoint(config, workdir, FLAGS.split, FLAGS.step, FLAGS.top_losses)
  elif mode == 'predict':
    predict.predict_images(config, workdir, FLAGS.images, FLAGS.step, FLAGS.kaggle, FLAGS.plots)
  elif mode == 'curves':
    logging.info('wrote %s', curves.write_curves(workdir))
  elif mode == 'feature_maps':
    layer_views.write_feature_maps(
        config, workdir, FLAGS.layer, FLAGS.images, FLAGS.step, FLAGS.activation
    )
  elif mode == 'filters':
    layer_views.write_filters(config, workdir, FLAGS.step)
  elif mode == 'lr_find':
    lr_find.range_test(config, workdir)
  elif mode == 'preview_augment':
    config_checks.validate_config(config)
    preview.write_preview(config, workdir)


def start_processes():
  """jax.distributed when asked; then every process must be running the same command."""
  from catsdogs_jax.runtime import distributed

  if not distributed.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      FLAGS.distributed,
      FLAGS.distributed_timeout,
      FLAGS.heartbeat_timeout,
  ):
    return
  if FLAGS.mode not in MULTI_PROCESS_MODES or FLAGS.sweep or FLAGS.top_losses:
    raise distributed.DistributedError(
        f'--mode={FLAGS.mode}{" --sweep" if FLAGS.sweep else ""}'
        f'{" --top_losses" if FLAGS.top_losses else ""} runs as one process; several processes '
        f'run --mode={" or ".join(MULTI_PROCESS_MODES)} only.'
    )
  config = FLAGS.config.copy_and_resolve_references()
  distributed.check_same(
      {
          'config': json.loads(config.to_json_best_effort()),
          'flags': {name: FLAGS[name].value for name in ('mode', 'workdir', 'split', 'step')},
      }
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.mode == 'compare':
    if not FLAGS.workdirs:
      raise app.UsageError('--mode=compare needs --workdirs=DIR (repeat it, or use a glob).')
  elif FLAGS.config is None:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --config=FILE.')
  elif FLAGS.mode != 'summary' and not FLAGS.workdir:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --workdir=DIR.')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # Importing these touches no device, so jax.distributed can still start below.
  from catsdogs_jax.data import input_pipeline
  from catsdogs_jax.runtime import distributed, preemption, workdir_files
  from catsdogs_jax.training import config_checks, train
  from catsdogs_jax.weights import converted, loading, pretrained

  input_pipeline.keep_tensorflow_off_gpus()
  try:
    start_processes()
    logging.info('%s', distributed.environment())
    if FLAGS.config is not None:
      logging.info('config:\n%s', FLAGS.config)
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except (
      config_checks.ConfigError,
      input_pipeline.DataError,
      workdir_files.WorkdirError,
      loading.WeightsError,
      converted.ConversionError,
      pretrained.PretrainedError,
      FileNotFoundError,
      preemption.Preempted,
      train.NonFiniteLossError,
      distributed.DistributedError,
  ) as e:
    # Mistakes in the command or the data: the message, not a traceback.
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
