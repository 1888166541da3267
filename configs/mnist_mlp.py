"""The MNIST warm-up MLP: 784-1024-10, plain SGD 0.008, L2 on both weight matrices (tutorial: 96.5% test).

Splits as configs/mnist_cnn.py: train[:55000] trains, train[55000:] validates, test tests.
The tutorial trained 6,001 steps of batch 256; training here counts whole epochs:
28 epochs of 214 full batches of the 55,000 training images are 5,992 steps. Its L2 term
was beta * l2_loss(W) (sum of squares / 2) per matrix, which is weight_decay = beta on the
gradient; beta = 1e-3, the usual value of that exercise.
"""

from configs import mnist_cnn


def get_config():
  config = mnist_cnn.get_config()
  config.model.name = 'mnist_mlp'
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.008
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 1e-3
  config.batch_size = 256
  config.num_epochs = 28
  return config
