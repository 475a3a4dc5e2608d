"""Where studies and grids train when one process is not enough: a Dask cluster or a pool.

``run_grid`` and ``run_study`` with ``scheduler="tcp://HOST:PORT"`` submit every
configuration as one task to a running ``dask.distributed`` cluster (workers started with
``dask worker ADDRESS``, or by dask-jobqueue on SLURM/PBS); with ``workers > 1`` and no
scheduler they start a LocalCluster of that many worker processes in this process. Stacks
travel as paths: they are written once, as uint8 ``.npy`` files under ``OUT/stacks/``, and
every task memory-maps them (pages shared between the workers of one machine, read on demand
on another), so the output folder must be on a path every worker sees (as the run folders
the tasks write are). dask is imported only here, when a cluster is asked for.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import StudyError
from .stack import ElectrodeStack

#: How ``workers > 1`` runs without a scheduler: "auto" (a local Dask cluster when
#: dask.distributed is installed, else a process pool), "dask" or "processes".
PARALLEL_CHOICES = ("auto", "dask", "processes")


#: Seconds to wait for the scheduler named by ``scheduler=``.
SCHEDULER_TIMEOUT_S = 20.0


#: Worker resource a configuration asks for when it trains on a GPU (``device="cuda"``) on a
#: cluster: start GPU workers with ``dask worker ADDRESS --nthreads 1 --resources GPU=1``.
GPU_RESOURCE = "GPU"


def dask_available() -> bool:
    """True when ``dask.distributed`` can be imported (the ``cluster`` extra)."""
    import importlib.util

    try:
        return importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise StudyError(
            "a Dask cluster needs dask.distributed: pip install 'napari-electrode-cae[cluster]'"
        ) from exc
    return distributed


class _Cluster:
    """A ``distributed.Client`` on ``scheduler``, or on a LocalCluster of ``workers`` worker
    processes (one thread each) started here; closed (and a local cluster stopped) on exit."""

    def __init__(self, scheduler: str | None, workers: int) -> None:
        self.scheduler, self.workers = scheduler, workers
        self.client = self.cluster = None

    def __enter__(self):
        distributed = _import_distributed()
        if self.scheduler:
            try:
                self.client = distributed.Client(self.scheduler, timeout=SCHEDULER_TIMEOUT_S)
            except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
                raise StudyError(
                    f"cannot reach the Dask scheduler at {self.scheduler}: {_one_line(exc)}"
                ) from exc
        else:
            self.cluster = distributed.LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = distributed.Client(self.cluster)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def torch_threads(self) -> int:
        """torch threads per task: the local cores shared by the local workers; 0 (leave the
        worker's own setting) on a cluster someone else started."""
        if self.cluster is None:
            return 0
        return max(1, (os.cpu_count() or 1) // self.workers)

    def run(
        self,
        tasks: Sequence[tuple[str, Callable, tuple]],
        resources: dict | None,
        done: Callable[[str, dict | None, str], None],
    ) -> None:
        """Submit ``(name, function, args)`` tasks; call ``done(name, result, error)`` as each
        ends (``error`` "" on success). Ctrl-C (or a KeyboardInterrupt raised by ``done``)
        cancels every task not finished yet and is raised again."""
        distributed = _import_distributed()
        if resources:
            self._wait_for_resources(resources)
        token = hashlib.sha1(f"{time.time_ns()}-{os.getpid()}".encode()).hexdigest()[:8]
        futures = {}
        try:
            for name, function, args in tasks:
                future = self.client.submit(
                    function,
                    *args,
                    key=f"electrode-cae-{name}-{token}",
                    pure=False,
                    resources=resources,
                )
                futures[future] = name
            for future in distributed.as_completed(list(futures)):
                name = futures[future]
                if future.status == "finished":
                    done(name, future.result(), "")
                elif future.status == "error":
                    error = future.exception()
                    done(name, None, f"{type(error).__name__}: {_one_line(error)}")
                else:  # cancelled or lost with its worker
                    done(name, None, f"task {future.status}")
        except KeyboardInterrupt:
            self.client.cancel(list(futures), force=True)  # queued tasks never start
            raise

    def _wait_for_resources(self, resources: dict) -> None:
        """Wait up to :data:`SCHEDULER_TIMEOUT_S` for a worker that offers ``resources`` (workers
        of dask-jobqueue join late); none is a :class:`StudyError`, not tasks queued forever."""
        deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
        while True:
            workers = self.client.scheduler_info().get("workers", {}).values()
            if any(
                all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
                for w in workers
            ):
                return
            if time.monotonic() >= deadline:
                wanted = ", ".join(f"{k}={v}" for k, v in resources.items())
                raise StudyError(
                    f"no worker of the Dask scheduler offers {wanted}: start GPU workers with "
                    f"'dask worker ADDRESS --nthreads 1 --resources {wanted}', or train on "
                    "the CPU (--device cpu or auto)"
                )
            time.sleep(0.5)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def share_stacks(stacks: Sequence[ElectrodeStack], folder: str | Path) -> list[dict]:
    """Write each stack once as a uint8 ``.npy`` file in ``folder`` (kept when a file of the same
    content is there) and return records :func:`open_shared_stacks` reads back memory-mapped."""
    from .checkpoint import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, stack in enumerate(stacks):
        labels = np.ascontiguousarray(stack.labels)
        digest = hashlib.sha1(labels.tobytes()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stack.name)[:40]
        path = folder / f"{i:02d}_{safe}_{digest}.npy"
        if not path.exists():
            buffer = io.BytesIO()
            np.save(buffer, labels)
            atomic_write_bytes(path, buffer.getvalue())
        records.append(
            {
                "path": str(path.resolve()),
                "voxel_size_um": stack.voxel_size_um,
                "calendered": stack.calendered,
                "source": stack.source,
                "name": stack.name,
                "phase_mapping": dict(stack.phase_mapping),
            }
        )
    return records


def open_shared_stacks(records: Sequence[Mapping]) -> list[ElectrodeStack]:
    """The stacks of :func:`share_stacks`' records, memory-mapped read-only."""
    stacks = []
    for r in records:
        try:
            labels = np.load(r["path"], mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise StudyError(
                f"cannot read the shared stack {r['path']} ({_one_line(exc)}); "
                "the output folder must be on a path every worker sees"
            ) from exc
        stacks.append(
            ElectrodeStack(
                labels,
                r["voxel_size_um"],
                r["calendered"],
                r["source"],
                r["name"],
                dict(r["phase_mapping"]),
            )
        )
    return stacks


def _gpu_resources(scheduler: str | None, device: str) -> dict | None:
    """A task on a cluster that trains on CUDA asks for one GPU worker resource."""
    return {GPU_RESOURCE: 1} if scheduler and device == "cuda" else None


def _use_dask(scheduler: str | None, workers: int, parallel: str) -> bool:
    if parallel not in PARALLEL_CHOICES:
        raise StudyError(f"parallel must be one of {PARALLEL_CHOICES}, got {parallel!r}")
    if scheduler:
        return True
    if workers <= 1 or parallel == "processes":
        return False
    return parallel == "dask" or dask_available()
