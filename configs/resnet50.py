"""ResNet-50 from scratch at 224 px: SGD momentum 0.9, lr 0.1 x batch/256, cosine with warm-up."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'resnet50'
  config.model.kernel_init = 'he_normal'
  config.data.image_size = 224
  config.loss = 'softmax'
  config.batch_size = 64
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.1 * config.batch_size / 256
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 5.0
  config.num_epochs = 90
  return config
