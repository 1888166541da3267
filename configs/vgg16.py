"""VGG16 from scratch at 224 px, as in the VGG paper.

SGD momentum 0.9, lr 0.01, weight decay 5e-4, dropout 0.5 on fc1/fc2, N(0, 0.01)
initialisation, learning rate divided by 10 when validation accuracy has not
improved for 5 epochs.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'vgg16'
  config.model.dropout_rate = 0.5
  config.model.kernel_init = 'normal'
  config.model.init_stddev = 0.01
  config.image_size = 224
  config.loss = 'softmax'
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'plateau'
  config.schedule.plateau_monitor = 'val_accuracy'
  config.schedule.plateau_factor = 0.1
  config.schedule.plateau_patience = 5
  config.batch_size = 32
  config.num_epochs = 74
  config.early_stopping.enabled = True
  config.early_stopping.monitor = 'val_loss'
  config.early_stopping.patience = 10
  return config
