"""detectron2's ``model_zoo`` entry points: shipped configs and published weights by name.

>>> from atrous import model_zoo
>>> cfg_file = model_zoo.get_config_file(
...     "Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml")
>>> model_zoo.get_checkpoint_url("DeepLabV3+_R103")  # doctest: +ELLIPSIS
'detectron2://DeepLab/.../model_final_a8a355.pkl'
"""

from __future__ import annotations

from .checkpoint.model_zoo import get_checkpoint_url, list_models
from .config.shipped import get_config_file, list_config_files

__all__ = ["get_checkpoint_url", "get_config_file", "list_config_files", "list_models"]
