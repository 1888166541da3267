"""Training loop: bit-for-bit resume, finished runs, and the checks that guard a workdir."""

import json

import jax
import numpy as np
import pytest

from catsdogs_jax.models import onednn
from catsdogs_jax.runtime import checkpointing
from catsdogs_jax.runtime.workdir_files import WorkdirError
from catsdogs_jax.training import epoch_log, experiment, train


def _final_state(config, workdir):
  exp = experiment.build(config, str(workdir), read_only=True)
  state, history = exp.checkpoints.restore(exp.checkpoints.latest_step(), exp.abstract_state())
  return jax.device_get(state), train.History.from_json(history)


def _rows_without_timing(workdir):
  rows = epoch_log.read_csv(str(workdir / epoch_log.LOG_CSV))
  return [{k: v for k, v in r.items() if k not in epoch_log.TIMING_COLUMNS} for r in rows]


def test_resume_gives_the_same_parameters_and_log(make_config, tmp_path):
  config = make_config(num_epochs=2, **{'model.dropout_rate': 0.5})
  straight = tmp_path / 'straight'
  train.train_and_evaluate(config, str(straight))

  resumed = tmp_path / 'resumed'
  train.train_and_evaluate(make_config(num_epochs=1, **{'model.dropout_rate': 0.5}), str(resumed))
  assert len(_rows_without_timing(resumed)) == 1
  train.train_and_evaluate(config, str(resumed))

  a, history_a = _final_state(config, straight)
  b, history_b = _final_state(config, resumed)
  assert int(a.step) == int(b.step) == 6
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit
  assert _rows_without_timing(straight) == _rows_without_timing(resumed)
  assert len(history_a.epochs) == len(history_b.epochs) == 2


def test_a_run_with_train_from_resumes_and_evaluates(make_config, tmp_path):
  """config.json records the resolved trainable layers; the same command resumes."""
  from catsdogs_jax.tools import evaluate

  train.train_and_evaluate(make_config(num_epochs=1, train_from='conv4'), str(tmp_path))
  train.train_and_evaluate(make_config(num_epochs=2, train_from='conv4'), str(tmp_path))
  state, history = _final_state(make_config(num_epochs=2, train_from='conv4'), tmp_path)
  assert int(state.step) == 6 and len(history.epochs) == 2
  result = evaluate.evaluate_checkpoint(
      make_config(num_epochs=2, train_from='conv4'), str(tmp_path), 'test'
  )
  assert result['num_images'] == 10
  with pytest.raises(WorkdirError, match=r"\(trainable\).*train_from: 'conv4' -> 'conv2'"):
    train.train_and_evaluate(make_config(num_epochs=3, train_from='conv2'), str(tmp_path))


def test_finished_run_is_not_retrained(make_config, tmp_path, caplog):
  config = make_config()
  train.train_and_evaluate(config, str(tmp_path))
  step = checkpointing.Checkpoints(str(tmp_path), config).latest_step()
  with caplog.at_level('INFO'):
    history = train.train_and_evaluate(config, str(tmp_path))
  assert 'already finished' in caplog.text
  assert len(history.epochs) == 1
  assert checkpointing.Checkpoints(str(tmp_path), config).latest_step() == step


def test_early_stopping_ends_training_and_is_remembered(make_config, tmp_path):
  # An impossible min_delta: no epoch ever improves, so patience 1 stops after epoch 2.
  config = make_config(
      num_epochs=5,
      **{
          'early_stopping.enabled': True,
          'early_stopping.patience': 1,
          'early_stopping.min_delta': 100.0,
      },
  )
  history = train.train_and_evaluate(config, str(tmp_path))
  assert len(history.epochs) == 2 and 'early stopping' in history.stop_reason
  assert len(train.train_and_evaluate(config, str(tmp_path)).epochs) == 2


def test_plateau_divides_the_learning_rate(make_config, tmp_path):
  config = make_config(
      num_epochs=3,
      **{
          'schedule.name': 'plateau',
          'schedule.plateau_patience': 1,
          'schedule.plateau_min_delta': 100.0,
      },
  )
  history = train.train_and_evaluate(config, str(tmp_path))
  rates = [row['learning_rate'] for row in history.epochs]
  # Epoch 1 sets the best value; epoch 2 does not improve on it (patience 1), so
  # epoch 3 trains at a tenth, as Keras' ReduceLROnPlateau would.
  np.testing.assert_allclose(rates, [1e-4, 1e-4, 1e-5], rtol=1e-5)


