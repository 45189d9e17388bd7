"""Deprecated alias of `effnet_edu.pretrained` (the module was renamed)."""

import warnings

from .pretrained import *  # noqa: F403
from .pretrained import lite_checkpoint_path, lite_preprocess  # noqa: F401

warnings.warn(
    "effnet_edu.weights is now effnet_edu.pretrained; import from there",
    DeprecationWarning,
    stacklevel=2,
)
