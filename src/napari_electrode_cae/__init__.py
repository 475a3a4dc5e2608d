"""napari-electrode-cae: 3D convolutional auto-encoders for Li-ion electrode microstructures.

``napari_electrode_cae.core`` is the headless API (no Qt); the napari plugin and the
``electrode-cae`` command line are built on it.
"""

__version__ = "0.1.0"