def test_workdir_of_another_model_is_refused_before_training(make_config, tmp_path):
  train.train_and_evaluate(make_config(), str(tmp_path))
  other = make_config(**{'model.name': 'vgg16', 'loss': 'softmax'})
  with pytest.raises(
      WorkdirError, match=r'optimizer state \(loss, model.name\).*new --workdir.*init_from'
  ):
    experiment.build(other, str(tmp_path))


def test_checkpoints_keep_the_last_n_and_the_best(make_config, tmp_path):
  config = make_config(**{'checkpoint.keep': 1, 'checkpoint.best_monitor': 'val_accuracy'})
  ckpts = checkpointing.Checkpoints(str(tmp_path), config)
  state = {'w': np.zeros(3, np.float32)}
  for step, accuracy in zip((1, 2, 3, 4), (0.5, 0.9, 0.6, 0.7)):
    ckpts.save(
        step,
        state,
        train.History().to_json(),
        metrics={'val_accuracy': accuracy, 'val_loss': 1 - accuracy},
    )
  ckpts.wait()
  assert sorted(ckpts.manager.all_steps()) == [2, 4]  # the best and the latest
  assert ckpts.best_step() == 2 and ckpts.latest_step() == 4
  with pytest.raises(WorkdirError, match='already holds a checkpoint at step 4'):
    ckpts.save(4, {'w': np.ones(3, np.float32)}, train.History().to_json(), metrics=None)
  ckpts.wait()
  np.testing.assert_array_equal(ckpts.restore(4, state)[0]['w'], np.zeros(3))  # kept as it was


def _one_resnet18_step(make_config, tmp_path, **fields):
  """(params, batch_stats) before and after one train step of ResNet-18 with `fields`."""
  from catsdogs_jax.runtime import parallel
  from catsdogs_jax.training.steps import make_train_step

  config = make_config(
      loss='softmax',
      trainable=('^layer4_', '^fc/'),
      **{
          'data.image_size': 32,
          'model.name': 'resnet18',
          'model.kernel_init': 'he_normal',
          **fields,
      },
  )
  exp = experiment.build(config, str(tmp_path))
  state = exp.init_state()
  before = jax.device_get((state.params, state.batch_stats))
  step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, exp.config), exp.mesh)
  batch = next(exp.pipeline(config.data.train_split).train_epoch(0))
  state, _, finite = step(state, parallel.shard_batch(batch, exp.mesh))
  assert bool(finite)
  return before, jax.device_get((state.params, state.batch_stats))


def test_frozen_batchnorm_keeps_its_statistics_trainable_batchnorm_learns(make_config, tmp_path):
  """As Keras' trainable=False: frozen BatchNorm layers run in inference mode while training."""
  (_, before), (_, after) = _one_resnet18_step(make_config, tmp_path)
  unchanged = lambda *path: all(
      np.array_equal(_at(before, path)[k], _at(after, path)[k]) for k in ('mean', 'var')
  )
  assert unchanged('bn1') and unchanged('layer1_0', 'bn2') and unchanged('layer3_1', 'bn1')
  assert not unchanged('layer4_0', 'bn1') and not unchanged('layer4_1', 'bn2')


