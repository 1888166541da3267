"""Architectures: exact parameter counts (SPEC.md) by jax.eval_shape, names, and forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catsdogs_jax import models
from catsdogs_jax.models import abstract_variables, init_variables, layers, summary
from configs import default


def _config(name, num_classes=2, loss='softmax', **model_fields):
  config = default.get_config()
  config.model.name, config.data.num_classes, config.loss = name, num_classes, loss
  for k, v in model_fields.items():
    config.model[k] = v
  return config


def _abstract_variables(config, size, channels=3):
  model = models.create_model(config)
  return abstract_variables(model, (size, size, channels))


@pytest.mark.parametrize(
    'name, size, num_classes, loss, fields, expected',
    [
        ('small_cnn', 150, 2, 'sigmoid', {}, 3_453_121),
        ('vgg16', 224, 2, 'softmax', {}, 134_268_738),
        ('vgg16', 224, 2, 'softmax', {'include_top': False}, 14_714_688),
        ('vgg16', 50, 2, 'softmax', {}, 33_605_442),
        ('vgg19', 224, 1000, 'softmax', {}, 143_667_240),
        # torchvision's published counts (BatchNorm statistics are not parameters).
        ('resnet18', 224, 1000, 'softmax', {}, 11_689_512),
        ('resnet34', 224, 1000, 'softmax', {}, 21_797_672),
        ('resnet50', 224, 1000, 'softmax', {}, 25_557_032),
        ('resnet101', 224, 1000, 'softmax', {}, 44_549_160),
        ('resnet152', 224, 1000, 'softmax', {}, 60_192_808),
        ('efficientnet_b0', 224, 1000, 'softmax', {}, 5_288_548),
        # TensorFlow's EfficientNet-Lite (the published checkpoints hold exactly these).
        ('efficientnet_lite0', 224, 1000, 'softmax', {}, 4_652_008),
        ('efficientnet_lite0', 224, 2, 'softmax', {'include_top': False}, 3_371_008),
        ('efficientnet_lite1', 240, 1000, 'softmax', {}, 5_416_680),
        ('efficientnet_lite2', 260, 1000, 'softmax', {}, 6_092_072),
    ],
)
def test_parameter_counts_match_spec(name, size, num_classes, loss, fields, expected):
  variables = _abstract_variables(_config(name, num_classes, loss, **fields), size)
  assert summary.count_parameters(variables['params']) == expected


def test_resnet_batchnorm_statistics_are_not_parameters():
  variables = _abstract_variables(_config('resnet50', 1000), 224)
  stats = summary.count_parameters(variables['batch_stats'])
  # Every BatchNorm has a mean and a variance per channel: half of its 2 params per channel.
  bn_params = sum(
      x.size
      for p, x in jax.tree_util.tree_flatten_with_path(variables['params'])[0]
      if 'bn' in jax.tree_util.keystr(p)
  )
  assert stats == bn_params == 2 * 26_560


def test_vgg_layer_names_follow_keras():
  params = _abstract_variables(_config('vgg16', include_top=False), 64)['params']
  expected = {
      f'block{b}_conv{c}' for b, n in enumerate((2, 2, 3, 3, 3), 1) for c in range(1, n + 1)
  }
  assert set(params) == expected


def test_vgg_no_top_pooling_returns_feature_vector():
  config = _config('vgg16', include_top=False, pooling='avg')
  model = models.create_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  assert model.apply(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 512)


def test_resnet18_forward_updates_batch_stats():
  config = _config('resnet18', num_classes=3)
  model = models.create_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (4, 3)
  before = variables['batch_stats']['bn1']['mean']
  assert not jnp.allclose(updates['batch_stats']['bn1']['mean'], before)


def test_sigmoid_head_has_one_output_softmax_has_one_per_class():
  assert models.num_outputs(_config('small_cnn', 2, 'sigmoid')) == 1
  assert models.num_outputs(_config('small_cnn', 2, 'softmax')) == 2


def test_unknown_model_lists_choices():
  with pytest.raises(
      ValueError, match=r"Unknown config.model.name 'vgg17'.*resnet50.*small_cnn.*vgg16"
  ):
    models.create_model(_config('vgg17'))


@pytest.mark.parametrize('forms', ['plain', 'cpu', None])
def test_every_model_with_convolutions_is_built_with_the_chosen_layer_forms(forms):
  expected = layers.LAYER_FORMS[forms] if forms else layers.layer_forms('auto')
  for name in models.MODELS:
    config = _config(name)
    if forms:
      with config.unlocked():  # config.model.layers may not be a field yet
        config.model.layers = forms
    model = models.create_model(config)
    assert getattr(model, 'layers', expected) is expected, name
    if name == 'mnist_mlp':
      assert 'layers' not in model.__dataclass_fields__  # dense only
  # ResNet hands them to its blocks, whose 3x3 stride-1 convolutions are the fast ones.
  config = _config('resnet18')
  with config.unlocked():
    config.model.layers = 'cpu'
  model = models.create_model(config)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, jnp.zeros((1, 32, 32, 3))))(
      abstract_variables(model, (32, 32, 3))
  )
  assert 'custom_vjp' in str(jaxpr)


def test_option_the_model_lacks_is_an_error():
  with pytest.raises(ValueError, match="no option 'include_top'"):
    models.create_model(_config('small_cnn', include_top=False))


def test_bfloat16_compute_keeps_float32_parameters():
  config = _config('small_cnn', loss='sigmoid')
  config.half_precision = True
  model = models.create_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0), (48, 48, 3))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert model.apply(variables, jnp.ones((1, 48, 48, 3))).dtype == jnp.float32


def _dense(n_in, n_out):
  return n_in * n_out + n_out


def _conv(k, c_in, c_out):
  return k * k * c_in * c_out + c_out


def test_alexnet_and_mnist_parameter_counts_by_hand():
  alexnet = (
      _conv(11, 3, 96)
      + _conv(5, 96, 256)
      + _conv(3, 256, 384)
      + _conv(3, 384, 384)
      + _conv(3, 384, 256)
      + _dense(6 * 6 * 256, 4096)
      + _dense(4096, 4096)
  )
  variables = _abstract_variables(_config('alexnet', 1000), 227)
  assert summary.count_parameters(variables['params']) == alexnet + _dense(4096, 1000) == 62_378_344
  variables = _abstract_variables(_config('alexnet', 2), 227)
  assert summary.count_parameters(variables['params']) == alexnet + _dense(4096, 2)
  variables = _abstract_variables(_config('mnist_mlp', 10), 28, channels=1)
  assert summary.count_parameters(variables['params']) == _dense(784, 1024) + _dense(1024, 10)
  variables = _abstract_variables(_config('mnist_cnn', 10), 28, channels=1)
  # 28 - 5 + 1 = 24, pooled to 12.
  assert summary.count_parameters(variables['params']) == (
      _conv(5, 1, 64) + _dense(12 * 12 * 64, 100) + _dense(100, 10)
  )


def test_efficientnet_layer_names_follow_keras_and_the_no_top_options():
  config = _config('efficientnet_b0', 1000)
  variables = _abstract_variables(config, 224)
  params, stats = variables['params'], variables['batch_stats']
  assert {
      'stem_conv',
      'stem_bn',
      'block1a_dwconv',
      'block1a_se_reduce',
      'block2a_expand_conv',
      'block6d_project_bn',
      'block7a_project_conv',
      'top_conv',
      'top_bn',
      'predictions',
  } <= set(params)
  assert len([n for n in params if n.endswith('_project_conv')]) == 16  # MBConv blocks
  assert params['block2a_dwconv']['kernel'].shape == (3, 3, 1, 96)  # depthwise
  assert summary.count_parameters(stats) == 2 * 21_008  # BN mean + var
  for fields, shape in (
      ({'pooling': 'avg'}, (2, 1280)),
      ({'pooling': None}, (2, 2, 2, 1280)),
      ({'head': 'gmp_dense'}, (2, 2)),
  ):
    model = models.create_model(_config('efficientnet_b0', include_top=False, **fields))
    v = abstract_variables(model, (64, 64, 3))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros((2, 64, 64, 3)))
    assert out.shape == shape, fields


def test_efficientnet_lite_has_no_squeeze_excite_and_an_unscaled_stem_and_head():
  params = _abstract_variables(_config('efficientnet_lite2', 1000), 64)['params']
  assert not [n for n in params if '_se_' in n]
  assert params['stem_conv']['kernel'].shape == (3, 3, 3, 32)  # B2 would have 32 too, but
  assert params['top_conv']['kernel'].shape == (1, 1, 352, 1280)  # its head 1408
  # Depth 1.2 scales the middle stages only: 1 + 3 + 3 + 4 + 4 + 5 + 1 blocks.
  assert len([n for n in params if n.endswith('_project_conv')]) == 21
  assert {'block1a_dwconv', 'block6e_project_bn', 'block7a_project_conv'} <= set(params)


def test_dense_head_sits_on_the_pooled_base_and_train_from_names_the_layers_after_it():
  model = models.create_model(
      _config('efficientnet_lite0', include_top=False, pooling='avg', head='dense')
  )
  out = jax.eval_shape(
      lambda v, x: model.apply(v, x),
      abstract_variables(model, (64, 64, 3)),
      jnp.zeros((2, 64, 64, 3)),
  )
  assert out.shape == (2, 2)
  order = models.layer_order(model, (64, 64, 3))
  assert order[:3] == ['stem_conv', 'stem_bn', 'block1a_dwconv']
  assert order[-3:] == ['top_conv', 'top_bn', 'head_logits'] and len(order) == 99
  assert models.layers_from(model, (64, 64, 3), 'top_conv') == (
      '^top_conv/',
      '^top_bn/',
      '^head_logits/',
  )
  with pytest.raises(
      ValueError,
      match="config.train_from='block9a' is not a layer with "
      'parameters of this model; its layers are: stem_conv, ',
  ):
    models.layers_from(model, (64, 64, 3), 'block9a')


def test_stochastic_depth_drops_whole_residual_branches_only_in_training():
  # A narrow, shallow EfficientNet (3 residual blocks) keeps this quick; dropout is 0.
  model = models.EfficientNet(
      width_coefficient=0.25,
      depth_coefficient=0.5,
      num_outputs=10,
      dropout_rate=0.0,
      stochastic_depth_rate=0.9,
  )
  variables = jax.jit(lambda rng: init_variables(model, rng, (32, 32, 3)))(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  infer = jax.jit(lambda v, x: model.apply(v, x))
  assert jnp.array_equal(infer(variables, x), infer(variables, x))
  train = jax.jit(
      lambda seed: model.apply(
          variables,
          x,
          train=True,
          mutable=['batch_stats'],
          rngs={'dropout': jax.random.PRNGKey(seed)},
      )[0]
  )
  assert not jnp.allclose(train(0), train(1))
  no_drop = models.EfficientNet(
      width_coefficient=0.25,
      depth_coefficient=0.5,
      num_outputs=10,
      dropout_rate=0.0,
      stochastic_depth_rate=0.0,
  )
  same = jax.jit(
      lambda seed: no_drop.apply(
          variables,
          x,
          train=True,
          mutable=['batch_stats'],
          rngs={'dropout': jax.random.PRNGKey(seed)},
      )[0]
  )
  assert jnp.array_equal(same(0), same(1))


# ----- the small CNN's options: BatchNorm stages and a global-pooling head


def _keras_small_cnn(keras, size, batch_norm, pooling):
  """The same model in Keras 3: the reference for parameter counts and BatchNorm numerics."""
  layers = keras.layers
  stack = [keras.Input((size, size, 3))]
  for features in (32, 64, 128, 128):
    if batch_norm:
      stack += [layers.Conv2D(features, 3, use_bias=False), layers.BatchNormalization()]
      stack += [layers.ReLU()]
    else:
      stack += [layers.Conv2D(features, 3, activation='relu')]
    stack += [layers.MaxPooling2D(2)]
  top = {None: layers.Flatten, 'avg': layers.GlobalAveragePooling2D}
  top['max'] = layers.GlobalMaxPooling2D
  stack += [top[pooling](), layers.Dense(512, activation='relu'), layers.Dense(1)]
  return keras.Sequential(stack)


@pytest.mark.parametrize('pooling', [None, 'avg', 'max'])
@pytest.mark.parametrize('batch_norm', [False, True])
def test_small_cnn_options_count_as_the_same_keras_model(batch_norm, pooling):
  keras = pytest.importorskip('keras')
  reference = _keras_small_cnn(keras, 150, batch_norm, pooling)
  config = _config('small_cnn', loss='sigmoid', batch_norm=batch_norm, pooling=pooling)
  variables = _abstract_variables(config, 150)
  params = summary.count_parameters(variables['params'])
  stats = summary.count_parameters(variables.get('batch_stats', {}))
  trainable = sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
  assert (params, params + stats) == (trainable, reference.count_params())
  expected = {
      (False, None): 3_453_121,  # SPEC.md's
      (False, 'avg'): 307_393,
      (False, 'max'): 307_393,
      (True, None): 3_453_473,  # conv biases (352) out, BatchNorm scales and offsets (704) in
      (True, 'avg'): 307_745,
      (True, 'max'): 307_745,
  }
  assert params == expected[batch_norm, pooling]
  assert stats == (2 * (32 + 64 + 128 + 128) if batch_norm else 0)


def test_small_cnn_at_its_defaults_has_the_tutorials_parameter_tree():
  variables = _abstract_variables(_config('small_cnn', loss='sigmoid'), 150)
  assert set(variables) == {'params'}  # no BatchNorm statistics
  shapes = jax.tree.map(lambda x: x.shape, variables['params'])
  assert shapes == {
      'conv1': {'kernel': (3, 3, 3, 32), 'bias': (32,)},
      'conv2': {'kernel': (3, 3, 32, 64), 'bias': (64,)},
      'conv3': {'kernel': (3, 3, 64, 128), 'bias': (128,)},
      'conv4': {'kernel': (3, 3, 128, 128), 'bias': (128,)},
      'dense1': {'kernel': (7 * 7 * 128, 512), 'bias': (512,)},
      'logits': {'kernel': (512, 1), 'bias': (1,)},
  }


def test_small_cnn_batch_norm_computes_what_keras_computes():
  keras = pytest.importorskip('keras')
  size = 48
  config = _config('small_cnn', loss='sigmoid', batch_norm=True, pooling='avg')
  model = models.create_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0), (size, size, 3))
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (4, size, size, 3)))
  reference = _keras_small_cnn(keras, size, True, 'avg')
  p, s = variables['params'], variables['batch_stats']
  weights = []
  for i in range(1, 5):
    weights += [p[f'conv{i}']['kernel'], p[f'bn{i}']['scale'], p[f'bn{i}']['bias']]
    weights += [s[f'bn{i}']['mean'], s[f'bn{i}']['var']]
  weights += [
      p['dense1']['kernel'],
      p['dense1']['bias'],
      p['logits']['kernel'],
      p['logits']['bias'],
  ]
  reference.set_weights([np.asarray(w) for w in weights])
  # Inference: the running statistics, Keras' epsilon.
  np.testing.assert_allclose(
      model.apply(variables, x), reference(x, training=False), rtol=1e-4, atol=1e-5
  )
  # Training: the batch's statistics, and Keras' momentum for the running ones.
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(logits, reference(x, training=True), rtol=1e-4, atol=1e-4)
  keras_bn = reference.layers[1]
  np.testing.assert_allclose(
      updates['batch_stats']['bn1']['mean'], keras_bn.moving_mean.numpy(), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
      updates['batch_stats']['bn1']['var'], keras_bn.moving_variance.numpy(), rtol=1e-4
  )


def test_small_cnn_frozen_batch_norm_layers_keep_their_statistics():
  from catsdogs_jax.models import batch_norm

  config = _config('small_cnn', loss='sigmoid', batch_norm=True)
  model = models.create_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0), (48, 48, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 48, 48, 3))
  frozen = ('^conv1/', '^bn1/')  # as config.frozen matches them
  with batch_norm.inference_where(lambda path: models.matches_any(path, frozen)):
    _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  stats, new = variables['batch_stats'], updates['batch_stats']
  np.testing.assert_array_equal(new['bn1']['mean'], stats['bn1']['mean'])
  assert not np.allclose(new['bn2']['mean'], stats['bn2']['mean'])
  # train_from names the BatchNorm layers with the convolutions they follow.
  assert models.layers_from(model, (48, 48, 3), 'conv4') == (
      '^conv4/',
      '^bn4/',
      '^dense1/',
      '^logits/',
  )


def test_small_cnn_options_are_checked_before_training():
  from catsdogs_jax.training import config_checks

  config = _config('small_cnn', loss='sigmoid', batch_norm=True, pooling='avg')
  config_checks.validate_config(config, num_devices=1)
  model = models.create_model(config)
  config.data.image_size = 40  # the global pool would average an empty map (test_readme.py)
  with pytest.raises(config_checks.ConfigError, match='image_size=46 or more'):
    config_checks.check_image_size(config, model)
  with pytest.raises(config_checks.ConfigError, match=r"config.model.pooling 'mean'.*avg.*max"):
    config_checks.validate_config(_config('small_cnn', loss='sigmoid', pooling='mean'), 1)
  with pytest.raises(config_checks.ConfigError, match="'vgg16' has no option 'batch_norm'"):
    config_checks.validate_config(_config('vgg16', batch_norm=True), 1)


# ----- the small Xception


def _keras_small_xception(keras, size):
  """Deep Learning with Python's mini Xception in Keras 3, its layers by our names."""
  layers, named = keras.layers, {}
  inputs = keras.Input((size, size, 3))
  named['stem_conv'] = layers.Conv2D(32, 5, use_bias=False)
  x = named['stem_conv'](inputs)
  for i, features in enumerate((32, 64, 128, 256, 512), start=1):
    residual = x
    for j in (1, 2):
      named[f'block{i}_bn{j}'] = layers.BatchNormalization()
      x = layers.Activation('relu')(named[f'block{i}_bn{j}'](x))
      named[f'block{i}_sepconv{j}'] = layers.SeparableConv2D(
          features, 3, padding='same', use_bias=False
      )
      x = named[f'block{i}_sepconv{j}'](x)
    x = layers.MaxPooling2D(3, strides=2, padding='same')(x)
    named[f'block{i}_residual'] = layers.Conv2D(
        features, 1, strides=2, padding='same', use_bias=False
    )
    x = layers.add([x, named[f'block{i}_residual'](residual)])
  x = layers.Dropout(0.5)(layers.GlobalAveragePooling2D()(x))
  named['logits'] = layers.Dense(1)
  return keras.Model(inputs, named['logits'](x)), named


