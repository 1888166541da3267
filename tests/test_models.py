"""Architectures: exact parameter counts (SPEC.md) by jax.eval_shape, names, and forward passes."""

import jax
import jax.numpy as jnp
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
