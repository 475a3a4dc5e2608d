import subprocess
import sys

FORBIDDEN = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
)


def test_core_imports_no_gui_toolkit():
    code = (
        "import sys\n"
        "import napari_electrode_cae.core as core\n"
        "import napari_electrode_cae.cli\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core/cli pulled in GUI modules: {out.stdout}"
