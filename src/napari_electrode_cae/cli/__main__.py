"""``python -m napari_electrode_cae.cli`` (and ``torchrun … -m napari_electrode_cae.cli``)."""

import sys

from . import main

sys.exit(main())
