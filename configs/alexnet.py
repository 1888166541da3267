"""AlexNet from scratch on cats vs dogs, as the tutorial describes Krizhevsky et al.'s recipe.

SGD momentum 0.9, lr 0.01, weight decay 5e-4, batch 128, weights N(0, 0.01),
dropout 0.5, 227 px; the learning rate divided by 10 when validation accuracy
stops improving (the paper did it by hand, three times in about 90 epochs).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'alexnet'
  config.model.dropout_rate = 0.5
  config.model.kernel_init = 'normal'
  config.model.init_stddev = 0.01
  config.data.image_size = 227
  config.loss = 'softmax'
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'plateau'
  config.schedule.plateau_monitor = 'val_accuracy'
  config.schedule.plateau_factor = 0.1
  config.schedule.plateau_patience = 5
  config.batch_size = 128
  config.num_epochs = 90
  return config
