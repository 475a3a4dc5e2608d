"""The plugin's main dock widget: one CAEState shared by six panels in tabs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from .data_panel import DataPanel
from .design_panel import DesignPanel
from .latent_panel import LatentPanel
from .physics_panel import PhysicsPanel
from .results_panel import ResultsPanel
from .state import CAEState
from .training_panel import TrainingPanel
from .turns import TurnQueue
from .window_close import WindowCloseWatcher
from .windows_panel import WindowsPanel

if TYPE_CHECKING:
    import napari


class ElectrodeCAEWidget(QWidget):
    """Data → Windows → Model & training → Results → Latent explorer → Physics, in tabs.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the panels read layers from and draw into.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = CAEState()
        self.data_panel = DataPanel(napari_viewer, self.state)
        self.windows_panel = WindowsPanel(napari_viewer, self.state)
        self.training_panel = TrainingPanel(napari_viewer, self.state)
        # Layer work of the Results and Latents panels: one expensive napari call per turn.
        self.turns = TurnQueue(self)
        self.results_panel = ResultsPanel(napari_viewer, self.state, turns=self.turns)
        self.latent_panel = LatentPanel(napari_viewer, self.state, turns=self.turns)
        self.physics_panel = PhysicsPanel(napari_viewer, self.state)
        self.design_panel = DesignPanel(napari_viewer, self.state, self.latent_panel)
        self.tabs = QTabWidget()
        for panel, title in (
            (self.data_panel, "Data"),
            (self.windows_panel, "Windows"),
            (self.training_panel, "Train"),
            (self.results_panel, "Results"),
            (self.latent_panel, "Latents"),
            (self.physics_panel, "Physics"),
            (self.design_panel, "Design"),
        ):
            self.tabs.addTab(panel, title)
        # While the Train tab is shown, the layer work of Results and Latents (the window layers,
        # side by side) waits: new layers do not pile up over the stack the user is watching
        # train; they are made when another tab (Results, say) is opened.
        self.tabs.currentChanged.connect(self._on_tab_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(380)
        # A docked widget gets no close event when napari's window closes: watch the window so
        # that every panel's workers stop with the viewer.
        self._close_watcher = WindowCloseWatcher(self, self.shutdown)
        # A guest in someone else's napari: nothing process-wide (the garbage collector, torch's
        # thread count) is changed here; `electrode-cae gui` may freeze the GC (see _launch.py).

    @property
    def panels(self) -> tuple[QWidget, ...]:
        return (
            self.data_panel,
            self.windows_panel,
            self.training_panel,
            self.results_panel,
            self.latent_panel,
            self.physics_panel,
            self.design_panel,
        )

    def _on_tab_changed(self, _index: int) -> None:
        if self.tabs.currentWidget() is self.training_panel:
            self.turns.hold()
        else:
            self.turns.release()

    def shutdown(self) -> None:
        """Stop every background worker and wait for it (called on close and by tests)."""
        for panel in self.panels:
            panel.shutdown()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.shutdown()
        super().closeEvent(event)
