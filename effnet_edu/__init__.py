"""effnet-edu: an exact, explorable EfficientNet for teaching.

Everything a notebook needs is importable from here:

    import effnet_edu as ee
    model = ee.efficientnet("b0")   # or phi=1.5, or depth=2.0 / width=... / resolution=...
    ee.count_params(model), ee.count_flops(model)
    lite = ee.efficientnet_lite(0, pretrained=True); ee.predict(lite, photo)
"""

__version__ = "0.2.0"

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
from .blocks import FusedMBConv, MBConv, SqueezeExcitation, stochastic_depth
from .data import DATASET_NAMES, class_names, get_dataset
from .model import (
    BASELINE_STAGES,
    LITE_VARIANTS,
    V2_STAGES,
    EfficientNet,
    EfficientNetConfig,
    StageConfig,
    efficientnet_config,
    efficientnet_lite_config,
    efficientnet_v2,
    scale_stages,
)
from .plots import plot_class_grid
from .pretrained import (
    IMAGENET_CATEGORIES,
    efficientnet,
    efficientnet_lite,
    load_lukemelas_state_dict,
    load_torchvision_state_dict,
    predict,
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
    VARIANTS,
    compound_coefficients,
    explain_official_variants,
    fit_phi,
    flops_multiplier,
    round_filters,
    round_repeats,
)
from .synthetic import SyntheticObjects
from .training import TrainConfig, evaluate, fit, load_checkpoint, select_device


def __getattr__(name: str):
    if name == "MemoryEfficientSiLU":  # removed, with the reason
        raise AttributeError(
            "effnet_edu.MemoryEfficientSiLU was removed: torch.nn.SiLU already keeps only its "
            "input for the backward pass, so it saved no memory (notebook 04 shows why). To save "
            "training memory use efficientnet(..., gradient_checkpointing=True)."
        )
    raise AttributeError(f"module 'effnet_edu' has no attribute {name!r}")
