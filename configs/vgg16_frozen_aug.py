"""VGG16 frozen base + augmentation, end to end: Flatten-Dense(256)-Dropout(0.5)-Dense(1).

The tutorial's "feature extraction with data augmentation" (90-96% validation): RMSprop 2e-5,
the tutorial's augmentation, batch 20, 30 epochs at 150 px.
"""

from configs import default, small_cnn_aug


def get_config():
  config = default.get_config()
  config.augment = small_cnn_aug.get_config().augment
  config.model.name = 'vgg16'
  config.model.include_top = False
  config.model.head = 'flatten_mlp'
  config.model.head_units = 256
  config.model.dropout_rate = 0.5
  config.image_size = 150
  config.loss = 'sigmoid'
  config.init_from = 'weights/vgg16_keras_notop'
  config.dont_load = ('^head_',)
  config.trainable = ('^head_',)
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 2e-5
  config.batch_size = 20
  config.num_epochs = 30
  return config
