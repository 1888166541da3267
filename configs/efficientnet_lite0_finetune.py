"""Fine-tuning EfficientNet-Lite0 from the transfer run's best checkpoint: the last stages train.

Everything loads from runs/lite0_transfer (efficientnet_lite0_transfer.py);
`train_from` names the first layer that trains, and every layer after it trains
too; the ones before stay frozen. Every BatchNorm layer keeps normalising with its
ImageNet running statistics (batch_norm_running_average, Keras' advice for
fine-tuning: in training mode, batch statistics of 32 augmented photos shift the
features the head was trained on, and validation accuracy fell from 0.987 to 0.96
in the first epoch). Adam 1e-5 with a cosine decay, the same augmentation.
  python main.py --config=configs/efficientnet_lite0_finetune.py --workdir=runs/lite0_finetune
"""

from configs import efficientnet_lite0_transfer


def get_config():
  config = efficientnet_lite0_transfer.get_config()
  config.init_from = 'runs/lite0_transfer'
  config.dont_load = ()
  config.trainable = ()
  config.train_from = 'block6a_expand_conv'
  config.batch_norm_running_average = True
  config.optimizer.learning_rate = 1e-5
  config.schedule.name = 'cosine'
  config.num_epochs = 8
  return config