@pytest.mark.parametrize('forms', ['plain', 'cpu'])
def test_small_xception_computes_what_the_keras_model_computes(forms):
  keras = pytest.importorskip('keras')
  size = 37  # odd sizes: every SAME pool and strided projection pads unevenly
  reference, named = _keras_small_xception(keras, size)
  config = _config('small_xception', loss='sigmoid', layers=forms)
  model = models.create_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0), (size, size, 3))
  p, s = variables['params'], variables['batch_stats']
  assert summary.count_parameters(p) == sum(
      int(np.prod(w.shape)) for w in reference.trainable_weights
  )
  assert summary.count_parameters(p) + summary.count_parameters(s) == reference.count_params()
  # Random statistics, so inference mode is not the identity.
  rng = np.random.default_rng(0)
  for name, layer in named.items():
    if name.startswith('block') and '_bn' in name:
      c = p[name]['scale'].shape[0]
      s[name]['mean'], s[name]['var'] = rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)
      p[name]['scale'], p[name]['bias'] = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)
      weights = [p[name]['scale'], p[name]['bias'], s[name]['mean'], s[name]['var']]
    elif '_sepconv' in name:
      depthwise = np.asarray(p[f'{name}_depthwise']['kernel'])  # (3, 3, 1, C)
      weights = [depthwise.transpose(0, 1, 3, 2), p[f'{name}_pointwise']['kernel']]
    elif name == 'logits':
      weights = [p[name]['kernel'], p[name]['bias']]
    else:
      weights = [p[name]['kernel']]
    layer.set_weights([np.asarray(w, np.float32) for w in weights])
  variables = {'params': p, 'batch_stats': s}
  x = rng.uniform(0, 1, (3, size, size, 3)).astype(np.float32)
  np.testing.assert_allclose(
      model.apply(variables, x), reference(x, training=False), rtol=1e-4, atol=1e-4
  )
  logits, _ = model.apply(
      variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)}
  )
  assert logits.shape == (3, 1) and np.isfinite(logits).all()


def test_small_xception_has_the_same_parameters_at_every_size():
  counts = {
      size: summary.count_parameters(
          _abstract_variables(_config('small_xception', loss='sigmoid'), size)['params']
      )
      for size in (32, 150, 180)
  }
  assert set(counts.values()) == {718_849}
