"""What the Data panel puts into the shared state, and a one-click use for Image layers.

:class:`StackChoice` is mixed into :class:`.data_panel.DataPanel`: the used layers' stacks go
into ``state.stacks`` (and the dataset is rebuilt), a choice made by another panel (Open run)
ticks the layers, and an electrode that napari's own reader opened as an Image layer (grey
values at scale 1) becomes a phase Labels layer aligned with the others in one click.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import _layers
from ..core import ElectrodeStack, describe_phase_mapping
from ..core.stack import DEFAULT_VOXEL_SIZE_UM
from .data_layers import LayerEntry, layer_tag

#: Key in an Image layer's plugin metadata: the Labels layer it was adopted as.
ADOPTED_KEY = "adopted_as"


def adoptable_image(entries: list[LayerEntry]) -> LayerEntry | None:
    """The first Image layer that converts to a stack but is not used (napari's reader opened
    an electrode file as grey values), or None."""
    from napari.layers import Image

    for entry in entries:
        meta = entry.layer.metadata.get(_layers.METADATA_KEY)
        adopted = isinstance(meta, dict) and ADOPTED_KEY in meta
        if isinstance(entry.layer, Image) and entry.usable and not entry.use and not adopted:
            return entry
    return None


def aligned_voxel_size(stacks: tuple[ElectrodeStack, ...], layers: Any) -> float:
    """The voxel size (µm) the plugin's layers share: the used stacks', else the plugin layers'
    (their metadata), else the default 0.398 µm."""
    sizes = {round(float(stack.voxel_size_um), 9) for stack in stacks}
    if not sizes:
        for layer in layers:
            meta = layer.metadata.get(_layers.METADATA_KEY)
            if isinstance(meta, dict) and "phases" in meta and meta.get("voxel_size_um"):
                sizes.add(round(float(meta["voxel_size_um"]), 9))
    return sizes.pop() if len(sizes) == 1 else DEFAULT_VOXEL_SIZE_UM


class StackChoice:
    """The used stacks in the state, and adopting Image layers (a mixin of DataPanel)."""

    entries: list[LayerEntry]

    def _stack_in_state(
        self, converted: ElectrodeStack, name: str, tag: bool | None
    ) -> ElectrodeStack | None:
        """The stack of layer ``name`` in ``state.stacks`` if it is ``converted`` renamed.

        Another panel (Open run) may have put the layer's stack into the state already; keeping
        that object leaves the dataset as it is when this panel catches up.
        """
        for stack, layer_name in zip(self.state.stacks, self.state.stack_layers):
            if (
                layer_name == name
                and stack.labels is converted.labels
                and (stack.name, stack.calendered) == (name, tag)
                and stack.phase_mapping == converted.phase_mapping
                and stack.voxel_size_um == converted.voxel_size_um
            ):
                return stack
        return None

    def _push_state(self) -> None:
        """Write the used stacks to ``state`` and rebuild the dataset, if they changed."""
        pairs = self._used_stacks()
        stacks = tuple(stack for _, stack in pairs)
        names = tuple(name for name, _ in pairs)
        self._update_summary(pairs)
        same = len(stacks) == len(self.state.stacks) and all(
            a is b for a, b in zip(stacks, self.state.stacks)
        )
        if same and names == tuple(self.state.stack_layers):
            return
        self._pushing = True
        try:
            self.state.stack_layers = names
            self.state.stacks = stacks
        finally:
            self._pushing = False
        self.state.rebuild_dataset()

    def _used_stacks(self) -> list[tuple[str, ElectrodeStack]]:
        """(layer name, stack) of each used layer, in layer order.

        A checked layer being converted keeps the stack the state holds for it if that stack
        is the layer's data itself and no mapping was set (Open run put it there): what the
        conversion gives, so the dataset need not go and come back.
        """
        pairs = []
        for entry in self.entries:
            if entry.used:
                pairs.append((entry.layer.name, entry.stack))
            elif entry.converting and entry.use and entry.override is None:
                for stack, name in zip(self.state.stacks, self.state.stack_layers):
                    if name == entry.layer.name and stack.labels is entry.layer.data:
                        pairs.append((name, stack))
                        break
        return pairs

    def _on_state_stack_layers(self, _event: Any = None) -> None:
        """Another panel chose the stacks (Open run): check exactly their layers.

        A layer still being converted is checked (or not) once its conversion is in, and then
        keeps the stack object the state already holds (see :meth:`_stack_in_state`).
        """
        if self._pushing or self._closing:
            return
        wanted = set(self.state.stack_layers)
        changed = False
        for entry in self.entries:
            use = entry.layer.name in wanted
            if entry.converting:
                entry._use_chosen, entry._use_if_usable = True, False
            elif not entry.usable:
                continue
            elif use:  # the state's own stack object, if it is this layer's
                entry.stack = (
                    self._stack_in_state(entry.converted, entry.layer.name, layer_tag(entry.layer))
                    or entry.stack
                )
            changed |= entry.use != use
            entry.use = use
        if changed:
            self._fill_table()
        self._update_summary(self._used_stacks())

    # ------------------------------------------------------------------ Image layers

    def _update_adopt_button(self) -> None:
        entry = adoptable_image(self.entries)
        if entry is None:
            self.adopt_image_button.hide()
            return
        voxel = aligned_voxel_size(self.state.stacks, self.viewer.layers)
        self.adopt_image_button.setText(
            f"Use image '{entry.layer.name}' as an electrode stack ({voxel:g} µm)"
        )
        self.adopt_image_button.setToolTip(
            f"'{entry.layer.name}' is an Image layer (napari's own reader: grey values, scale "
            f"{float(np.asarray(entry.layer.scale)[-1]):g}). This adds it as a phase layer "
            f"({describe_phase_mapping(entry.converted.phase_mapping)}) at {voxel:g} µm, "
            "like the plugin's other layers, and hides the image (aligned to the same scale)."
        )
        self.adopt_image_button.show()

    def _on_adopt_image_clicked(self) -> None:
        entry = adoptable_image(self.entries)
        if entry is not None:
            self.adopt_image(entry.layer.name)

    def adopt_image(self, name: str) -> Any:
        """Use the Image layer ``name`` as an electrode stack; returns the new Labels layer.

        The layer's stored values are mapped to phases as its row shows (the inferred mapping
        or the one set for it); a phase Labels layer called ``"<name> (phases)"`` is added with
        the voxel size of the plugin's other layers (:func:`aligned_voxel_size`), carrying that
        stored-value mapping in its metadata, and used. The image is kept, hidden, and given the
        same scale so that the two line up. Its data is not changed.

        Raises
        ------
        KeyError
            If no usable Image layer is called ``name``.
        """
        from napari.layers import Image

        entry = next(
            (
                e
                for e in self.entries
                if e.layer.name == name and isinstance(e.layer, Image) and e.usable
            ),
            None,
        )
        if entry is None:
            raise KeyError(f"no Image layer called {name!r} that converts to an electrode stack")
        image = entry.layer
        voxel = aligned_voxel_size(self.state.stacks, self.viewer.layers)
        path = getattr(image.source, "path", None)
        stack = dataclasses.replace(
            entry.converted,
            voxel_size_um=voxel,
            name=f"{name} (phases)",
            calendered=layer_tag(image),
            source=str(path) if path else entry.converted.source,
        )
        image.scale = (voxel,) * image.ndim
        image.units = ("µm",) * image.ndim
        image.visible = False
        labels = _layers.add_stack_labels(self.viewer, stack)
        meta = image.metadata.get(_layers.METADATA_KEY)
        image.metadata[_layers.METADATA_KEY] = {
            **(meta if isinstance(meta, dict) else {}),
            ADOPTED_KEY: labels.name,
        }
        self._update_adopt_button()
        return labels
