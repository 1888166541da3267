"""VGG16 from scratch at 50 x 50 on the full cats-vs-dogs set (the tutorial: 78.4% validation).

The tutorial used 20,000 training and 5,000 validation images of Kaggle's 25,000,
Adam 1e-6, batch 256, 20 epochs. tfds `cats_vs_dogs` has 23,262 images (Microsoft's
release without its corrupt files) in one `train` split, both classes mixed (tfds shuffled
them when it prepared the set). Its first 20,000 train, as in the tutorial; the other
3,262 are halved so that the best checkpoint is not chosen on the test images:
  train       train[:20000]         images 0-19,999
  validation  train[20000:21631]    images 20,000-21,630 (1,631)
  test        train[21631:]         images 21,631-23,261 (1,631), for --mode=evaluate
Flatten is 1x1x512 at this size: 33,605,442 parameters.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cats_vs_dogs'
  config.data.train_split = 'train[:20000]'
  config.data.eval_split = 'train[20000:21631]'
  config.data.test_split = 'train[21631:]'
  config.model.name = 'vgg16'
  config.model.dropout_rate = 0.5
  config.data.image_size = 50
  config.loss = 'softmax'
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-6
  config.batch_size = 256
  config.num_epochs = 20
  return config
