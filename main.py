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
import re
import sys
import traceback

if __name__ == '__main__':  # before JAX loads: this replaces the process once (see host_memory)
  from catsdogs_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()

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
    'kaggle', False, '--mode=predict: also write submission_NAME.csv (id, dog probability).'
)
flags.DEFINE_bool(
    'plots',
    False,
    '--mode=predict: also write predictions_NAME.png (a grid of up to 100 images) and, for one '
    'image, prediction_NAME.png (it beside its class probabilities).',
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

flags.DEFINE_bool(
    'verbose',
    False,
    "Show every library's log lines with absl's prefixes, and tracebacks with errors.",
)

MULTI_PROCESS_MODES = ('train', 'evaluate')
# Modes that read a trained workdir: without --config they use its config.json.
AFTER_TRAINING_MODES = ('evaluate', 'predict', 'summary', 'feature_maps', 'filters', 'lr_find')
CONFIG_FREE_MODES = ('curves', 'compare')  # read only files: no config needed


# main.py and the package: everything else is third-party.
_OWN_CODE = (
    os.path.abspath(__file__),
    os.path.dirname(os.path.dirname(os.path.abspath(summary.__file__))),
)


# Orbax warnings about what we asked for: reading checkpoints read only, or weights without
# Orbax's metadata file (init_from a converted folder).
_EXPECTED_WARNINGS = ('has no dataset_info.json',)  # tfds, looking for a dataset not prepared yet
# (Orbax's expected ones are left out where they arise: checkpointing.expected_orbax_warnings_left_out)


def _ours_or_warning(record) -> bool:
  # Third-party INFO (Orbax's every file, clu's notes, jax's backend search) stays out of the way.
  if record.pathname.startswith(_OWN_CODE):
    return True
  message = record.getMessage()
  return record.levelno >= std_logging.WARNING and not any(w in message for w in _EXPECTED_WARNINGS)


class _PlainFormatter(std_logging.Formatter):
  """Our lines as they are; warnings and errors say so (absl's prefixes with --verbose)."""

  def format(self, record):
    message = record.getMessage()
    if record.levelno >= std_logging.ERROR:
      return f'error: {message}'
    return f'warning: {message}' if record.levelno >= std_logging.WARNING else message


def setup_logging(verbose: bool):
  handler = logging.get_absl_handler()
  if not verbose:
    handler.addFilter(_ours_or_warning)
    handler.setFormatter(_PlainFormatter())
    _import_tensorflow_quietly()


def _import_tensorflow_quietly():
  """Imports TensorFlow with its C++ stderr (file descriptor 2) closed for the import only: its
  oneDNN notice is written before its logging starts, so no setting turns it off. A failing
  import still raises, and says why, after stderr is back."""
  import importlib.util

  if importlib.util.find_spec('tensorflow') is None:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        import tensorflow  # noqa: F401
      except Exception:
        pass  # the input pipeline's own import reports it
  finally:
    os.dup2(saved, 2)
    os.close(saved)


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


def start_processes(config):
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
  config = config.copy_and_resolve_references()
  distributed.check_same(
      {
          'config': json.loads(config.to_json_best_effort()),
          'flags': {name: FLAGS[name].value for name in ('mode', 'workdir', 'split', 'step')},
      }
  )


class CommandError(Exception):
  """A flag missing or wrong: one line, not absl's page of usage."""


def mode_config(mode: str, workdir):
  """The config a mode runs with: --config, checked against the workdir's run, or the run's own."""
  from catsdogs_jax.runtime import workdir_files

  if mode in CONFIG_FREE_MODES:
    return FLAGS.config
  has_run = bool(workdir) and os.path.exists(os.path.join(workdir, workdir_files.CONFIG_FILE))
  if mode in AFTER_TRAINING_MODES and has_run:
    if FLAGS.config is None:
      return workdir_files.read_run_config(workdir)
    workdir_files.check_after_training_config(
        workdir, FLAGS.config, config_flags.get_override_values(FLAGS['config'])
    )
    return FLAGS.config
  if FLAGS.config is None:
    hint = ''
    if mode in AFTER_TRAINING_MODES:
      hint = (
          f', or a --workdir that training wrote ({workdir!r} has no {workdir_files.CONFIG_FILE})'
      )
    raise CommandError(f'--mode={mode} needs --config=FILE{hint}.')
  return FLAGS.config


def config_overview(config) -> str:
  if FLAGS.config is None:
    source, overrides = f'of the run in {FLAGS.workdir}', {}
  else:
    source = config_flags.get_config_filename(FLAGS['config'])
    overrides = config_flags.get_override_values(FLAGS['config'])
  lines = summary.config_overview(config, source, overrides)
  return lines if FLAGS.mode != 'train' else f'{lines}\n  every field: {FLAGS.workdir}/config.json'


def usage_error(message: str) -> str:
  return f'error: {message} (python main.py --help lists the flags)'


def main(argv):
  if len(argv) > 1:
    sys.exit(usage_error(f'Unexpected arguments: {" ".join(argv[1:])}'))
  if FLAGS.mode == 'compare':
    if not FLAGS.workdirs:
      sys.exit(usage_error('--mode=compare needs --workdirs=DIR (repeat it, or use a glob).'))
  elif FLAGS.mode != 'summary' and not FLAGS.workdir:
    sys.exit(usage_error(f'--mode={FLAGS.mode} needs --workdir=DIR.'))
  elif FLAGS.mode == 'summary' and FLAGS.config is None and not FLAGS.workdir:
    sys.exit(usage_error('--mode=summary needs --config=FILE or --workdir=DIR.'))
  setup_logging(FLAGS.verbose)
  # Importing these touches no device, so jax.distributed can still start below.
  from catsdogs_jax.data import input_pipeline
  from catsdogs_jax.runtime import distributed, preemption, workdir_files
  from catsdogs_jax.training import config_checks, train
  from catsdogs_jax.weights import converted, loading, pretrained

  input_pipeline.keep_tensorflow_off_gpus()
  try:
    config = mode_config(FLAGS.mode, FLAGS.workdir)
    start_processes(config)
    logging.info('%s', distributed.environment())
    if config is not None and FLAGS.mode != 'summary':
      logging.info('%s', config_overview(config))
      if FLAGS.verbose:
        logging.info('config:\n%s', config)
    run(config, FLAGS.workdir, FLAGS.mode)
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
      CommandError,
  ) as e:
    # Mistakes in the command or the data: the message once, not a traceback.
    if FLAGS.verbose:
      raise
    sys.exit(f'error: {e}')


