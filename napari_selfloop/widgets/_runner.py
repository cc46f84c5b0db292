"""Run a core generator in a napari ``thread_worker`` with a progress bar and a Cancel.

The core's long jobs are generators that yield :class:`~napari_selfloop.core.progress.Progress`
events and return a result. :class:`Runner` drives one such job per panel:

- the job runs in a worker thread (napari's ``create_worker``); each yield moves the
  progress bar in the main thread and is the point where *Cancel* takes effect: the
  worker then closes the core generator (its ``finally`` blocks run, nothing is half
  written) and the run ends as cancelled;
- only callbacks run in the main thread touch layers;
- errors come back as values and are shown with ``show_error`` (one line, no traceback);
  unexpected ones are logged with their traceback;
- one run at a time: ``start`` refuses while a run is in progress.

A core step can be long on a CPU (one self-loop patch with Q = 10 is Q optimiser steps), so
for models passed as ``interrupt`` a forward pre-hook on every module also checks the
Cancel flag and raises :class:`~napari_selfloop.core.errors.Cancelled` in the worker
thread: Cancel then takes effect within one layer's forward pass. The core's generators
clean up on that exception as on ``close()`` (the loaded model is never the one that
changes: pseudo-labels update a copy of the encoder, fine-tuning trains a copy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core.errors import Cancelled, SelfloopError
from ..core.progress import Progress, relay

log = logging.getLogger(__name__)


class Status(str, Enum):
    """How a run ended (a string enum: ``Status.DONE == "done"``)."""

    DONE = "done"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass
class Outcome:
    """How a run ended: :attr:`Status.DONE` (with ``value``), ``CANCELLED`` or ``ERROR``."""

    status: Status
    value: Any = None
    error: BaseException | None = None


def error_message(exc: BaseException) -> str:
    """One line for a user: the message of our errors, ``Type: message`` for others."""
    if isinstance(exc, SelfloopError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_WARM = threading.Event()


def warm_up() -> None:
    """Import torch's lazily loaded optimiser machinery (``torch._dynamo``, seconds of
    Python imports) and compute the jigsaw pool once, in a background thread, when the
    first panel opens: done during the first run instead, they would hold the interpreter
    lock long enough to stall the window for a few hundred milliseconds mid-run."""
    if _WARM.is_set():
        return
    _WARM.set()

    def work() -> None:
        try:
            import torch._dynamo  # noqa: F401

            from ..core.engine.jigsaw import permutation_pool
            from ..core.engine.model import ModelConfig

            # The pool of the default model (and of the bundled ones) is computed once
            # (seconds) and cached; a model with another pool size computes its own.
            permutation_pool(ModelConfig().num_permutations)
        except Exception:  # an optimisation only; a failure here changes nothing else
            log.debug("torch warm-up import failed", exc_info=True)

    threading.Thread(target=work, name="napari-selfloop-warm-up", daemon=True).start()


def _install_interrupts(modules: Sequence[Any], cancel: threading.Event) -> list[Any]:
    """Forward pre-hooks that raise Cancelled in this thread once ``cancel`` is set."""
    thread = threading.get_ident()

    def check(module: Any, args: Any) -> None:
        # Only in the thread of this run: a hook copied along with a module (deepcopy)
        # into another run does nothing there.
        if cancel.is_set() and threading.get_ident() == thread:
            raise Cancelled("cancelled")

    handles = []
    for model in modules:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(check))
    return handles


def _drive(
    job: Callable[[], Any], cancel: threading.Event, interrupt: Sequence[Any] = ()
) -> Generator[Progress, None, Outcome]:
    """Worker-thread side: run ``job()``; if it is a generator, step it until done or cancelled."""
    gen = None
    handles = _install_interrupts(interrupt, cancel)
    try:
        gen = job()
        if not isinstance(gen, Generator):
            return Outcome(Status.DONE, gen)

        def check() -> None:
            if cancel.is_set():
                raise Cancelled("cancelled")

        return Outcome(Status.DONE, (yield from relay(gen, check=check)))
    except Cancelled:
        return Outcome(Status.CANCELLED)
    except (SelfloopError, OSError, ValueError, MemoryError) as exc:
        return Outcome(Status.ERROR, error=exc)
    except Exception as exc:  # an unexpected bug: keep the viewer alive, log the traceback
        log.exception("napari-selfloop: unexpected error in a background run")
        return Outcome(Status.ERROR, error=exc)
    finally:
        if isinstance(gen, Generator):
            gen.close()
        for handle in handles:
            handle.remove()


def _abandon(cancel: threading.Event) -> None:
    log.debug("napari-selfloop: panel closed, stopping its run")
    cancel.set()


class Runner(QObject):
    """Runs one job at a time for a panel and drives its progress bar and Cancel button.

    Parameters
    ----------
    name
        Shown in messages ("pseudo-label cancelled").
    """

    started = Signal()
    finished = Signal(object)  # Outcome

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        warm_up()
        self.name = name
        self._cancel = threading.Event()
        self._worker: Any = None
        self.last_outcome: Outcome | None = None
        self.started_at = 0.0
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current step (a second or two)")
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._on_progress: Callable[[Progress], None] | None = None
        self._on_done: Callable[[Any], None] | None = None
        self._on_end: Callable[[Outcome], None] | None = None
        if parent is not None:
            # A panel closed with its viewer stops its run at the next step instead of
            # leaving it working in the thread pool for a window that is gone.
            cancel = self._cancel
            parent.destroyed.connect(lambda *_: _abandon(cancel))

    # -- widgets ---------------------------------------------------------------------

    def make_bar(self) -> QWidget:
        """The progress bar, Cancel button and status line, for a panel's layout."""
        box = QWidget()
        outer = QVBoxLayout(box)
        outer.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        outer.addLayout(row)
        outer.addWidget(self.status)
        return box

    # -- running ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(
        self,
        job: Callable[[], Any],
        *,
        on_done: Callable[[Any], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_end: Callable[[Outcome], None] | None = None,
        message: str = "",
        interrupt: Sequence[Any] = (),
    ) -> bool:
        """Run ``job()`` (a function returning a core generator, or a plain value) in a thread.

        ``on_progress(Progress)`` runs in the main thread on every yield; ``on_done(value)``
        with the generator's return value when it finishes; ``on_end(Outcome)`` always,
        last. ``interrupt``: torch modules whose forward passes also check Cancel.
        Returns False (and says so) when a run is already in progress.
        """
        if self.running:
            show_info(f"{self.name} is already running: wait for it or press Cancel")
            return False
        self._cancel.clear()
        self._on_progress, self._on_done, self._on_end = on_progress, on_done, on_end
        self.last_outcome = None
        self.started_at = time.perf_counter()
        self.progress.setRange(0, 0)  # busy until the first event says how many steps
        self.progress.setFormat(message or f"{self.name}…")
        self.status.setText(message or f"{self.name}…")
        self.cancel_button.setEnabled(True)
        worker = create_worker(_drive, job, self._cancel, tuple(interrupt), _start_thread=False)
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        self._worker = worker
        self.started.emit()
        worker.start()
        return True

    def cancel(self) -> None:
        """Ask the run to stop at its next step."""
        if self.running and not self._cancel.is_set():
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText(f"{self.name}: stopping after the current step…")

    # -- main-thread callbacks -------------------------------------------------------

    def _yielded(self, event: Any) -> None:
        if not isinstance(event, Progress):
            return
        if event.total:
            self.progress.setRange(0, max(1, event.total))
            self.progress.setValue(min(event.done, event.total))
            self.progress.setFormat(f"%v / %m  {event.message}".rstrip())
        if event.message and not self._cancel.is_set():
            self.status.setText(event.message)
        if self._on_progress is not None:
            self._guarded(self._on_progress, event)

    def _returned(self, outcome: Outcome) -> None:
        self._worker = None
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        seconds = time.perf_counter() - self.started_at
        shown = False
        failed = (
            outcome.status is Status.DONE
            and self._on_done is not None
            and not self._guarded(self._on_done, outcome.value)
        )
        if failed:
            outcome = Outcome(Status.ERROR, error=RuntimeError("showing the result failed"))
            shown = True  # _guarded has told the user
        if outcome.status is Status.DONE:
            self.progress.setValue(1)
            self.progress.setFormat(f"done in {seconds:.1f} s")
        elif outcome.status is Status.CANCELLED:
            self.progress.setValue(0)
            self.progress.setFormat("cancelled")
            self.status.setText(f"{self.name} cancelled after {seconds:.1f} s")
            show_info(f"{self.name} cancelled")
        else:
            self.progress.setValue(0)
            self.progress.setFormat("failed")
            message = error_message(outcome.error) if outcome.error else "failed"
            self.status.setText(f"{self.name} failed: {message}")
            if not shown:
                show_error(f"{self.name}: {message}")
        self.last_outcome = outcome
        if self._on_end is not None:
            self._guarded(self._on_end, outcome)
        self.finished.emit(outcome)

    def _guarded(self, fn: Callable[[Any], None], arg: Any) -> bool:
        try:
            fn(arg)
        except (SelfloopError, OSError, ValueError) as exc:
            show_error(f"{self.name}: {error_message(exc)}")
            return False
        except Exception as exc:  # a bug in a callback: report it, keep the viewer alive
            log.exception("napari-selfloop: error while showing a result")
            show_error(f"{self.name}: {error_message(exc)}")
            return False
        return True
