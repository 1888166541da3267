"""Bad configs fail before any heavy work, with the problem and the fix in the message."""

import pytest

from catsdogs_jax import experiment, models, validation
from configs import default
from conftest import override


@pytest.mark.parametrize('field, value, message', [
    ('model.name', 'vgg17', "Unknown config.model.name 'vgg17'; choose one of: alexnet, efficientnet_b0, mnist_cnn, "),
    ('optimizer.name', 'adamax', "Unknown config.optimizer.name 'adamax'; choose one of: adam, "),
    ('schedule.name', 'linear', "Unknown config.schedule.name 'linear'; choose one of: constant"),
    ('loss', 'hinge', "Unknown config.loss 'hinge'"),
    ('preprocess', 'imagenet', "Unknown config.preprocess 'imagenet'"),
    ('early_stopping.monitor', 'loss', "Unknown config.early_stopping.monitor 'loss'"),
    ('num_classes', 3, 'use --config.loss=softmax'),
    ('batch_size', 6, 'not divisible by the 4 devices'),
    ('num_epochs', 0, 'config.num_epochs must be positive'),
])
def test_invalid_values_are_named(field, value, message):
  config = override(default.get_config(), **{field: value})
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_config(config, num_devices=4)
  assert message in str(error.value)


def test_image_too_small_names_the_minimum():
  config = default.get_config()
  config.model.name, config.loss, config.image_size = 'vgg16', 'softmax', 16
  with pytest.raises(validation.ConfigError,
                     match=r"image_size=16 is too small for model 'vgg16'.*image_size=32 or more"):
    validation.check_image_size(config, models.create_model(config))
  config.image_size = 32
  validation.check_image_size(config, models.create_model(config))


def test_dataset_with_other_classes_than_the_config(make_config, tmp_path):
  config = make_config(num_classes=3, loss='softmax')
  with pytest.raises(validation.ConfigError, match=r'2 classes \(cats, dogs\).*num_classes=2'):
    experiment.build(config, str(tmp_path))


def test_batch_larger_than_the_training_split(make_config, tmp_path):
  with pytest.raises(validation.ConfigError, match='larger than the training split'):
    experiment.build(make_config(batch_size=64), str(tmp_path))
