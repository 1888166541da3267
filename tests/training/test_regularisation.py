"""Label smoothing, mixup / CutMix and the average of the weights (config.ema).

The losses are checked against Keras', the average against optax.ema and a plain loop, the
mixing by the properties timm's Mixup has; every option off is today's step, bit for bit.
"""

import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from catsdogs_jax import models
from catsdogs_jax.runtime import checkpointing
from catsdogs_jax.runtime.workdir_files import WorkdirError
from catsdogs_jax.training import config_checks, epoch_log, experiment, losses, optimizers, train
from catsdogs_jax.training.steps import (
    cutmix,
    cutmix_box,
    inference_variables,
    make_eval_step,
    make_train_step,
    mix_batch,
    mixup,
)
from catsdogs_jax.training.train_state import TrainState, ema_enabled, make_init_fn
from catsdogs_jax.weights import loading
from configs import default

from conftest import override, tiny_mlp_config


def _keras():
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  return pytest.importorskip('keras')


# ----- label smoothing


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_sigmoid_label_smoothing_is_keras_binary_crossentropy(smoothing):
  keras = _keras()
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (16, 1)).astype(np.float32)
  labels = rng.integers(0, 2, 16).astype(np.int32)
  ours = losses.soft_per_example_loss(
      jnp.asarray(logits), losses.soft_targets(labels, 2, smoothing), 'sigmoid'
  )
  bce = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing, reduction=None)
  expected = np.asarray(bce(labels[:, None].astype(np.float32), logits))
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_softmax_label_smoothing_is_keras_categorical_crossentropy(smoothing):
  keras = _keras()
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (16, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 16).astype(np.int32)
  ours = losses.soft_per_example_loss(
      jnp.asarray(logits), losses.soft_targets(labels, 5, smoothing), 'softmax'
  )
  cce = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=smoothing, reduction=None
  )
  expected = np.asarray(cce(np.eye(5, dtype=np.float32)[labels], logits))
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
  if not smoothing:  # one-hot targets score as the integer labels do
    np.testing.assert_allclose(
        ours, losses.per_example_loss(jnp.asarray(logits), labels, 'softmax'), rtol=1e-6
    )


# ----- mixup and CutMix


def _batch(n=8, size=6, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0, 1, (n, size, size + 1, 3)), jnp.float32)  # not square
  labels = jnp.asarray(np.arange(n) % 2, jnp.int32)
  return images, labels


def test_mixup_with_a_known_lambda_is_the_convex_mix_of_images_and_targets():
  images, labels = _batch()
  targets = losses.soft_targets(labels, 2, 0.1)
  mixed, mixed_targets = mixup(images, targets, 0.3)
  np.testing.assert_allclose(mixed, 0.3 * images + 0.7 * images[::-1], rtol=1e-6)
  np.testing.assert_allclose(mixed_targets, 0.3 * targets + 0.7 * targets[::-1], rtol=1e-6)
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  # Label smoothing then mixing: the label's weight is 0.3 * 0.95 + 0.7 * 0.05.
  np.testing.assert_allclose(mixed_targets[0], [0.3 * 0.95 + 0.7 * 0.05, 0.3 * 0.05 + 0.7 * 0.95])


def test_a_cutmix_box_pastes_exactly_the_partners_pixels_and_lam_is_the_unpasted_area():
  images, labels = _batch()
  targets = losses.soft_targets(labels, 2)
  box = (1, 4, 2, 6)  # rows 1-3, columns 2-5: 12 of 42 pixels
  mixed, mixed_targets, lam = cutmix(images, targets, box)
  inside = np.zeros(images.shape[1:3], bool)
  inside[1:4, 2:6] = True
  np.testing.assert_array_equal(np.asarray(mixed)[:, inside], np.asarray(images[::-1])[:, inside])
  np.testing.assert_array_equal(np.asarray(mixed)[:, ~inside], np.asarray(images)[:, ~inside])
  assert float(lam) == pytest.approx(1 - 12 / 42)
  np.testing.assert_allclose(mixed_targets, lam * targets + (1 - lam) * targets[::-1], rtol=1e-6)
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_boxes_follow_lam_and_stay_in_the_image():
  for i, lam in enumerate([0.0, 0.25, 0.5, 0.9, 1.0]):
    for j in range(20):
      top, bottom, left, right = map(
          int, cutmix_box(jax.random.PRNGKey(100 * i + j), jnp.float32(lam), 20, 30)
      )
      assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 30
      # timm's box: sides floor(size * sqrt(1 - lam)) (rounded to even) before clipping
      assert bottom - top <= int(20 * np.sqrt(1 - lam)) and right - left <= int(
          30 * np.sqrt(1 - lam)
      )
  assert (
      cutmix_box(jax.random.PRNGKey(0), jnp.float32(1.0), 20, 30)[0]
      == cutmix_box(jax.random.PRNGKey(0), jnp.float32(1.0), 20, 30)[1]
  )  # lam 1: an empty box


