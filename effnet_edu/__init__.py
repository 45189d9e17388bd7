"""effnet-edu: an exact, explorable EfficientNet for teaching.

Everything a notebook needs is importable from here:

    import effnet_edu as ee
    model = ee.efficientnet("b0")   # or phi=1.5, or depth=2.0 / width=... / resolution=...
    ee.count_params(model), ee.count_flops(model)
    lite = ee.efficientnet_lite(0, pretrained=True); ee.predict(lite, photo)
"""

from .attention import (
    ScoreSummary,
    attention_scores,
    cam_iou,
    energy_share,
    faithfulness,
    gradcam,
    layer_names,
    overlay,
    pointing_game,
    resize_cams,
    resolve_layer,
    summarize_scores,
)
from .blocks import MBConv, MemoryEfficientSiLU, SqueezeExcitation, stochastic_depth
from .data import DATASET_NAMES, SyntheticObjects, class_names, get_dataset, plot_class_grid
from .model import (
    BASELINE_STAGES,
    LITE_VARIANTS,
    EfficientNet,
    EfficientNetConfig,
    StageConfig,
    efficientnet,
    efficientnet_config,
    efficientnet_lite,
    efficientnet_lite_config,
    scale_stages,
)
from .profiling import (
    config_flops,
    config_params,
    count_flops,
    count_macs,
    count_params,
    measure_latency,
    profile,
)
from .scaling import (
    ALPHA,
    BETA,
    GAMMA,
    OFFICIAL_VARIANTS,
    compound_coefficients,
    explain_official_variants,
    fit_phi,
    flops_multiplier,
    round_filters,
    round_repeats,
)
from .training import TrainConfig, evaluate, fit, load_checkpoint, select_device
from .weights import (
    IMAGENET_CATEGORIES,
    load_lukemelas_state_dict,
    load_torchvision_state_dict,
    predict,
)

__version__ = "0.1.0"

__all__ = [
    "ScoreSummary",
    "attention_scores",
    "cam_iou",
    "energy_share",
    "faithfulness",
    "gradcam",
    "layer_names",
    "overlay",
    "pointing_game",
    "resize_cams",
    "resolve_layer",
    "summarize_scores",
    "ALPHA",
    "BASELINE_STAGES",
    "BETA",
    "DATASET_NAMES",
    "EfficientNet",
    "EfficientNetConfig",
    "GAMMA",
    "IMAGENET_CATEGORIES",
    "LITE_VARIANTS",
    "MBConv",
    "MemoryEfficientSiLU",
    "OFFICIAL_VARIANTS",
    "SqueezeExcitation",
    "StageConfig",
    "SyntheticObjects",
    "TrainConfig",
    "class_names",
    "compound_coefficients",
    "config_flops",
    "config_params",
    "count_flops",
    "count_macs",
    "count_params",
    "efficientnet",
    "efficientnet_config",
    "efficientnet_lite",
    "efficientnet_lite_config",
    "evaluate",
    "explain_official_variants",
    "fit",
    "fit_phi",
    "flops_multiplier",
    "get_dataset",
    "load_checkpoint",
    "load_lukemelas_state_dict",
    "load_torchvision_state_dict",
    "measure_latency",
    "plot_class_grid",
    "predict",
    "profile",
    "round_filters",
    "round_repeats",
    "scale_stages",
    "select_device",
    "stochastic_depth",
]
