"""The one evented state object shared by every panel of the plugin.

The main widget creates a :class:`CAEState` and hands it to each panel; panels change fields and
listen to ``state.events.<field>``. No Qt here: the state is plain data plus psygnal events, so
it can be unit-tested without a viewer. Field summary:

* data: ``stacks`` (the electrode stacks picked in the Data panel, as ElectrodeStack objects in
  memory, phase ids 0/1/2), ``stack_layers`` (the napari layer name each came from) and
  ``converting_layers`` (names of the layers the Data panel converts in the background: their
  results may still change ``stacks``, so Train waits until it is empty);
* windows: ``window`` (WindowSpec), ``val_fraction``, ``split_mode`` ("random" or "blocked":
  the Windows tab offers those two, so the core's default "auto" starts here resolved for the
  quick preset's window), ``seed``, and the derived
  ``dataset`` (WindowDataset or None), ``split`` (WindowSplit or None) and ``window_error``
  (why no dataset could be built, "" if fine);
* model & training: ``model_settings`` (architecture, normalisation, output kind and the phase
  rule of one-value models), ``train_config``, ``model`` (ConvAutoEncoder3d or None),
  ``model_version`` (bumped whenever the weights change: training finished or stopped, run
  opened), ``history`` (tuple of EpochReport), ``training`` (a worker is running);
* results: ``selected_window`` (index into ``dataset``), ``latents`` (float32 (n_windows, k) of
  the current model, or None), ``report`` (EvaluationReport or None), ``run_dir``,
  ``correlation_study`` (the Physics tab's last ``core.analysis.CorrelationStudy`` of the current
  latents, or None: the Latents tab names its sliders after the surviving pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from psygnal import evented

from ..core import (
    ElectrodeCAEError,
    EvaluationReport,
    TrainConfig,
    WindowDataset,
    WindowSpec,
    get_preset,
    split,
)
from ..core.model import ConvAutoEncoder3d, ModelConfig
from ..core.windows import resolve_split

_QUICK = get_preset("quick")


@dataclass(frozen=True, eq=False)
class WindowSplit:
    """Training and validation window indices (sorted int64 arrays)."""

    train: np.ndarray
    val: np.ndarray

    def side(self, index: int) -> str:
        """``"train"``, ``"val"`` or ``"unused"`` (dropped by a blocked split)."""
        if index in set(self.val.tolist()):
            return "val"
        if index in set(self.train.tolist()):
            return "train"
        return "unused"


@dataclass(frozen=True)
class ModelSettings:
    """Model choices of the Train tab (window length and crop come from the window).

    ``norm``: "none" (the paper), "batch" or "group"; ``output``: "value" (the paper's one
    network value, MSE) or "phases" (three phase logits, cross-entropy, argmax);
    ``phase_rule``: how the output becomes phases after training, "fitted" (thresholds, or
    offsets of the three phase logits, fitted to the training fractions) or "nearest", the
    unfitted rule (the paper's nearest value; the plain argmax of a three-phase model), as
    ``core.evaluation.fit_phase_rule`` takes it. The defaults are the quick preset's.
    """

    conv_layers: int = _QUICK.conv_layers
    hidden: int = _QUICK.hidden
    latent_dim: int = _QUICK.latent_dim
    norm: str = _QUICK.norm
    output: str = _QUICK.output
    phase_rule: str = _QUICK.phase_rule

    def model_config(self, window: WindowSpec) -> ModelConfig:
        return ModelConfig(
            window.length,
            window.crop,
            self.conv_layers,
            self.hidden,
            self.latent_dim,
            self.norm,
            self.output,
        )


@evented
@dataclass
class CAEState:
    """Shared, evented state of one plugin session (see the module docstring)."""

    stacks: tuple = ()
    stack_layers: tuple = ()
    converting_layers: tuple = ()
    window: WindowSpec = _QUICK.window
    val_fraction: float = 0.15
    #: The core's "auto" for the quick preset's window (blocked: its windows overlap along Z).
    split_mode: str = resolve_split(_QUICK.train.split, _QUICK.window)
    seed: int = 0
    dataset: WindowDataset | None = None
    split: WindowSplit | None = None
    window_error: str = ""
    model_settings: ModelSettings = field(default_factory=ModelSettings)
    train_config: TrainConfig = _QUICK.train
    model: ConvAutoEncoder3d | None = None
    model_version: int = 0
    history: tuple = ()
    training: bool = False
    selected_window: int = 0
    latents: np.ndarray | None = None
    report: EvaluationReport | None = None
    run_dir: str = ""
    correlation_study: object | None = None

    def rebuild_dataset(self) -> None:
        """Recompute ``dataset`` and ``split`` from stacks and window settings.

        On bad settings ``dataset``/``split`` become None and ``window_error`` says why; nothing
        is raised, so a panel can show the message next to the control that caused it.
        """
        dataset, windows_split, error = None, None, ""
        if not self.stacks:
            error = "no electrode stacks selected"
        else:
            try:
                dataset = WindowDataset(list(self.stacks), self.window)
                train, val = split(dataset, self.val_fraction, self.seed, self.split_mode)
                windows_split = WindowSplit(train, val)
            except ElectrodeCAEError as exc:
                error = str(exc)
        with self.events.paused():
            self.window_error = error
            self.split = windows_split
            self.dataset = dataset
            if dataset is None or self.selected_window >= len(dataset):
                self.selected_window = 0

    def model_matches_dataset(self) -> bool:
        """True if the current model takes the current windows (same length and crop)."""
        if self.model is None or self.dataset is None:
            return False
        c = self.model.config
        return (c.window_length, c.crop) == (self.dataset.spec.length, self.dataset.spec.crop)
