"""The MNIST warm-up CNN: Conv(64, 5x5)-MaxPool-Dense(100)-Dense(10), 10 epochs (tutorial: 98.77% test).

Splits of tfds `mnist` (60,000 train, 10,000 test): the first 55,000 of `train` train, its
last 5,000 validate (they choose the best checkpoint), and `test` is left for --mode=evaluate;
55,000 / 5,000 are the sizes of TensorFlow's classic MNIST tutorials.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mnist'
  config.data.train_split = 'train[:55000]'
  config.data.eval_split = 'train[55000:]'
  config.data.test_split = 'test'
  config.data.image_size = 28
  config.data.channels = 1
  config.data.num_classes = 10
  config.data.cache = True
  config.model.name = 'mnist_cnn'
  config.loss = 'softmax'
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 10
  config.checkpoint.best_monitor = 'val_accuracy'
  return config