def _mix_cfg(**fields):
  return override(default.get_config(), **{f'mixup.{k}': v for k, v in fields.items()}).mixup


def _mix_many(cfg, n=300, size=6):
  images, labels = _batch(size=size)
  targets = losses.soft_targets(labels, 2)
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  out = jax.jit(jax.vmap(lambda k: mix_batch(k, images, targets, cfg)))(keys)
  return images, targets, jax.device_get(out)


def test_mix_batch_mixup_draws_beta_lam_and_mixes_with_it():
  images, targets, (mixed, mixed_targets, lam) = _mix_many(_mix_cfg(mixup_alpha=0.4), n=4000)
  assert 0 <= lam.min() and lam.max() <= 1
  reference = np.random.default_rng(0).beta(0.4, 0.4, 100_000)
  quantiles = np.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(
      np.quantile(lam, quantiles), np.quantile(reference, quantiles), atol=0.04
  )
  for i in range(5):
    np.testing.assert_allclose(
        mixed[i], lam[i] * images + (1 - lam[i]) * images[::-1], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(mixed_targets[i], lam[i] * targets + (1 - lam[i]) * targets[::-1])
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)


def test_mix_batch_cutmix_pastes_boxes_and_corrects_lam():
  images, targets, (mixed, mixed_targets, lam) = _mix_many(_mix_cfg(cutmix_alpha=1.0), size=16)
  own = np.all(mixed == np.asarray(images)[None], axis=-1)  # [N, B, H, W]
  partners = np.all(mixed == np.asarray(images[::-1])[None], axis=-1)
  assert np.all(own | partners)  # every pixel is the image's or its partner's
  pasted = partners[:, 0].mean(axis=(1, 2))  # image 0 and its partner differ everywhere
  np.testing.assert_allclose(lam, 1 - pasted, atol=1e-6)
  np.testing.assert_allclose(mixed_targets[:, 0, 0], lam, atol=1e-6)  # labels 0 / 1 partners
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  # Boxes clipped at the border paste less than 1 - lam of the draw (timm's correct_lam).
  assert (lam < 1).mean() > 0.9 and lam.min() < 0.4


def test_mix_batch_prob_and_switch_prob():
  images, targets, (mixed, mixed_targets, lam) = _mix_many(
      _mix_cfg(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5, switch_prob=0.75)
  )
  unmixed = lam == 1.0
  assert 0.4 < unmixed.mean() < 0.6
  np.testing.assert_array_equal(mixed[unmixed], np.broadcast_to(images, mixed[unmixed].shape))
  np.testing.assert_array_equal(
      mixed_targets[unmixed], np.broadcast_to(targets, mixed_targets[unmixed].shape)
  )
  # CutMix batches: every pixel from one image or the other; mixup ones: blends.
  pixelwise = np.all(
      (mixed == np.asarray(images)[None]) | (mixed == np.asarray(images[::-1])[None]),
      axis=(1, 2, 3, 4),
  )
  assert 0.65 < pixelwise[~unmixed].mean() < 0.85


# ----- the train step


def _tiny(**fields):
  return override(
      default.get_config(),
      **{
          'model.name': 'mnist_mlp',
          'data.image_size': 8,
          'loss': 'softmax',
          'optimizer.name': 'sgd',
          'optimizer.learning_rate': 0.1,
          'optimizer.momentum': 0.9,
          'model.dropout_rate': 0.5,
          'augment.horizontal_flip': True,
          **fields,
      },
  )


def _fixed_batch(size=8, n=8):
  rng = np.random.default_rng(0)
  return {
      'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      'label': np.array([0, 1] * (n // 2), np.int32),
      'mask': np.ones(n, np.float32),
  }


