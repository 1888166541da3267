"""Every configuration field, with its default and meaning. Experiment configs change a few.

The project's configs start from `configs/default.py`, which is this; research
scripts import it from here (`from catsdogs_jax import defaults`), from any folder.

The returned ConfigDict is locked: assigning a field that does not exist (a
typo in an experiment config, or `--config.learning_rat=...` on the command
line) is an error instead of being silently ignored.
"""

from typing import Any, Dict

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameter init, dropout and data order

  # ----- data (config.data.*: what the input pipeline reads, and how)
  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'cats_vs_dogs'  # a tfds name, or 'folder:PATH' (PATH/split/label/image)
  config.data.data_dir = ml_collections.FieldReference(
      None, field_type=str
  )  # tfds data_dir (None: tfds default)
  config.data.download = True  # let tfds download and prepare a missing dataset
  config.data.train_split = 'train[:80%]'  # tfds split (slicing allowed) or folder sub-folder name
  config.data.eval_split = 'train[80%:90%]'  # validation split, evaluated after every epoch
  config.data.test_split = 'train[90%:]'  # test split, used by --mode=evaluate
  config.data.verify_images = True  # folders: decode every file once at start, skip unreadable ones
  # (False: name and size checks only; a corrupt file then fails mid-epoch)
  config.data.flat_split_fractions = (
      0.8,
      0.1,
      0.1,
  )  # flat folders (cat.1.jpg...): train/validation/test
  config.data.image_key = 'image'  # tfds feature holding the image
  config.data.label_key = 'label'  # tfds feature holding the class label
  config.data.image_size = 150  # images are resized to image_size x image_size
  # (at least: small_cnn 46, small_xception 5, mnist_cnn 6, alexnet 67, vgg16 32, vgg19 32; the others any)
  config.data.channels = 3  # 3 for RGB, 1 for grayscale (MNIST)
  config.data.resize_method = (
      'bilinear'  # tf.image.resize method ('bilinear', 'nearest', 'bicubic', 'area')
  )
  config.data.jpeg_draft = False  # decode JPEGs at the largest libjpeg scale (1/2, 1/4, 1/8)
  # that keeps both sides >= image_size, then resize as usual (Pillow's draft mode; pixels differ
  # slightly from a full-size decode, accuracy did not: README). Off: the recorded results decoded
  # full-size. Fastest with resize_method='area' where decoding repeats (no data.cache)
  config.data.cache = False  # keep decoded, resized images in memory after the first epoch
  config.data.shuffle_buffer = 10_000  # tfds datasets: shuffle buffer of encoded images
  config.data.preprocess = 'auto'  # on-device: 'auto' (the init_from weights' own, else 1/255),
  # 'rescale' (1/255), 'caffe' (Keras VGG), 'torch' (torchvision),
  # 'inception' ((x - 127) / 128, EfficientNet-Lite), 'none'
  config.data.num_classes = 2  # must equal the dataset's number of labels

  # ----- augmentation (training only; on the device, Keras ImageDataGenerator semantics)
  config.augment = ml_collections.ConfigDict()
  config.augment.rotation_range = 0.0  # degrees: rotation drawn from [-r, r]
  config.augment.width_shift_range = 0.0  # fraction of the width (< 1) or pixels (>= 1)
  config.augment.height_shift_range = 0.0  # fraction of the height (< 1) or pixels (>= 1)
  config.augment.shear_range = 0.0  # degrees (as Keras reads shear_range)
  config.augment.zoom_range = 0.0  # x and y scale each drawn from [1 - z, 1 + z]
  config.augment.horizontal_flip = False  # flip left-right with probability 0.5
  config.augment.vertical_flip = False  # flip upside-down with probability 0.5
  config.augment.fill_mode = 'nearest'  # outside the image: nearest, constant, reflect, wrap
  config.augment.cval = 0.0  # fill value of fill_mode='constant' (0-255 scale)
  config.augment.interpolation = 'bilinear'  # resampling: bilinear (Keras' order 1) or nearest
  config.augment.crop_scale = ml_collections.FieldReference(
      None, field_type=tuple
  )  # random resized crop (torchvision's RandomResizedCrop, before the transforms above, in
  # the same resampling): (min, max) area fraction in (0, 1], e.g. (0.08, 1.0); None: off
  config.augment.crop_ratio = (3 / 4, 4 / 3)  # random resized crop: (min, max) aspect ratio
  # (width / height), drawn log-uniform
  config.augment.brightness = 0.0  # colour jitter (torchvision's ColorJitter, after the resampling,
  # the enabled ones in a random order, clipped to 0-255): factor uniform in [max(0, 1 - s), 1 + s];
  # 0: off
  config.augment.contrast = 0.0  # colour jitter: blend with the mean grey, factor as brightness's
  config.augment.saturation = 0.0  # colour jitter: blend with the grey image, as brightness's

  # ----- mixup and CutMix (training only; timm's Mixup, mode 'batch': on the device, after augment)
  config.mixup = ml_collections.ConfigDict()
  config.mixup.mixup_alpha = 0.0  # mixup: images and targets lam * x + (1 - lam) * partner, the
  # partner being the batch reversed, lam ~ Beta(alpha, alpha) per batch (timm: 0.8); 0: off
  config.mixup.cutmix_alpha = 0.0  # CutMix: a box of area about (1 - lam) of each image is the
  # partner's, lam ~ Beta(alpha, alpha), then lam = the unpasted area fraction (timm: 1.0); 0: off
  config.mixup.prob = 1.0  # probability that a batch is mixed at all (when an alpha is on)
  config.mixup.switch_prob = 0.5  # with both alphas on: probability of CutMix instead of mixup

  # ----- model
  config.model = ml_collections.ConfigDict()
  config.model.name = 'small_cnn'  # small_cnn, small_xception, mnist_mlp, mnist_cnn, alexnet,
  # vgg16, vgg19, resnet18..resnet152, efficientnet_b0, efficientnet_lite0..2
  config.model.dropout_rate = 0.0  # dropout before the dense layers
  config.model.kernel_init = (
      'glorot_uniform'  # glorot_uniform (Keras), he_normal, lecun_normal, normal
  )
  config.model.init_stddev = 0.01  # stddev of kernel_init='normal' (the VGG paper's N(0, 0.01))
  config.model.include_top = ml_collections.FieldReference(
      None, field_type=bool
  )  # VGG/ResNet/EfficientNet: classifier top
  config.model.pooling = ml_collections.FieldReference(
      None, field_type=str
  )  # VGG/EfficientNet without top: 'avg', 'max'; small_cnn: global pooling instead of Flatten
  config.model.batch_norm = ml_collections.FieldReference(
      None, field_type=bool
  )  # small_cnn: Conv (no bias)-BatchNorm-ReLU stages (None: False, the tutorial's)
  config.model.head = ml_collections.FieldReference(
      None, field_type=str
  )  # new head on the base (include_top=False):
  # flatten_dense, flatten_mlp (Dense(head_units)-Dropout-Dense), gmp_dense,
  # dense (Dropout-Dense on the pooled base: needs pooling)
  config.model.head_units = ml_collections.FieldReference(
      None, field_type=int
  )  # flatten_mlp's hidden units
  config.model.stochastic_depth_rate = ml_collections.FieldReference(
      None, field_type=float
  )  # EfficientNet: Keras' drop_connect_rate (None: 0.2);
  # block b of n drops its branch with rate*b/n
  config.model.adaptive_pool = ml_collections.FieldReference(
      None, field_type=tuple
  )  # VGG with top: average-pool the last map to this (H, W) before fc1, as torchvision does,
  # so its (7, 7) classifier fits any image size; None: Keras' Flatten (fc1 follows the size)
  config.model.layers = 'auto'  # layer forms (models/layers.py): 'auto' (on a CPU backend
  # 'onednn' where its library loads, else 'cpu'; plain on GPUs), 'onednn', 'cpu', 'plain'
  config.loss = 'sigmoid'  # 'sigmoid' (1 logit, 2 classes) or 'softmax'
  config.label_smoothing = 0.0  # training loss only: targets (1 - s) * one_hot + s / classes
  # (optax.smooth_labels, Keras' label_smoothing; sigmoid: y (1 - s) + s / 2); validation, test
  # and predictions are scored against the plain labels. In [0, 1); 0: off
  config.half_precision = False  # bfloat16 compute, float32 parameters

  # ----- optimisation
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'rmsprop'  # sgd, rmsprop, adam
  config.optimizer.learning_rate = 1e-4  # base (peak) learning rate
  config.optimizer.momentum = 0.0  # sgd / rmsprop momentum (0: none), as Keras: the velocity
  # holds steps already scaled by the learning rate
  config.optimizer.nesterov = False  # Nesterov momentum: sgd as Keras'; rmsprop as optax's
  # (Keras' RMSprop has none)
  config.optimizer.rho = 0.9  # rmsprop decay of the squared-gradient average (Keras rho)
  config.optimizer.b1 = 0.9  # adam
  config.optimizer.b2 = 0.999  # adam
  config.optimizer.eps = 1e-7  # rmsprop / adam epsilon, Keras 3's (and its default): rmsprop
  # sqrt(v + eps); adam sqrt(v) + eps before bias correction (optax / PyTorch eps: this over
  # sqrt(1 - b2^t))
  config.optimizer.weight_decay = 0.0  # coupled L2 on kernels only: gradient += weight_decay * w
  # (Caffe, the VGG paper's 5e-4, PyTorch SGD's weight_decay); in Keras that is
  # kernel_regularizer=l2(weight_decay / 2), not Keras 3 optimizers' decoupled weight_decay
  # argument (w -= lr * wd * w)
  config.optimizer.grad_clip_norm = 0.0  # clip gradients to this global norm (0: off), before
  # weight_decay is added (as PyTorch; Keras clips the regularised gradient)
  config.frozen = ()  # regexes of parameter paths that get no updates ('block[1-4]_')
  config.trainable = ()  # if set: only matching parameter paths train, all others are frozen
  config.train_from = ml_collections.FieldReference(
      None, field_type=str
  )  # a layer name: it and every
  # layer after it train, those before are frozen (fine-tuning)
  config.init_from = ml_collections.FieldReference(
      None, field_type=str
  )  # 'pretrained:NAME' (published
  # weights, README), a converted weights dir, or a workdir
  config.dont_load = ()  # regexes of parameter paths that init_from leaves freshly initialised
  config.batch_norm_running_average = (
      False  # every BatchNorm layer, trainable or not, normalises with
  )
  # and keeps its running statistics (Keras' fine-tuning advice:
  # base(x, training=False)); False: only frozen ones do

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = 'constant'  # constant, step, cosine, plateau
  config.schedule.warmup_epochs = 0.0  # linear warm-up from 0 (any schedule)
  config.schedule.step_epochs = (
      30,
      60,
      90,
  )  # step: epochs at which lr is multiplied by step_factor
  config.schedule.step_factor = 0.1  # step: the factor at each of step_epochs
  config.schedule.cosine_alpha = 0.0  # cosine: final lr as a fraction of the peak
  config.schedule.plateau_monitor = 'val_accuracy'  # plateau: validation metric checked each epoch
  config.schedule.plateau_factor = 0.1  # plateau: multiply lr by this...
  config.schedule.plateau_patience = 5  # ...after this many epochs without improvement
  config.schedule.plateau_min_delta = 1e-4  # smallest change that counts as improvement
  config.schedule.plateau_cooldown = 0  # epochs to wait after a reduction
  config.schedule.plateau_min_scale = 0.0  # lower bound of the lr multiplier

  config.ema = ml_collections.ConfigDict()  # exponential moving average of the weights
  config.ema.decay = 0.0  # after every step ema += (1 - decay) * (weights - ema), for the
  # parameters and BatchNorm statistics (timm ModelEmaV3); when on, validation, the best
  # checkpoint, evaluate and predict use the average. In [0, 1), e.g. 0.999; 0: off
  config.ema.warmup_power = 0.75  # decay warm-up (timm's use_warmup, gamma 1): at update t the
  # decay is min(decay, 1 - (1 + t) ** -power), so early averages forget the initial weights
  # (timm: 2/3 for runs of 1M+ steps, 3/4 for shorter ones); 0: the full decay from step 1

  # ----- fast feature extraction (train a head on cached features of a frozen, pretrained base)
  config.features = ml_collections.ConfigDict()
  config.features.enabled = False  # on: extract the base's features once, train the head on them
  config.features.cache_dir = (
      '~/.cache/catsdogs_jax/features'  # keyed by weights, data, split, size
  )

  # ----- training loop
  config.batch_size = 32  # global batch, split over all devices
  config.num_epochs = 30  # epochs to train (a finished run trains further when raised)
  config.log_every_steps = 50  # progress line and TensorBoard train scalars
  config.early_stopping = ml_collections.ConfigDict()
  config.early_stopping.enabled = (
      False  # stop when `monitor` stops improving (Keras' EarlyStopping)
  )
  config.early_stopping.monitor = 'val_loss'  # val_loss or val_accuracy
  config.early_stopping.patience = 10  # epochs without improvement before stopping
  config.early_stopping.min_delta = 0.0  # smallest change that counts as improvement
  config.nan_policy = 'stop'  # non-finite loss or gradients: 'stop' (within one log interval)
  # or 'skip' (the update is not applied; counted in log.csv)
  config.max_skipped_steps = 10  # 'skip': stop after this many skipped steps in a row
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 3  # most recent epoch checkpoints kept (plus the best)
  config.checkpoint.best_monitor = 'val_accuracy'  # metric that picks the best checkpoint
  config.profile = ml_collections.ConfigDict()  # a profiler trace for TensorBoard's profile tab
  config.profile.first_step = 10  # of num_steps steps from first_step (after compilation)
  config.profile.num_steps = 0  # 0: no trace
  config.eval_flip = False  # evaluation and prediction average the logits of each image
  # and its mirror image (test-time augmentation)

  # ----- learning-rate range test (--mode=lr_find; Smith 2015, fastai's lr_find)
  config.lr_find = ml_collections.ConfigDict()
  config.lr_find.min_lr = 1e-7  # the rate grows exponentially from min_lr...
  config.lr_find.max_lr = 10.0  # ...to max_lr over num_steps training steps
  config.lr_find.num_steps = 200  # at most (it stops once the loss diverges)
  config.lr_find.smoothing = 0.98  # exponential moving average of the loss (bias-corrected)
  config.lr_find.diverge_factor = 4.0  # stop once the smoothed loss exceeds this x its minimum

  config.lock()
  return config


