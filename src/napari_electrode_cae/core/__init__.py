"""Headless core of napari-electrode-cae: numpy, scipy, tifffile and torch only.

Never imports napari, Qt, magicgui or superqt (a test checks it), so it runs on GPU servers and
in scripts. ``__all__`` is the public API; the modules (``core.physics``, ``core.metrics``,
``core.kernels`` …) hold more for those who need it.
"""

from .analysis import (
    latent_metric_correlations,
    physics_comparison,
    strongest_correlations,
    window_metrics,
)
from .errors import (
    ElectrodeCAEError,
    ModelConfigError,
    PhaseMappingError,
    RunFolderError,
    StackReadError,
    TrainConfigError,
    TrainingMemoryError,
    WindowSpecError,
)
from .evaluation import (
    EvaluationReport,
    compare_window,
    evaluate,
    fit_phase_rule,
    mse_statistics,
    reconstruct,
)
from .grid import run_grid
from .health import Health
from .io import (
    describe_phase_mapping,
    infer_phase_mapping,
    parse_phase_mapping,
    read_stack,
    stack_from_array,
    write_stack,
)
from .model import (
    ConvAutoEncoder3d,
    ModelConfig,
    build_model,
    count_parameters,
    format_summary,
    layer_summary,
)
from .phases import PhaseRule, PhaseScores
from .physics import (
    PhysicsError,
    compare_metrics,
    connected_fraction,
    interface_area_density,
    microstructure_metrics,
    percolating_mask,
    specific_surface_area,
    tortuosity,
    triple_phase_boundary_density,
)
from .presets import PRESETS, Preset, get_preset
from .runs import Run, encode_windows, load_run, save_run, write_report
from .stack import (
    DEFAULT_VOXEL_SIZE_UM,
    PHASES,
    ElectrodeStack,
    snap_to_phases,
    to_network_values,
    volume_fractions,
)
from .studies import CASE_STUDIES, run_study
from .synthetic import generate_electrode
from .training import (
    BatchReport,
    EpochReport,
    TrainConfig,
    TrainResult,
    available_devices,
    resolve_device,
    run_training,
    seed_everything,
    train,
    window_mse,
)
from .windows import WindowDataset, WindowSpec, count_dataset_windows, count_windows, split

__all__ = [
    # errors
    "ElectrodeCAEError",
    "ModelConfigError",
    "PhaseMappingError",
    "PhysicsError",
    "RunFolderError",
    "StackReadError",
    "TrainConfigError",
    "TrainingMemoryError",
    "WindowSpecError",
    # stacks and files
    "DEFAULT_VOXEL_SIZE_UM",
    "PHASES",
    "ElectrodeStack",
    "generate_electrode",
    "read_stack",
    "write_stack",
    "stack_from_array",
    "describe_phase_mapping",
    "infer_phase_mapping",
    "parse_phase_mapping",
    "snap_to_phases",
    "to_network_values",
    "volume_fractions",
    # windows
    "WindowDataset",
    "WindowSpec",
    "count_dataset_windows",
    "count_windows",
    "split",
    # model
    "ConvAutoEncoder3d",
    "ModelConfig",
    "build_model",
    "count_parameters",
    "format_summary",
    "layer_summary",
    "PhaseRule",
    "PhaseScores",
    # training
    "PRESETS",
    "Preset",
    "get_preset",
    "BatchReport",
    "EpochReport",
    "TrainConfig",
    "TrainResult",
    "Health",
    "available_devices",
    "resolve_device",
    "run_training",
    "seed_everything",
    "train",
    "window_mse",
    # evaluation and runs
    "EvaluationReport",
    "compare_window",
    "evaluate",
    "fit_phase_rule",
    "mse_statistics",
    "reconstruct",
    "Run",
    "encode_windows",
    "load_run",
    "save_run",
    "write_report",
    # physics and analysis
    "compare_metrics",
    "connected_fraction",
    "interface_area_density",
    "microstructure_metrics",
    "percolating_mask",
    "specific_surface_area",
    "tortuosity",
    "triple_phase_boundary_density",
    "latent_metric_correlations",
    "physics_comparison",
    "strongest_correlations",
    "window_metrics",
    # studies
    "CASE_STUDIES",
    "run_grid",
    "run_study",
]