def _run_steps(config, batch, num_steps=3, model=None):
  """States (initial first) and metrics of `num_steps` train steps on `batch`; and the step."""
  model = models.create_model(config) if model is None else model
  tx, _ = optimizers.create_optimizer(config, 10)
  init = make_init_fn(
      model,
      tx,
      optimizers.create_plateau(config),
      batch['image'].shape[1:],
      ema=ema_enabled(config),
  )
  state = jax.jit(init)(jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(model, tx, config))
  states, metrics = [jax.device_get(state)], []
  for _ in range(num_steps):
    state, m, finite = step(state, batch)
    assert bool(finite)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m.compute()))
  return states, metrics, step


def test_every_option_off_is_the_plain_step_bit_for_bit():
  """Off means off: other values of the options' own settings change no operation and no bit."""
  batch = _fixed_batch()
  plain, plain_metrics, plain_step = _run_steps(_tiny(), batch)
  inert = _tiny(
      **{'mixup.prob': 0.3, 'mixup.switch_prob': 0.9, 'ema.warmup_power': 0.5, 'loss': 'softmax'}
  )
  other, other_metrics, other_step = _run_steps(inert, batch)
  assert plain[-1].ema == {} and other[-1].ema == {}
  jax.tree.map(np.testing.assert_array_equal, plain, other)
  jax.tree.map(np.testing.assert_array_equal, plain_metrics, other_metrics)
  jaxpr = lambda step: str(jax.make_jaxpr(step)(plain[0], batch))
  assert jaxpr(plain_step) == jaxpr(other_step)
  assert 'one_hot' not in jaxpr(plain_step) and 'lgamma' not in jaxpr(plain_step)


def test_soft_targets_that_are_one_hot_train_as_the_labels():
  """Mixing that never mixes (prob 0): one-hot targets, the same training to float precision."""
  batch = _fixed_batch()
  plain, plain_metrics, _ = _run_steps(_tiny(), batch)
  soft, soft_metrics, _ = _run_steps(_tiny(**{'mixup.mixup_alpha': 1.0, 'mixup.prob': 0.0}), batch)
  for a, b in zip(jax.tree.leaves(plain[-1].params), jax.tree.leaves(soft[-1].params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(plain_metrics, soft_metrics):
    assert float(a['loss']) == pytest.approx(float(b['loss']), rel=1e-5)
    assert float(a['accuracy']) == float(b['accuracy'])


def test_label_smoothing_trains_on_the_smoothed_loss():
  batch = _fixed_batch()
  config = _tiny(
      label_smoothing=0.2, **{'model.dropout_rate': 0.0, 'augment.horizontal_flip': False}
  )
  states, metrics, _ = _run_steps(config, batch, num_steps=1)
  model = models.create_model(config)
  logits = model.apply({'params': states[0].params}, batch['image'] / 255.0, train=False)
  cce = _keras().losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
  expected = float(cce(np.eye(2, dtype=np.float32)[batch['label']], np.asarray(logits)))
  assert float(metrics[0]['loss']) == pytest.approx(expected, rel=1e-5)


def test_train_accuracy_under_mixing_counts_the_dominant_label():
  """A brightness classifier on black cats and white dogs, mixed with lam near 0 or 1
  (Beta(0.01, 0.01)): each mixed image looks like, and counts as, its dominant one."""
  batch = _fixed_batch()
  batch['label'] = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)  # partners: the other label
  batch['image'] = np.repeat(batch['label'] * 255, 8 * 8 * 3).reshape(8, 8, 8, 3).astype(np.uint8)
  config = _tiny(
      **{'mixup.mixup_alpha': 0.01, 'augment.horizontal_flip': False, 'model.dropout_rate': 0.0}
  )
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, 10)
  init = make_init_fn(model, tx, optimizers.create_plateau(config), batch['image'].shape[1:])
  state = init(jax.random.PRNGKey(0))
  params = jax.tree.map(jnp.zeros_like, state.params)
  hidden = params['hidden']['kernel'].at[:, 0].set(1.0 / (8 * 8 * 3))  # unit 0: mean brightness
  logits = params['logits']['kernel'].at[0].set(jnp.array([-10.0, 10.0]))
  params = {
      'hidden': {**params['hidden'], 'kernel': hidden},
      'logits': {'kernel': logits, 'bias': jnp.array([5.0, -5.0])},
  }
  step = jax.jit(make_train_step(model, tx, config))
  accuracies = [
      float(step(state.replace(params=params, step=jnp.int32(i)), batch)[1].compute()['accuracy'])
      for i in range(24)
  ]
  # About half the draws have lam < 1/2: against their own labels those would score 0.
  assert accuracies == [1.0] * 24


