"""Default configuration: detectron2's keys and defaults, plus projects/DeepLab's additions.

Every key that the original `get_cfg()` + `add_deeplab_config(cfg)` provides with a meaning for
semantic segmentation is here with the same default, so detectron2 YAML files load unchanged.
Keys that atrous adds beyond the original are grouped at the end of each section and say so.
"""

from .config import CfgNode as CN

_C = CN()

# Version of the config layout, kept for detectron2 YAML files that set it.
_C.VERSION = 2

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
# "auto" (a GPU where this torch sees one, else the CPU, said once in the log), "cpu", "cuda" (an
# error without a GPU; each process of a multi-process run takes the GPU of its local rank) or
# "cuda:N" (one process). detectron2's default is "cuda"; "auto" runs the same on a GPU machine.
_C.MODEL.DEVICE = "auto"
# Path, URL (https://, detectron2://) or model-zoo name of the weights to initialise from.
_C.MODEL.WEIGHTS = ""
# Mean and std are given in the order of INPUT.FORMAT, on the 0-255 scale.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# Instance/keypoint switches of detectron2, accepted so that its YAML files load; atrous builds
# semantic segmentation models only and ignores them.
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.LOAD_PROPOSALS = False

_C.MODEL.BACKBONE = CN()
# "build_resnet_deeplab_backbone" (projects/DeepLab: stem type, res4 dilation, multi-grid) or
# "build_resnet_backbone" (detectron2's plain ResNet: basic stem, res5 dilation only).
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Freeze the first N stages (0: nothing, 1: the stem, 2: stem and res2, ...).
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "BN", "SyncBN", "FrozenBN", "GN" or "" (no normalisation).
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolutions are not part of the DeepLab models; kept so detectron2 files load.
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
# projects/DeepLab additions.
_C.MODEL.RESNETS.RES4_DILATION = 1
_C.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
# "basic" (one 7x7 conv) or "deeplab" (three 3x3 convs).
_C.MODEL.RESNETS.STEM_TYPE = "deeplab"
# atrous: whether the first block of a dilated stage (RES4_DILATION / RES5_DILATION > 1) has
# the stage's dilation (True: detectron2) or keeps the previous stage's (False: torchvision's
# and timm's ResNets, whose ImageNet and segmentation weights were trained that way; use it with
# STRIDE_IN_1X1 False and STEM_TYPE "basic" for their files).
_C.MODEL.RESNETS.DILATE_FIRST_BLOCK = True

# atrous: MobileNetV3-Large (MODEL.BACKBONE.NAME "build_mobilenet_v3_large_backbone"), with
# torchvision's structure so its ImageNet and DeepLabV3 files load by name. Outputs are named as
# the ResNet outputs of the same nominal stride: stem (2), res2 (4), res3 (8), res4 (16), res5.
# MODEL.BACKBONE.FREEZE_AT freezes the stem and the first stages as for ResNets.
_C.MODEL.MOBILENET = CN()
# Channel multiplier of every layer (torchvision's width_mult; 1.0 is the published model).
_C.MODEL.MOBILENET.WIDTH_MULT = 1.0
# Dilate the last stage instead of striding: res5 at output stride 16 (torchvision's
# segmentation models), else 32.
_C.MODEL.MOBILENET.DILATED = True
_C.MODEL.MOBILENET.OUT_FEATURES = ["res5"]
# "BN", "SyncBN", "FrozenBN", "GN" or ""; batch norms get eps 1e-3 and momentum 0.01 as
# torchvision's.
_C.MODEL.MOBILENET.NORM = "BN"

