"""VGG16 from scratch at 224 px, as in the VGG paper, which trained with AlexNet's recipe.

SGD momentum 0.9, lr 0.01, weight decay 5e-4, dropout 0.5 on fc1/fc2, N(0, 0.01)
initialisation, learning rate divided by 10 when validation accuracy has not
improved for 5 epochs (all from configs/alexnet.py); batch 32, early stopping.
"""

from configs import alexnet


def get_config():
  config = alexnet.get_config()
  config.model.name = 'vgg16'
  config.data.image_size = 224
  config.batch_size = 32
  config.num_epochs = 74
  config.early_stopping.enabled = True
  config.early_stopping.monitor = 'val_loss'
  config.early_stopping.patience = 10
  return config
