"""Panels whose content scrolls vertically when the dock is shorter than it."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget


def fill_with_scrolling(panel: QWidget, content: QWidget) -> QScrollArea:
    """Make ``content`` the whole of ``panel``, inside a frameless vertical scroll area (never
    a horizontal one: the content follows the dock's width)."""
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setWidget(content)
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return scroll