_C.MODEL.SEM_SEG_HEAD = CN()
_C.MODEL.SEM_SEG_HEAD.NAME = "DeepLabV3PlusHead"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res5"]
# Label value that is ignored by the loss and the metrics.
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
# Stride of the head's logits relative to the input.
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0
# projects/DeepLab additions.
# "cross_entropy" or "hard_pixel_mining" (mean of the top 20% per-pixel losses).
_C.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "hard_pixel_mining"
_C.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = ["res2"]
_C.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [48]
_C.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 256
_C.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12, 18]
_C.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.1
_C.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = False
# atrous: fraction of pixels kept by "hard_pixel_mining" (0.2 in the original, fixed there).
_C.MODEL.SEM_SEG_HEAD.TOP_K_PERCENT_PIXELS = 0.2
# atrous: loss weight per class. None (or []): unweighted, the original. A list of NUM_CLASSES
# floats, or "median_frequency" / "inverse_sqrt_frequency": computed from DATASETS.TRAIN by the
# trainer (atrous.data.statistics, as `atrous check-dataset` reports them), cached in
# OUTPUT_DIR/class_weights.json. Applies to both LOSS_TYPEs (hard_pixel_mining: weighted
# per-pixel losses, then the top-k).
_C.MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS = None

# -----------------------------------------------------------------------------
# Input
# -----------------------------------------------------------------------------
_C.INPUT = CN()
# Short side used in training; one is chosen per image ("choice") or sampled from [min, max]
# ("range").
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Short side at test time; 0 disables resizing.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Channel order the model receives: "RGB" or "BGR".
_C.INPUT.FORMAT = "BGR"
_C.INPUT.MASK_FORMAT = "polygon"
_C.INPUT.RANDOM_FLIP = "horizontal"

_C.INPUT.CROP = CN({"ENABLED": False})
# "absolute", "relative", "relative_range" or "absolute_range".
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
# projects/DeepLab addition: retry a crop while one class covers more than this fraction of it.
_C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

# atrous: photometric augmentation, off by default as in the original.
_C.INPUT.COLOR_AUG = CN({"ENABLED": False})
_C.INPUT.COLOR_AUG.BRIGHTNESS = 0.2
_C.INPUT.COLOR_AUG.CONTRAST = 0.2
_C.INPUT.COLOR_AUG.SATURATION = 0.2

# atrous: pixel budget (width x height) of every image and label file, checked from the file's
# header before decoding, so that a small file claiming a huge size (a decompression bomb) is
# refused with its name instead of exhausting memory. The default is Pillow's own limit
# (PIL.Image.MAX_IMAGE_PIXELS); 0 or negative: no limit.
_C.INPUT.MAX_IMAGE_PIXELS = 89_478_485

# -----------------------------------------------------------------------------
# Datasets
# -----------------------------------------------------------------------------
_C.DATASETS = CN()
# Builtin names (cityscapes_fine_sem_seg_train, ...) or paths to dataset YAML files.
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

# -----------------------------------------------------------------------------
# Data loader
# -----------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# -----------------------------------------------------------------------------
# Solver
# -----------------------------------------------------------------------------
_C.SOLVER = CN()
# "WarmupPolyLR", "WarmupMultiStepLR" or "WarmupCosineLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
# Final LR of the cosine schedule, relative to BASE_LR.
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
# Weight decay of normalisation layers' parameters.
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.NUM_DECAYS = 3
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
# "linear" or "constant".
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Images per batch over all processes.
_C.SOLVER.IMS_PER_BATCH = 16
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None

_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
# "value" or "norm".
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

_C.SOLVER.AMP = CN({"ENABLED": False})
# atrous: "float16" (with a gradient scaler) or "bfloat16".
_C.SOLVER.AMP.DTYPE = "float16"

# projects/DeepLab additions.
_C.SOLVER.POLY_LR_POWER = 0.9
_C.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

# atrous: train with channels_last memory format.
_C.SOLVER.CHANNELS_LAST = False
# atrous: how many periodic checkpoints to keep besides model_final.pth (0 keeps all).
_C.SOLVER.MAX_TO_KEEP = 3

# atrous: keep the weights of the best evaluation as model_best.pth (detectron2's
# BestCheckpointer). METRIC is a key of the evaluation results as metrics.json writes it, e.g.
# "sem_seg/mIoU"; "" turns it off. MODE "max" or "min": which direction is better.
_C.SOLVER.BEST_CHECKPOINT = CN()
_C.SOLVER.BEST_CHECKPOINT.METRIC = ""
_C.SOLVER.BEST_CHECKPOINT.MODE = "max"