def test_batchnorm_running_average_keeps_all_statistics_while_its_scales_train(
    make_config, tmp_path
):
  """Keras' fine-tuning advice (base(x, training=False)): trainable BatchNorm in inference mode."""
  (params0, stats0), (params1, stats1) = _one_resnet18_step(
      make_config, tmp_path, batch_norm_running_average=True
  )
  for a, b in zip(jax.tree.leaves(stats0), jax.tree.leaves(stats1)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(
      params0['layer4_0']['bn1']['scale'], params1['layer4_0']['bn1']['scale']
  )
  np.testing.assert_array_equal(params0['bn1']['scale'], params1['bn1']['scale'])


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_a_workdir_from_before_the_data_group_resumes_and_loads(make_config, tmp_path):
  """config.json of older runs holds the data fields at the top level."""
  from catsdogs_jax.weights import loading

  train.train_and_evaluate(make_config(num_epochs=1), str(tmp_path))
  path = tmp_path / 'config.json'
  saved = json.loads(path.read_text())
  path.write_text(json.dumps({**{k: v for k, v in saved.items() if k != 'data'}, **saved['data']}))
  assert 'image_size' in json.loads(path.read_text())  # the old layout
  history = train.train_and_evaluate(make_config(num_epochs=2), str(tmp_path))
  assert [row['epoch'] for row in history.epochs] == [1, 2]
  assert loading.read(str(tmp_path)).metadata['preprocess'] == saved['data']['preprocess']


def test_profile_writes_a_trace_of_the_steps_asked_for(image_folder, tmp_path):
  import glob

  from conftest import tiny_mlp_config

  fields = {'profile.first_step': 1, 'profile.num_steps': 1}
  train.train_and_evaluate(tiny_mlp_config(image_folder, **fields), str(tmp_path / 'traced'))
  assert glob.glob(str(tmp_path / 'traced' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  train.train_and_evaluate(tiny_mlp_config(image_folder), str(tmp_path / 'plain'))
  assert not (tmp_path / 'plain' / 'plugins').exists()  # profile.num_steps=0: no trace


def _primitives(jaxpr):
  """(primitive name, input dtypes) of every operation, inside nested jaxprs too."""
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name, [getattr(v.aval, 'dtype', None) for v in eqn.invars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr holds its Jaxpr
        if hasattr(sub, 'eqns'):
          yield from _primitives(sub)


def _three_steps(config, batch):
  """(first parameters, losses, final state, convolution input dtypes) of 3 steps on one batch.

  The model is ResNet-18 cut to one stage of one block: a convolution, BatchNorm,
  a residual block and the dense layer, compiled in seconds.
  """
  from catsdogs_jax import models
  from catsdogs_jax.training import optimizers
  from catsdogs_jax.training.steps import make_train_step
  from catsdogs_jax.training.train_state import make_init_fn

  model = models.create_model(config).clone(stage_sizes=(1,))
  tx, _ = optimizers.create_optimizer(config, 10)
  init = make_init_fn(model, tx, optimizers.create_plateau(config), batch['image'].shape[1:])
  state = init(jax.random.PRNGKey(0))
  first = jax.device_get(state.params)
  step = jax.jit(make_train_step(model, tx, config))
  convolutions = [
      dtypes
      for name, dtypes in _primitives(jax.make_jaxpr(step)(state, batch).jaxpr)
      if name in ('conv_general_dilated', 'custom_partitioning')  # plain/cpu forms, oneDNN's calls
  ]
  losses = []
  for _ in range(3):
    state, metrics, finite = step(state, batch)
    assert bool(finite)
    losses.append(float(metrics.compute()['loss']))
  return first, losses, jax.device_get(state), convolutions


@pytest.mark.parametrize(
    'layers',
    [
        'plain',  # the forms a GPU runs
        'cpu',
        pytest.param(
            'onednn',
            marks=pytest.mark.skipif(not onednn.load().loaded, reason=onednn.load().detail),
        ),
    ],
)
def test_a_bfloat16_step_computes_in_bfloat16_and_keeps_float32_state(make_config, layers):
  """config.half_precision (the GPU configs' setting), run on the CPU."""
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  batch = {
      'image': rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
      'label': np.array([0, 1] * 4, np.int32),
      'mask': np.ones(8, np.float32),
  }
  fields = {
      'model.name': 'resnet18',
      'model.layers': layers,
      'data.image_size': 32,
      'loss': 'softmax',
      'optimizer.name': 'sgd',
      'optimizer.learning_rate': 0.01,
  }
  start, half_losses, half, half_convs = _three_steps(
      make_config(half_precision=True, **fields), batch
  )
  _, full_losses, full, full_convs = _three_steps(
      make_config(half_precision=False, **fields), batch
  )

  # Every convolution, forward and backward, reads bfloat16 with half_precision; float32 without.
  assert half_convs and all(d == [jnp.bfloat16] * 2 for d in half_convs)
  assert full_convs and all(d == [jnp.float32] * 2 for d in full_convs)
  # Parameters, BatchNorm statistics and the optimizer's state stay float32.
  for state in (half, full):
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    assert all(x.dtype == np.float32 for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
  # The float32 losses to bfloat16's precision (about 3 digits), yet not the same numbers.
  assert np.isfinite(half_losses).all() and half_losses[-1] < 0.8 * half_losses[0]
  np.testing.assert_allclose(half_losses, full_losses, rtol=2e-2)
  assert half_losses != full_losses
  # The parameters moved as in float32.
  moved = lambda state: np.concatenate(
      [np.ravel(a - b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(start))]
  )
  assert np.corrcoef(moved(half), moved(full))[0, 1] > 0.99
