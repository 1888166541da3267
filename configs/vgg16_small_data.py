"""VGG16 from scratch on the tutorials' 2,000 training images, at 50 px, with augmentation.

Where the small CNN's tutorial has one model of 3.5 million parameters, this asks what
VGG16 (33.6 million at 50 px: Flatten is 1x1x512) does with the same 2,000 images and the
same augmentation and dropout. The 50 px VGG16 tutorial's Adam 1e-6 was for 20,000
images in batches of 256; with 63 steps an epoch it would barely move, so Adam 1e-4 and
He initialisation (no BatchNorm in VGG16: Glorot shrinks the signal over 13 ReLU layers).
30 epochs: about 45 minutes on 2 CPU cores.
"""

from configs import small_cnn_aug


def get_config():
  config = small_cnn_aug.get_config()   # augmentation, dropout 0.5, batch 32, sigmoid
  config.model.name = 'vgg16'
  config.model.kernel_init = 'he_normal'
  config.image_size = 50
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-4
  config.num_epochs = 30
  return config