# atrous: end training once SOLVER.BEST_CHECKPOINT.METRIC has not improved by more than
# MIN_DELTA for PATIENCE evaluations in a row (0: never). The run then ends cleanly with
# model_final.pth at that iteration.
_C.SOLVER.EARLY_STOP = CN()
_C.SOLVER.EARLY_STOP.PATIENCE = 0
_C.SOLVER.EARLY_STOP.MIN_DELTA = 0.0

# -----------------------------------------------------------------------------
# Test
# -----------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
# Evaluate every N iterations during training (0: only at the end).
_C.TEST.EVAL_PERIOD = 0
_C.TEST.KEYPOINT_OKS_SIGMAS = []
_C.TEST.DETECTIONS_PER_IMAGE = 100

# Test-time augmentation: multi-scale short sides plus horizontal flip, probabilities averaged.
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True

_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# atrous: sliding-window inference for images too large to run whole.
_C.TEST.SLIDING_WINDOW = CN({"ENABLED": False})
# Window (H, W) and stride (H, W) in input pixels.
_C.TEST.SLIDING_WINDOW.SIZE = (512, 1024)
_C.TEST.SLIDING_WINDOW.STRIDE = (341, 683)

# atrous: fast inference path (bf16 autocast + channels_last + BatchNorm folding, optional
# torch.compile). Off by default so evaluation reproduces the original's fp32 numbers.
_C.TEST.FAST = CN({"ENABLED": False})
# "bfloat16", "float16" or "float32".
_C.TEST.FAST.DTYPE = "bfloat16"
_C.TEST.FAST.CHANNELS_LAST = True
_C.TEST.FAST.FOLD_BN = True
_C.TEST.FAST.COMPILE = False

# atrous: largest prediction one image may produce, in MiB of float32 logits (num_classes x
# height x width x 4 bytes at the image's original size). An image above it is refused before
# the model runs, instead of exhausting memory; Cityscapes (19 x 1024 x 2048) needs 152 MiB.
# 0 or negative: no limit.
_C.TEST.MAX_OUTPUT_MB = 4096

# -----------------------------------------------------------------------------
# Experiment tracking (atrous)
# -----------------------------------------------------------------------------
_C.TRACKING = CN()
# Where the training scalars go besides metrics.json: any of "tensorboard", "mlflow", "wandb".
_C.TRACKING.BACKENDS = ("tensorboard",)
# MLflow experiment / W&B project; "" uses "atrous".
_C.TRACKING.PROJECT = ""
# Run name; "" uses the name of OUTPUT_DIR.
_C.TRACKING.RUN_NAME = ""
# MLflow tracking server URI; "" uses MLFLOW_TRACKING_URI or MLflow's own default.
_C.TRACKING.MLFLOW_URI = ""
# W&B mode: "online", "offline" (files under OUTPUT_DIR/wandb, `wandb sync` uploads them later)
# or "" (WANDB_MODE, else online).
_C.TRACKING.WANDB_MODE = ""
# Seconds one delivery attempt may take before it counts as failed and is retried later.
_C.TRACKING.TIMEOUT = 10.0
# Seconds the end of training waits for undelivered data before it reports what was lost.
_C.TRACKING.FLUSH_TIMEOUT = 60.0
# Upload the model bundle (the best checkpoint, else the final one) as an artifact.
_C.TRACKING.LOG_MODEL = True

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Negative: a different seed every run (logged so the run can be repeated).
_C.SEED = -1
# Let cuDNN time its algorithms for each new input shape and keep the fastest: faster training at
# the fixed crop size, but every new shape (evaluation at varying sizes) pays the search again,
# and the choice may differ between runs (not bit-reproducible). See docs/gpu.md.
_C.CUDNN_BENCHMARK = False
# Precision of float32 matrix products and convolutions: "" (PyTorch's defaults), "highest" (IEEE),
# "high" (TF32 on recent GPUs), "medium" (also bfloat16 internals). See docs/gpu.md.
_C.FLOAT32_PRECISION = ""
_C.VIS_PERIOD = 0
# atrous: log every N iterations.
_C.LOG_PERIOD = 20

_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0