# ----- the average of the weights


def test_ema_of_the_parameters_is_optax_ema():
  batch = _fixed_batch()
  config = _tiny(**{'ema.decay': 0.8, 'ema.warmup_power': 0.0})
  states, _, _ = _run_steps(config, batch, num_steps=4)
  tx = optax.ema(0.8, debias=False)
  reference = optax.EmaState(count=jnp.zeros((), jnp.int32), ema=states[0].params)
  for state in states[1:]:
    _, reference = tx.update(state.params, reference)
    for a, b in zip(jax.tree.leaves(state.ema['params']), jax.tree.leaves(reference.ema)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not np.allclose(
      states[-1].ema['params']['logits']['kernel'], states[-1].params['logits']['kernel']
  )


def test_ema_warmup_and_batch_norm_statistics_follow_a_plain_loop():
  batch = _fixed_batch(size=32)
  config = _tiny(
      **{
          'model.name': 'resnet18',
          'data.image_size': 32,
          'optimizer.learning_rate': 0.01,
          'model.dropout_rate': 0.0,
          'ema.decay': 0.9,
          'ema.warmup_power': 0.75,
      }
  )
  model = models.create_model(config).clone(stage_sizes=(1,))
  states, _, _ = _run_steps(config, batch, num_steps=3, model=model)
  flat = lambda s: [np.float64(x) for x in jax.tree.leaves((s.params, s.batch_stats))]
  ema = flat(states[0])
  for t, state in enumerate(states[1:], start=1):
    decay = min(0.9, 1 - (1 + t) ** -0.75)  # timm ModelEmaV3's warm-up, gamma 1
    ema = [e + (1 - decay) * (v - e) for e, v in zip(ema, flat(state))]
    ours = jax.tree.leaves((state.ema['params'], state.ema['batch_stats']))
    for a, b in zip(ours, ema):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert states[-1].batch_stats and states[-1].ema['batch_stats']


def test_evaluation_uses_the_average():
  batch = _fixed_batch()
  config = _tiny(**{'ema.decay': 0.9})
  states, _, _ = _run_steps(config, batch, num_steps=3)
  state = states[-1]
  eval_step = jax.jit(make_eval_step(models.create_model(config), config))
  averaged = state.replace(params=state.ema['params'], ema={})
  assert inference_variables(state) == {'params': state.ema['params']}  # no BatchNorm here
  ours = eval_step(state, batch).compute()
  assert float(ours['loss']) == float(eval_step(averaged, batch).compute()['loss'])
  assert float(ours['loss']) != float(eval_step(state.replace(ema={}), batch).compute()['loss'])


# ----- runs: resume, evaluate, and workdirs from before these options


def _final(config, workdir):
  exp = experiment.build(config, str(workdir), read_only=True)
  try:
    state, history = exp.checkpoints.restore(exp.checkpoints.latest_step(), exp.abstract_state())
  finally:
    exp.checkpoints.close()
  return jax.device_get(state), train.History.from_json(history)


def _rows(workdir):
  rows = epoch_log.read_csv(str(workdir / epoch_log.LOG_CSV))
  return [{k: v for k, v in r.items() if k not in epoch_log.TIMING_COLUMNS} for r in rows]


ALL_ON = {
    'label_smoothing': 0.1,
    'mixup.mixup_alpha': 0.8,
    'mixup.cutmix_alpha': 1.0,
    'ema.decay': 0.9,
    'model.dropout_rate': 0.3,
}


def test_a_resumed_run_with_every_option_on_is_the_uninterrupted_one(image_folder, tmp_path):
  from catsdogs_jax.tools import evaluate

  config = tiny_mlp_config(image_folder, num_epochs=2, **ALL_ON)
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  train.train_and_evaluate(config, str(straight))
  train.train_and_evaluate(tiny_mlp_config(image_folder, num_epochs=1, **ALL_ON), str(resumed))
  train.train_and_evaluate(config, str(resumed))
  a, history = _final(config, straight)
  b, _ = _final(config, resumed)
  assert int(a.step) == 6 and a.ema
  jax.tree.map(np.testing.assert_array_equal, a, b)  # the average too, bit for bit
  assert _rows(straight) == _rows(resumed)

  # Validation scored the average: evaluating the best checkpoint on the validation split
  # gives its logged numbers, which the raw weights do not.
  result = evaluate.evaluate_checkpoint(config, str(straight), 'validation')
  best = next(r for r in history.epochs if r['step'] == result['step'])
  assert result['loss'] == pytest.approx(best['val_loss'], rel=1e-6)
  run = evaluate.restore(str(straight))
  assert run.variables['params'] is run.state.ema['params']

  # init_from=<this workdir> starts from the average too, not the raw weights it moved away from.
  loaded = loading.read(str(straight))
  assert loaded.metadata['weights'] == 'moving average (config.ema)'
  jax.tree.map(
      np.testing.assert_array_equal, loaded.params, jax.device_get(run.state.ema['params'])
  )
  raw = jax.device_get(run.state.params['logits']['kernel'])
  assert not np.array_equal(loaded.params['logits']['kernel'], raw)


@flax.struct.dataclass
class _StateBeforeEMA:
  """The TrainState of workdirs written before config.ema existed."""

  step: jax.Array
  params: object
  batch_stats: object
  opt_state: object
  plateau: object
  rng: jax.Array


def test_a_workdir_from_before_ema_evaluates_and_resumes_bit_for_bit(image_folder, tmp_path):
  from catsdogs_jax.tools import evaluate

  config = tiny_mlp_config(image_folder, num_epochs=2)
  straight, old = tmp_path / 'straight', tmp_path / 'old'
  train.train_and_evaluate(config, str(straight))
  train.train_and_evaluate(tiny_mlp_config(image_folder, num_epochs=1), str(old))

  # Rewrite the checkpoint as the code before config.ema wrote it: a state without `ema`.
  state, history = _final(config, old)
  fields = {k: getattr(state, k) for k in _StateBeforeEMA.__dataclass_fields__}
  step = int(state.step)
  row = history.epochs[-1]
  shutil.rmtree(old / 'checkpoints')
  ckpts = checkpointing.Checkpoints(str(old), config)
  ckpts.save(
      step,
      _StateBeforeEMA(**fields),
      history.to_json(),
      metrics={'val_loss': row['val_loss'], 'val_accuracy': row['val_accuracy']},
  )
  ckpts.wait()
  ckpts.close()
  saved = (old / 'checkpoints' / str(step) / 'state' / '_METADATA').read_text()
  assert "('rng',)" in saved and "'ema'" not in saved  # the old layout

  result = evaluate.evaluate_checkpoint(config, str(old), 'test')
  assert result['num_images'] == 10 and result['step'] == step
  train.train_and_evaluate(config, str(old))
  a, _ = _final(config, straight)
  b, _ = _final(config, old)
  assert isinstance(b, TrainState) and b.ema == {}
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert _rows(straight) == _rows(old)

  # Turning the average on changes the state: refused, naming the field.
  with pytest.raises(WorkdirError, match=r'ema\.decay'):
    experiment.build(tiny_mlp_config(image_folder, num_epochs=3, **{'ema.decay': 0.99}), str(old))


# ----- config checks


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('label_smoothing', 1.0, r'config\.label_smoothing=1\.0 must be in \[0, 1\)'),
        ('label_smoothing', -0.1, r'config\.label_smoothing=-0\.1 must be in \[0, 1\)'),
        ('mixup.mixup_alpha', -0.2, r'config\.mixup\.mixup_alpha=-0\.2 must be >= 0'),
        ('mixup.cutmix_alpha', -1.0, r'config\.mixup\.cutmix_alpha=-1\.0 must be >= 0'),
        ('mixup.prob', 1.5, r'config\.mixup\.prob=1\.5 is a probability'),
        ('mixup.switch_prob', -0.5, r'config\.mixup\.switch_prob=-0\.5 is a probability'),
        ('ema.decay', 1.0, r'config\.ema\.decay=1\.0 must be in \[0, 1\).*e\.g\. 0\.999'),
        ('ema.decay', -0.5, r'config\.ema\.decay=-0\.5 must be in \[0, 1\)'),
        ('ema.warmup_power', -1.0, r'config\.ema\.warmup_power=-1\.0 must be >= 0'),
    ],
)
def test_bad_values_are_refused_with_the_field_and_the_fix(field, value, message):
  config = override(default.get_config(), **{field: value})
  with pytest.raises(config_checks.ConfigError, match=message) as error:
    config_checks.validate_config(config, num_devices=4)
  assert '\n' not in str(error.value)
