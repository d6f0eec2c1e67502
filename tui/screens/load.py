"""The load screen: model directory (recent ones remembered), device, quant mode and memory
budget, the memory plan before loading, a progress bar while loading, errors in place."""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, ProgressBar, Select, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState, get_current_worker

from steerling_lite import SteerlingError

from .. import backend
from ..backend import BackendError, LoadRequest

LOAD_HINT = ("Check the path: it must be a folder holding config.json and model.safetensors "
             "(or shards with model.safetensors.index.json). `steerling-lite info --model DIR` shows what it holds.")


class LoadScreen(Screen):
    """Pick and load a checkpoint; dismisses with the loaded :class:`Steerling` (None: cancelled)."""

    BINDINGS = [
        Binding("escape", "cancel", "Back"),
        Binding("ctrl+l", "load", "Load", priority=True),
        Binding("f1", "app.help", "Help"),
    ]

    class Progress(Message):
        def __init__(self, done: int, total: int, name: str) -> None:
            super().__init__()
            self.done, self.total, self.name = done, total, name

    def __init__(self, path: str = "", autoload: bool = False, recent: list[str] | None = None,
                 device: str = "auto", quant: str = "auto") -> None:
        super().__init__()
        self.initial_path = path
        self.autoload = autoload
        self.recent = recent or []
        self.device = device
        self.quant = quant
        self._plan_timer = None
        self.loading = False

    def compose(self) -> ComposeResult:
        yield Static("steerling-lite · open a model", id="load-title")
        with Vertical(id="load-form"):
            yield Label("Model directory", classes="section")
            yield Input(self.initial_path, placeholder="path to a checkpoint folder", id="model-path")
            yield OptionList(*[Option(p, id=f"r{i}") for i, p in enumerate(self.recent)], id="recent")
            with Horizontal(id="load-options"):
                yield Label("device", classes="opt-label")
                devices = ["auto", "cpu"] + (["cuda"] if backend.cuda_available() else [])
                yield Select([(d, d) for d in devices], value=self.device if self.device in devices else "auto",
                             allow_blank=False, id="device", compact=True)
                yield Label("quant", classes="opt-label")
                modes = backend.quant_modes()
                yield Select([(m, m) for m in modes], value=self.quant if self.quant in modes else modes[0],
                             allow_blank=False, id="quant", compact=True)
                yield Label("GPU budget", classes="opt-label")
                yield Input(placeholder="all free", id="budget", compact=True)
            with VerticalScroll(id="plan-box"):
                yield Static("", id="plan")
            with Horizontal(id="load-buttons"):
                yield Button("Load", id="load", variant="primary", compact=True)
                yield Button("Back", id="cancel", compact=True)
            yield ProgressBar(total=None, show_eta=False, id="load-progress")
            yield Static("", id="load-error", classes="error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#recent", OptionList).display = bool(self.recent)
        self.query_one("#load-progress", ProgressBar).display = False
        self.query_one("#model-path", Input).focus()
        self._update_plan()
        if self.autoload and self.initial_path:
            self.action_load()

    # ---- inputs ------------------------------------------------------------------------
    def request(self) -> LoadRequest:
        """What the form asks for. Raises BackendError for a bad memory budget."""
        budget_text = self.query_one("#budget", Input).value
        return LoadRequest(
            path=self.query_one("#model-path", Input).value.strip(),
            device=str(self.query_one("#device", Select).value),
            quant=str(self.query_one("#quant", Select).value),
            max_gpu_memory=backend.budget_bytes(budget_text),
        )

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        if self._plan_timer is not None:
            self._plan_timer.stop()
        self._plan_timer = self.set_timer(0.25, self._update_plan)

    @on(Input.Submitted, "#model-path")
    @on(Button.Pressed, "#load")
    def _submit(self) -> None:
        self.action_load()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.action_cancel()

    @on(OptionList.OptionSelected, "#recent")
    def _recent(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#model-path", Input).value = str(event.option.prompt)
        self.query_one("#model-path", Input).focus()

    # ---- memory plan ---------------------------------------------------------------------
    def _update_plan(self) -> None:
        try:
            req = self.request()
        except BackendError as exc:
            self._show_plan(None, str(exc))
            return
        if not req.path:
            self._show_plan(None, "Type the folder of a checkpoint to see its memory plan.")
            return
        self._plan_worker(req)

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _plan_worker(self, req: LoadRequest) -> None:
        try:
            lines = backend.memory_plan(req)
            self.app.call_from_thread(self._show_plan, lines, "")
        except SteerlingError as exc:
            self.app.call_from_thread(self._show_plan, None, f"no memory plan: {exc}")
        except Exception as exc:  # a plan is advisory: never let it break the screen
            self.app.call_from_thread(self._show_plan, None, f"no memory plan: {type(exc).__name__}: {exc}")

    def _show_plan(self, lines: list[str] | None, note: str) -> None:
        plan = self.query_one("#plan", Static)
        if lines:
            text = Text(no_wrap=True, overflow="ignore")
            text.append(lines[0] + "\n", "bold")
            text.append("\n".join(lines[1:]))
            plan.styles.width = "auto"  # wide tables scroll sideways instead of wrapping
            plan.update(text)
        else:
            plan.styles.width = "1fr"
            plan.update(Text(note, style="dim"))

    # ---- loading -------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        self.query_one("#load-error", Static).update(Text(message))

    def action_load(self) -> None:
        if self.loading:
            return
        try:
            req = self.request()
        except BackendError as exc:
            self.show_error(str(exc))
            return
        if not req.path:
            self.show_error("no model directory given: type the path of a checkpoint folder")
            return
        self.show_error("")
        self.loading = True
        bar = self.query_one("#load-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.query_one("#load", Button).disabled = True
        self.sub_title = f"loading {req.path}"
        self._load_worker(req)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load_worker(self, req: LoadRequest):
        last = [0.0]
        worker = get_current_worker()

        def progress(done: int, total: int, name: str) -> None:
            if worker.is_cancelled:
                raise BackendError("loading was cancelled")
            now = time.monotonic()
            if now - last[0] > 0.05 or done >= total:
                last[0] = now
                self.post_message(self.Progress(done, total, name))

        return req, backend.load_model(req, progress)

    def on_load_screen_progress(self, event: Progress) -> None:
        self.query_one("#load-progress", ProgressBar).update(total=max(event.total, 1), progress=event.done)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "load":
            return
        if event.state == WorkerState.SUCCESS:
            req, lm = event.worker.result
            self.loading = False
            self.dismiss((req, lm))
        elif event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            self.loading = False
            self.sub_title = ""
            self.query_one("#load", Button).disabled = False
            self.query_one("#load-progress", ProgressBar).display = False
            exc = event.worker.error
            if isinstance(exc, SteerlingError):
                msg = f"Could not load the model: {exc}"
            elif isinstance(exc, MemoryError):
                msg = "Out of memory while loading: choose a quant mode (nf4 / int8) or a smaller model"
            elif exc is not None:
                msg = f"Could not load the model: {type(exc).__name__}: {exc}"
            else:
                msg = "Loading was cancelled"
            self.show_error(f"{msg}\n{LOAD_HINT}")

    def action_cancel(self) -> None:
        if self.loading:
            self.workers.cancel_group(self, "load")
            return
        self.dismiss(None)
