"""The MNIST warm-up CNN: Conv(64, 5x5)-MaxPool-Dense(100)-Dense(10), 10 epochs (tutorial: 98.77% test)."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'mnist'
  config.train_split = 'train'
  config.eval_split = 'test'
  config.test_split = 'test'
  config.image_size = 28
  config.channels = 1
  config.num_classes = 10
  config.cache = True
  config.model.name = 'mnist_cnn'
  config.loss = 'softmax'
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 10
  config.checkpoint.best_monitor = 'val_accuracy'
  return config
