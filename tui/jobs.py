"""Thread workers whose outcome comes back as a message: the one place the app's workers catch errors.

A screen that mixes in :class:`JobRunner` calls :meth:`JobRunner.run_job`; the job runs in
a Textual thread worker and its result (or the message of its error) is posted back to the
screen, so it is handled on the UI thread in order with the other messages the worker
posted before it (a generation's progress redraws).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from textual.message import Message
from textual.worker import Worker

from steerling_lite import SteerlingError

from .store import StoreError

T = TypeVar("T")
USER_ERRORS = (SteerlingError, StoreError)  # errors a user can cause: their message is shown as is


class JobDone(Message):
    """A job's outcome, for ``callback`` on the UI thread."""

    def __init__(self, callback: Callable[[Any], None], value: Any) -> None:
        super().__init__()
        self.callback, self.value = callback, value


class JobRunner:
    """Mixin for a Textual screen or widget: :meth:`run_job` and the handler of its :class:`JobDone`."""

    def run_job(self, job: Callable[[], T], done: Callable[[T], None], failed: Callable[[str], None], *,
                what: str, group: str, exclusive: bool = False) -> Worker:
        """Run ``job`` in a thread worker, then ``done(result)`` or ``failed(message)`` on the UI
        thread: the message of an error a user can cause (:data:`USER_ERRORS`), else
        ``<what> failed: <type>: <message>`` (never a traceback)."""

        def body() -> None:
            try:
                value = job()
            except USER_ERRORS as exc:
                self.post_message(JobDone(failed, str(exc)))
            except Exception as exc:
                self.post_message(JobDone(failed, f"{what} failed: {type(exc).__name__}: {exc}"))
            else:
                self.post_message(JobDone(done, value))

        return self.run_worker(body, group=group, exclusive=exclusive, thread=True, exit_on_error=False)

    def on_job_done(self, event: JobDone) -> None:
        event.stop()
        event.callback(event.value)
