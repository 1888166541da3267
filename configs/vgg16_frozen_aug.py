"""VGG16 frozen base + augmentation, end to end: Flatten-Dense(256)-Dropout(0.5)-Dense(1).

The tutorial's "feature extraction with data augmentation" (90-96% validation): the frozen
ImageNet base of vgg16_transfer with another head, RMSprop 2e-5, the tutorial's augmentation,
batch 20, 30 epochs at 150 px.
"""

from configs import small_cnn_aug, vgg16_transfer


def get_config():
  config = vgg16_transfer.get_config()
  config.augment = small_cnn_aug.get_config().augment
  config.model.head = 'flatten_mlp'
  config.model.head_units = 256
  config.model.dropout_rate = 0.5
  config.data.image_size = 150
  config.loss = 'sigmoid'
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 2e-5
  config.optimizer.momentum = 0.0
  config.batch_size = 20
  config.num_epochs = 30
  return config