def set_fields(config, fields: Dict[str, Any]):
  """Sets dotted fields in place ({'optimizer.name': 'sgd'}); returns `config`.

  A field the config does not have raises KeyError (also on an unlocked
  config); a value of the wrong type, ml_collections' TypeError.
  """
  for key, value in fields.items():
    *parents, leaf = key.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    if leaf not in target:
      raise KeyError(leaf)
    target[leaf] = value
  return config


def get_field(config, key: str):
  """The value of a dotted field ('optimizer.name'); KeyError if the config has none."""
  for part in key.split('.'):
    config = config[part]
  return config


def field_comments() -> Dict[str, str]:
  """Dotted field -> its comment in `get_config` above (for --help): read from this file's source,
  so the comments stay the one place each field is explained."""
  import ast
  import inspect
  import io
  import tokenize

  source = inspect.getsource(get_config)
  lines = source.splitlines()
  comments: Dict[int, str] = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string.lstrip('#').strip()
  found = {}
  statements = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign)]
  for node in sorted(statements, key=lambda n: n.lineno):
    target = ast.unparse(node.targets[0])
    if not target.startswith('config.'):
      continue
    text = [comments[i] for i in range(node.lineno, node.end_lineno + 1) if i in comments]
    line = node.end_lineno + 1  # comment-only lines right after continue it
    while line in comments and lines[line - 1].lstrip().startswith('#'):
      if comments[line].startswith('-----'):
        break  # the next group's heading
      text.append(comments[line])
      line += 1
    heading = comments.get(node.lineno - 1, '')
    if not text and heading.startswith('-----'):
      text = [heading.strip('- ')]  # a group: its heading
    found[target[len('config.') :]] = ' '.join(text)
  return found
