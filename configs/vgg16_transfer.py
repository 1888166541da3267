"""VGG16 transfer learning: the ImageNet convolutional base frozen, a new Flatten-Dense(2) head.

SGD 1e-3 momentum 0.9, 224 px, softmax over 2 classes (the tutorial reached 97% validation).
Weights: Keras' vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 by name (downloaded, checked
and converted once; offline, the error says where to place the file):
  python main.py --config=configs/vgg16_transfer.py --workdir=runs/vgg16_transfer
Preprocessing follows the weights ('caffe' for Keras', 'torch' for torchvision's).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'vgg16'
  config.model.include_top = False
  config.model.head = 'flatten_dense'
  config.data.image_size = 224
  config.loss = 'softmax'
  config.init_from = 'pretrained:vgg16_keras_notop'
  config.dont_load = ('^head_',)
  config.trainable = ('^head_',)
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.batch_size = 32
  config.num_epochs = 10
  return config