def _config_error(e: Exception, argv) -> str:
  """A config field that does not exist, or a config file that fails, as one line."""
  frames = [
      f
      for f in traceback.extract_tb(e.__traceback__)
      if 'site-packages' not in f.filename and f.filename != os.path.abspath(__file__)
  ]
  inner = e.args[0] if e.args else e
  text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(e)
  first, _, hint = text.partition('\n')  # ml_collections: the key, then 'Did you mean ...'
  missing = re.search(r'Key "([^"]+)" does not exist', first)
  if isinstance(e, AttributeError) and (missing or isinstance(inner, KeyError)):
    name = missing.group(1) if missing else first.strip('\'"')
    flag = next(
        (a.split('=')[0] for a in argv if a.startswith('--config.') and name in a.split('=')[0]),
        None,
    )
    where = f'{frames[-1].filename}, line {frames[-1].lineno}' if frames else flag or '--config'
    return (
        f'{where}: the config has no field {name!r}. {hint} '
        '(python main.py --help lists every field)'
    )
  where = f' ({frames[-1].filename}, line {frames[-1].lineno})' if frames else ''
  return f'{type(e).__name__} while reading the config{where}: {" ".join(text.split())}'


def parse_flags(argv):
  """absl's flag parsing, with its errors (and ml_collections') as one line each."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(usage_error(' '.join(str(e).split())))
  except (AttributeError, KeyError, TypeError, ValueError, ImportError, SyntaxError) as e:
    if '--verbose' in argv:
      raise
    sys.exit(f'error: {_config_error(e, argv)}')


def config_help() -> str:
  """Every config field with its default and meaning, grouped (from catsdogs_jax/defaults.py)."""
  from catsdogs_jax import defaults

  config = defaults.get_config()
  lines = [
      '',
      'Config fields (--config.FIELD=VALUE after --config=FILE; every config starts from these',
      'defaults, catsdogs_jax/defaults.py, which configs/default.py is), in groups:',
  ]
  group = ''  # top-level fields come under '(top level)'
  for key, comment in defaults.field_comments().items():
    value = defaults.get_field(config, key)
    if hasattr(value, 'keys'):  # a group's own line: its heading
      group = key
      lines.append(f'  {key}.*' + (f': {comment}' if comment else ''))
      continue
    if '.' not in key and group is not None:
      group = None  # back at the top level
      lines.append('  (top level)')
    lines.append(f'    {key}={value!r}  {comment}'.rstrip())
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  if {'--help', '-h', '-?', '--helpshort', '--helpfull'} & set(sys.argv):
    __doc__ += config_help()  # absl prints the module's docstring with --help
  app.run(main, flags_parser=parse_flags)
