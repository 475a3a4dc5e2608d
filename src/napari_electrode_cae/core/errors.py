"""Typed errors of the headless core.

Every error a user can cause derives from :class:`ElectrodeCAEError`, so the CLI and the GUI can
report it as one clear line without catching unrelated bugs.
"""

from __future__ import annotations


class ElectrodeCAEError(Exception):
    """Base class of every user-facing error raised by napari-electrode-cae."""


class StackReadError(ElectrodeCAEError):
    """A file or folder could not be read as an electrode stack."""


class PhaseMappingError(ElectrodeCAEError):
    """Stored label values cannot be mapped to the three phases (pore, CBD, active)."""


class WindowSpecError(ElectrodeCAEError):
    """A sliding-window specification does not fit the data (length, stride, crop, split)."""


class ModelConfigError(ElectrodeCAEError):
    """An auto-encoder configuration is invalid (layers, crop, sizes)."""


class TrainConfigError(ElectrodeCAEError):
    """A training configuration is invalid (epochs, batch, learning rate, device)."""


class RunFolderError(ElectrodeCAEError):
    """A run folder is missing, incomplete, inconsistent or untrusted."""


class StackWriteError(ElectrodeCAEError):
    """An electrode stack could not be written."""


class TrainingMemoryError(ElectrodeCAEError):
    """Training or validation ran out of memory (GPU or host) for the chosen batch and window.

    The message names the device, batch size and window shape and suggests a smaller batch or
    crop; the model keeps the best weights found before the failure.
    """


class ResourceLimitError(ElectrodeCAEError):
    """A file or a setting would take more memory or time than allowed (a decoded stack above
    ``--max-stack-gib``, a window grid or a model larger than the machine's memory); nothing
    was allocated. The message names the size, the limit and how to change it."""


class RunFolderBusyError(RunFolderError):
    """Another process holds the run folder's lock (it is training, evaluating or analysing it)."""


class OutputWriteError(ElectrodeCAEError):
    """A file the tool writes could not be written (e.g. the disk is full); the previous file,
    if any, is left as it was."""


class StudyError(ElectrodeCAEError):
    """A study or grid cannot run as asked (no stacks, unknown grid key, foreign out folder)."""
