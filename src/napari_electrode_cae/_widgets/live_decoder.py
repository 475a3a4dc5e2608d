"""Latest-wins background jobs for live views: decode a latent vector, reconstruct a window.

A slider drag produces dozens of value changes per second; decoding each one would queue work
and make the view lag further and further behind. The runners here keep at most one job running
and at most one pending: a submission while a job runs only replaces the pending job, and when
the running job finishes the newest pending one starts. Results do not queue either: at most
one result is on its way to the main thread, and a result finished while the main thread is
busy (painting, say) replaces one it has not taken yet. Dragging therefore never queues work,
and the last value always gets decoded and shown.

Two runners with the same interface:

* :class:`ChainedRunner` starts one napari ``create_worker`` per job and chains the next one
  from the main thread when a job finishes;
* :class:`ThreadRunner` keeps one long-lived generator worker that waits for jobs and hands
  results over through a one-slot mailbox (no per-job thread-pool start).

``benchmarks/live_decode.py`` measures both. :func:`decode_latent` is the job of the Latents
panel (which also calls it on the GUI thread when a decode is cheap); it reports the wall and
the CPU time of the decode. Workers never touch Qt objects or the viewer; results reach
``on_result`` in the main thread through the worker's signals. The module imports no Qt itself
(only napari's threading helpers, lazily), so the decode helpers can be used and tested
headless.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import ElectrodeCAEError, volume_fractions
from ..core.model import ConvAutoEncoder3d

#: How long :meth:`shutdown` waits for a running job, in seconds.
SHUTDOWN_TIMEOUT_S = 60.0
#: How often an idle :class:`ThreadRunner` worker checks for a quit request, in seconds.
_IDLE_POLL_S = 0.2
#: An idle :class:`ThreadRunner` worker ends after this many seconds without a job, so it holds
#: one of napari's few pool threads (one per CPU core) only while the user interacts.
IDLE_EXIT_S = 2.0


@dataclass(frozen=True)
class DecodedVolume:
    """A latent vector decoded and snapped to phases.

    Attributes
    ----------
    latent : numpy.ndarray
        float32 (k,) latent vector that was decoded.
    labels : numpy.ndarray
        uint8 (l, crop, crop) phase ids (0 pore, 1 CBD, 2 active).
    fractions : dict
        Volume fraction of each phase of ``labels``.
    decode_seconds : float
        Time spent in the decoder and snapping, in seconds.
    requested_at : float
        ``time.perf_counter()`` when the vector was submitted (0 if unknown).
    finished_at : float
        ``time.perf_counter()`` when the decoded array was ready in the worker thread.
    cpu_seconds : float
        CPU time of the decoding thread for the decoder and snapping (``time.thread_time()``):
        unlike ``decode_seconds``, not inflated by waiting for a CPU core or the GIL.
    """

    latent: np.ndarray
    labels: np.ndarray
    fractions: dict
    decode_seconds: float
    requested_at: float = 0.0
    finished_at: float = 0.0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class JobFailed:
    """What a job returns instead of a result when it raised a user-facing error."""

    error: Exception


def model_snapshot(model: ConvAutoEncoder3d) -> ConvAutoEncoder3d:
    """An independent eval-mode copy of ``model`` (same device) for background inference.

    Taken in the main thread when the weights change, so a worker never sees weights that a
    training run is still updating.
    """
    snapshot = copy.deepcopy(model).eval()
    snapshot.requires_grad_(False)
    return snapshot


def decode_latent(
    model: ConvAutoEncoder3d,
    latent: np.ndarray,
    requested_at: float = 0.0,
) -> DecodedVolume:
    """Decode one latent vector with ``model`` and snap it to phases.

    Parameters
    ----------
    model : ConvAutoEncoder3d
        An eval-mode model (see :func:`model_snapshot`); CPU or GPU.
    latent : numpy.ndarray
        (k,) latent features, k = ``model.config.latent_dim``.
    requested_at : float
        ``time.perf_counter()`` of the request, passed through for latency measurements.

    Returns
    -------
    DecodedVolume
        uint8 (l, crop, crop) phase ids and their volume fractions.
    """
    latent = np.asarray(latent, dtype=np.float32).reshape(-1)
    start, cpu_start = time.perf_counter(), time.thread_time()
    device = next(model.parameters()).device
    with torch.inference_mode():  # torch's thread count is the user's: left as it is
        labels = model.phase_labels(model.decode(torch.from_numpy(latent)[None].to(device)))[0]
    finished, cpu_finished = time.perf_counter(), time.thread_time()
    return DecodedVolume(
        latent=latent,
        labels=labels,
        fractions=volume_fractions(labels),
        decode_seconds=finished - start,
        requested_at=requested_at,
        finished_at=finished,
        cpu_seconds=cpu_finished - cpu_start,
    )


def _call_job(function: Callable[..., Any], args: tuple) -> Any:
    """Run one job; user-facing errors come back as :class:`JobFailed`.

    Torch reports shape and out-of-memory problems as RuntimeError; they are shown to the user
    like typed errors instead of silently ending the worker.
    """
    try:
        return function(*args)
    except (ElectrodeCAEError, RuntimeError) as exc:
        return JobFailed(exc)


@dataclass
class RunnerCounts:
    """Bookkeeping of a runner (main-thread view).

    ``requests`` = every submission; ``superseded`` = submissions replaced by a newer one before
    they started, or whose result was replaced by a newer one before the main thread took it;
    ``completed`` = jobs whose result (or failure) reached the main thread.
    """

    requests: int = 0
    superseded: int = 0
    completed: int = 0

    @property
    def idle(self) -> bool:
        """True when every submission has been superseded or completed."""
        return self.requests == self.superseded + self.completed


class _RunnerBase:
    """Shared interface of the runners: ``submit``, ``idle``, ``counts``, ``shutdown``."""

    def __init__(
        self,
        on_result: Callable[[Any], None],
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._on_result = on_result
        self._on_error = on_error
        self.counts = RunnerCounts()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def idle(self) -> bool:
        """True when nothing is running or pending and every result has been delivered."""
        return self.counts.idle

    @property
    def jobs_run(self) -> int:
        """Number of jobs that ran to completion (results delivered)."""
        return self.counts.completed

    def _deliver(self, result: Any) -> None:
        """Main-thread slot: hand a result (or failure) to the owner."""
        if self._closed:
            return
        self.counts.completed += 1
        if isinstance(result, JobFailed):
            if self._on_error is not None:
                self._on_error(result.error)
            return
        self._on_result(result)


class ChainedRunner(_RunnerBase):
    """Latest-wins runner that starts one napari worker per job.

    Parameters
    ----------
    on_result : callable
        Called in the main thread with each job's return value.
    on_error : callable, optional
        Called in the main thread with a job's ElectrodeCAEError or RuntimeError.
    """

    def __init__(self, on_result, on_error=None) -> None:
        super().__init__(on_result, on_error)
        self._pending: tuple | None = None
        self._worker = None
        self._job_running = False
        self._job_done = threading.Event()
        self._job_done.set()

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` now, or make it the pending job if one is running."""
        if self._closed:
            return
        self.counts.requests += 1
        if self._worker is not None:
            if self._pending is not None:
                self.counts.superseded += 1
            self._pending = (function, args)
            return
        self._start(function, args)

    def _start(self, function: Callable[..., Any], args: tuple) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(self._guarded_job, function, args, _start_thread=False)
        worker.returned.connect(self._deliver)
        worker.errored.connect(self._on_worker_errored)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        worker.start()

    def _guarded_job(self, function: Callable[..., Any], args: tuple) -> Any:
        """Worker thread: run the job unless the runner was shut down before it started."""
        with self._lock:
            if self._closed:
                return None
            self._job_running = True
            self._job_done.clear()
        try:
            return _call_job(function, args)
        finally:
            self._job_done.set()

    def _on_worker_errored(self, _exc: Exception) -> None:
        # napari already shows unexpected errors as notifications; count the job as done.
        if not self._closed:
            self.counts.completed += 1

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self._closed or self._pending is None:
            return
        function, args = self._pending
        self._pending = None
        self._start(function, args)

    @property
    def busy(self) -> bool:
        """True while a job's worker has not finished."""
        return self._worker is not None

    @property
    def worker_alive(self) -> bool:
        """True while a job runs in a worker thread."""
        return not self._job_done.is_set()

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Drop the pending job, ask the worker to quit and wait for a running job to end."""
        with self._lock:
            self._closed = True
            running = self._job_running
        self._pending = None
        if self._worker is not None:
            self._worker.quit()
        if running:
            self._job_done.wait(timeout_s)


class ThreadRunner(_RunnerBase):
    """Latest-wins runner with one long-lived napari generator worker.

    The worker waits for a job, runs it and puts the result into a one-slot mailbox; submissions
    while it runs replace the pending job. While the main thread writes one result into a layer,
    the worker already decodes the next vector. A yielded token tells the main thread to take the
    mailbox's result; only one token is on its way at a time, so results finished while the main
    thread is busy never pile up in its event queue (the newest replaces the one not yet taken).
    The worker ends after :data:`IDLE_EXIT_S` without work and is started again by the next
    submission. Same interface as :class:`ChainedRunner`.
    """

    def __init__(self, on_result, on_error=None) -> None:
        super().__init__(on_result, on_error)
        self._wake = threading.Condition(self._lock)
        self._pending: tuple | None = None
        self._mailbox: tuple | None = None  # (result,) finished, not yet taken
        self._dropped = 0  # results replaced in the mailbox before the main thread took them
        self._token_sent = False  # a "take the mailbox" token is on its way
        self._serving = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._worker = None

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Make ``function(*args)`` the pending job (replacing an unstarted one)."""
        if self._closed:
            return
        self.counts.requests += 1
        with self._wake:
            if self._pending is not None:
                self.counts.superseded += 1
            self._pending = (function, args)
            self._wake.notify()
        if self._worker is None:
            self._start_worker()

    def _start_worker(self) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(self._serve, _start_thread=False)
        worker.yielded.connect(self._take)
        worker.errored.connect(self._on_worker_errored)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        worker.start()

    def _serve(self):
        """Worker thread: wait for jobs and yield their results until shut down."""
        worker = self._worker
        with self._wake:
            if self._closed:
                return
            self._serving = True
            self._stopped.clear()
        try:
            while True:
                with self._wake:
                    idle_since = time.monotonic()
                    while self._pending is None and not self._should_stop(worker):
                        if time.monotonic() - idle_since > IDLE_EXIT_S:
                            return  # give the pool thread back; the next submit restarts
                        # Wake up now and then so that a quit() from napari's shutdown of
                        # all workers (application exit) is noticed while idle.
                        self._wake.wait(_IDLE_POLL_S)
                    if self._should_stop(worker):
                        return
                    function, args = self._pending
                    self._pending = None
                result = _call_job(function, args)
                with self._wake:
                    if self._mailbox is not None:
                        self._dropped += 1  # the main thread has not taken the previous one
                    self._mailbox = (result,)
                    send, self._token_sent = not self._token_sent, True
                if send:
                    yield None  # a token: the main thread takes the newest result
        finally:
            self._stopped.set()

    def _take(self, _token: Any = None) -> None:
        """Main thread: take the newest finished result from the mailbox and deliver it."""
        with self._wake:
            box, self._mailbox = self._mailbox, None
            dropped, self._dropped = self._dropped, 0
            self._token_sent = False
        if self._closed:
            return
        self.counts.superseded += dropped
        if box is not None:
            self._deliver(box[0])

    def _should_stop(self, worker) -> bool:
        return self._closed or (worker is not None and worker.abort_requested)

    def _on_worker_errored(self, _exc: Exception) -> None:
        if not self._closed:
            self.counts.completed += 1

    def _on_worker_finished(self) -> None:
        self._worker = None
        with self._wake:
            restart = not self._closed and self._pending is not None
        if restart:
            self._start_worker()

    @property
    def busy(self) -> bool:
        """True while results are outstanding."""
        return not self.idle

    @property
    def worker_alive(self) -> bool:
        """True while the serving loop runs in its worker thread."""
        return not self._stopped.is_set()

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop the serving worker (finishing a running job) and wait for it."""
        with self._wake:
            self._closed = True
            self._pending = None
            serving = self._serving
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.quit()
        if serving:
            self._stopped.wait(timeout_s)


#: The runner kinds by name (``benchmarks/live_decode.py`` compares them).
RUNNERS = {"chained": ChainedRunner, "thread": ThreadRunner}
