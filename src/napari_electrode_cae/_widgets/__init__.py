"""napari dock widgets. Every panel takes ``(viewer, state)`` and shares one CAEState."""

from .main_widget import ElectrodeCAEWidget

__all__ = ["ElectrodeCAEWidget"]
