"""EfficientNet-B0 transfer learning: the ImageNet base frozen, GlobalMaxPool-Dropout(0.2)-Dense(2).

The tutorial: 224 px, RMSprop 2e-5, the augmentation of the small CNN, batch 16,
100 epochs (about 75% validation). Frozen BatchNorm layers run in inference mode.
Weights: Keras' efficientnetb0_notop.h5 by name (downloaded, checked and converted once), then
  python main.py --config=configs/efficientnet_b0_transfer.py --workdir=runs/efficientnet_b0_transfer
Preprocessing follows the weights (ImageNet mean/std, read from the file's Normalization layer).
"""

from configs import default, small_cnn_aug


def get_config():
  config = default.get_config()
  config.model.name = 'efficientnet_b0'
  config.model.include_top = False
  config.model.head = 'gmp_dense'
  config.model.dropout_rate = 0.2
  config.data.image_size = 224
  config.loss = 'softmax'
  config.augment = small_cnn_aug.get_config().augment
  config.init_from = 'pretrained:efficientnet_b0_keras_notop'
  config.dont_load = ('^head_',)
  config.trainable = ('^head_',)
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 2e-5
  config.batch_size = 16
  config.num_epochs = 100
  return config
