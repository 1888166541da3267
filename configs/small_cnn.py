"""The tutorial's small convnet from scratch: 150 px, RMSprop 1e-4, no augmentation, 30 epochs.

Reference: about 70% validation accuracy on the 2,000-image protocol (it overfits).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'small_cnn'
  config.data.image_size = 150
  config.loss = 'sigmoid'
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 1e-4
  config.batch_size = 20
  config.num_epochs = 30
  return config
