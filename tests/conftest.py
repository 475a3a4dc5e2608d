"""Shared tiny fixtures: small random 3-phase stacks that make tests fast and deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from napari_electrode_cae.core import ElectrodeStack


def make_stack(shape=(12, 32, 32), seed=0, name="tiny", calendered=True) -> ElectrodeStack:
    """A random but spatially smooth 3-phase stack (so an auto-encoder has something to learn)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2)
    labels = np.digitize(field, np.quantile(field, [0.4, 0.52])).astype(np.uint8)
    return ElectrodeStack(labels, calendered=calendered, name=name, source="")


@pytest.fixture
def tiny_stack() -> ElectrodeStack:
    return make_stack()


@pytest.fixture
def tiny_stacks() -> list[ElectrodeStack]:
    return [make_stack(seed=0, name="cal"), make_stack(seed=1, name="uncal", calendered=False)]
