"""The generation queue: one model, one device, one job at a time, in arrival order.

A worker thread runs the jobs (generations, embeddings) one after another; the event loop
that serves HTTP only submits jobs and reads what they emit. A job emits items (text
deltas) into an ``asyncio.Queue`` of the loop that submitted it and ends with its result
or its error. Cancelling a waiting job drops it from the queue at once; cancelling a
running one cancels its generation, which stops before its next denoising step
(:meth:`steerling_lite.Generation.cancel`), so the next job starts within one step.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

_END = object()


class QueueFull(Exception):
    """The queue already holds its maximum of waiting jobs."""


class Job:
    """One unit of work for the worker thread.

    ``fn(job)`` runs in the worker; it may call :meth:`emit` (items for the client),
    :meth:`attach` (what :meth:`cancel` should stop) and :meth:`step_done` (after each
    denoising step). Its return value is the job's result.

    Attributes:
        state: ``waiting``, ``running``, ``done`` or ``cancelled``.
        steps_run: denoising steps run so far; emitted: items emitted so far.
        steps_after_cancel: steps that ran after :meth:`cancel` was called (None: not cancelled).
    """

    def __init__(self, fn: Callable[[Job], Any], loop: asyncio.AbstractEventLoop, owner: GenerationQueue):
        self.fn, self.loop, self.owner = fn, loop, owner
        self.items: asyncio.Queue = asyncio.Queue()
        self.future: asyncio.Future = loop.create_future()
        self.state = "waiting"
        self.steps_run = 0
        self.emitted = 0
        self._cancel_step: int | None = None
        self._cancelled = threading.Event()
        self._target: Any = None

    # ---- worker side ---------------------------------------------------------------------
    def emit(self, item: Any) -> None:
        """Hand ``item`` to the client's side (thread-safe, order kept)."""
        self.emitted += 1
        self._post(self.items.put_nowait, item)

    def attach(self, target: Any) -> None:
        """``target.cancel()`` is what cancelling this job does from now on."""
        self._target = target
        if self._cancelled.is_set():
            target.cancel()

    def step_done(self) -> None:
        """Count a denoising step and run the queue's step hook (tests use it to pause a job)."""
        self.steps_run += 1
        hook = self.owner.step_hook
        if hook is not None:
            hook(self)

    def _post(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            self.items.put_nowait(_END)
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
                self.future.exception()  # retrieved: no "never retrieved" warning when nobody waits

        self._post(settle)

    # ---- client side ---------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop this job: dropped if waiting, its generation stopped before the next step if running."""
        if self._cancelled.is_set() or self.state == "done" or self.future.done():
            return
        self._cancel_step = self.steps_run
        self._cancelled.set()
        self.owner._drop(self)
        target = self._target
        if target is not None:
            target.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until the job is cancelled (for tests' step hooks); True if it was."""
        return self._cancelled.wait(timeout)

    @property
    def steps_after_cancel(self) -> int | None:
        return None if self._cancel_step is None else self.steps_run - self._cancel_step

    async def stream(self) -> AsyncIterator[Any]:
        """The items the job emits, then its end; raises the job's error, if it failed."""
        while True:
            item = await self.items.get()
            if item is _END:
                break
            yield item
        await self.future


class GenerationQueue:
    """Runs :class:`Job` s one at a time on a worker thread.

    Args:
        max_waiting: jobs that may wait (beyond the running one) before :meth:`submit`
            raises :class:`QueueFull`.

    Attributes:
        step_hook: called in the worker after each denoising step of a job (None: nothing).
        completed, cancelled: jobs finished and jobs cancelled so far.
    """

    def __init__(self, max_waiting: int = 64):
        self.max_waiting = max_waiting
        self.step_hook: Callable[[Job], None] | None = None
        self.completed = 0
        self.cancelled = 0
        self.last_job: Job | None = None
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="steerling-generation", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job and stop the worker (waits for the running job's current step)."""
        with self._cond:
            self._stopping = True
            jobs = list(self._waiting) + ([self._running] if self._running else [])
            self._cond.notify_all()
        for job in jobs:
            job.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn`` (see :class:`Job`); call from the event loop that will read the job.

        Raises:
            QueueFull: ``max_waiting`` jobs are waiting already.
        """
        job = Job(fn, asyncio.get_running_loop(), self)
        with self._cond:
            if len(self._waiting) + (self._running is not None) > self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the most this server queues: "
                                f"{self.max_waiting}); retry later")
            self._waiting.append(job)
            self._cond.notify()
        return job

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    def __len__(self) -> int:
        """Jobs waiting plus the one running."""
        with self._cond:
            return len(self._waiting) + (self._running is not None)

    def _drop(self, job: Job) -> None:
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.state = "cancelled"
                self.cancelled += 1
                job._finish()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._running = self._waiting.popleft()
                job.state = "running"
            self.last_job = job
            try:
                result = job.fn(job)
            except BaseException as exc:  # reported to the client; the worker carries on
                job._finish(error=exc)
            else:
                job._finish(result)
            finally:
                with self._cond:
                    self._running = None
                    job.state = "done"
                    if job.cancelled:
                        self.cancelled += 1
                    else:
                        self.completed += 1
