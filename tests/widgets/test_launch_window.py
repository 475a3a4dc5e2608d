"""`electrode-cae gui` opens a larger window when the screen allows, never a smaller one."""

from __future__ import annotations

from qtpy.QtWidgets import QApplication

from napari_electrode_cae._launch import WINDOW_SIZE, enlarge_window, window_size


def test_window_size_grows_to_the_screen_within_limits():
    # a 1920×1080 screen (taskbar off): napari's 1066×651 becomes 1600×966
    assert window_size((1920, 1050), (1066, 651)) == (1600, 966)
    # a big screen: the wanted size, no more
    assert window_size((3840, 2100), (1066, 651)) == WINDOW_SIZE
    # a small laptop: most of the screen
    assert window_size((1366, 728), (1066, 651)) == (1256, 669)
    # never smaller than what napari (or the user's saved geometry) opened
    assert window_size((1366, 728), (1800, 1100)) == (1800, 1100)


def test_enlarge_window_fits_the_screen_and_never_shrinks(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    before = viewer.window.geometry()
    enlarge_window(viewer)
    left, top, width, height = viewer.window.geometry()
    free = QApplication.primaryScreen().availableGeometry()
    assert (width, height) == window_size((free.width(), free.height()), before[2:])
    assert width >= before[2] and height >= before[3]
    if (width, height) != tuple(before[2:]):  # moved: centred on the screen
        assert free.x() <= left and left + width <= free.x() + free.width()
