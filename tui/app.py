"""The Textual app: ``steerling-lite tui`` / ``python -m tui``.

Screens: :class:`LoadScreen` (pick and load a checkpoint), :class:`ChatScreen` (the main
screen), and the modal help, history, compare and export screens. The app owns the
:class:`~tui.conversation.Conversation` (the controller the chat screen drives) and hands
it its services: the sessions database (:mod:`tui.store`) at start, the model's
(:class:`~tui.conversation.ModelServices`) when one is loaded. Everything asked of the
runtime goes through :mod:`tui.backend` and :mod:`tui.concepts`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from steerling_lite import Steerling, list_presets

from . import backend
from .backend import LoadRequest, StatusSource
from .concepts import Catalog, read_steering_preset
from .conversation import RUNNING, Conversation
from .jobs import USER_ERRORS
from .records import ModelServices
from .screens import ChatScreen, HelpScreen, LoadScreen
from .screens.preset import PresetSaveScreen
from .widgets import SteeringPanel
from .store import Store, StoreError


class SteerlingApp(App):
    """Chat-like generation with live concept steering and attribution.

    Args:
        model: checkpoint directory to load at start (None: show the load screen).
        device, quant: initial load options.
        status_source: ``(lm, tokens_per_s) -> Status`` for the status bar (tests pass a
            fixed one so screenshots do not vary); default :func:`backend.read_status`.
        store_path: sessions database (default: ``sessions.sqlite3`` in the data dir).
    """

    CSS_PATH = "steerling.tcss"
    TITLE = "steerling-lite"
    BINDINGS = [Binding("f1", "help", "Help", show=False)]

    def __init__(self, model: str | Path | None = None, *, device: str = "auto", quant: str = "auto",
                 status_source: StatusSource | None = None, store_path: str | Path | None = None) -> None:
        super().__init__()
        self.initial_model = str(model) if model is not None else ""
        self.device = device
        self.quant = quant
        self.status_source: StatusSource = status_source or backend.read_status
        self.store_path = store_path
        self.conversation = Conversation()
        self.load_request: LoadRequest | None = None
        self.chat: ChatScreen | None = None
        self.store_problem = ""  # why the sessions database could not be opened

    # ---- services --------------------------------------------------------------------------
    @property
    def store(self) -> Store | None:
        """The sessions database (None when it could not be opened)."""
        return self.conversation.store

    @property
    def lm(self) -> Steerling | None:
        """The loaded model (None before one is loaded)."""
        return self.conversation.lm

    @property
    def catalog(self) -> Catalog:
        """The loaded model's concepts (empty without a model)."""
        return self.conversation.model.catalog if self.conversation.model is not None else Catalog()

    def on_mount(self) -> None:
        try:
            self.conversation.store = Store(self.store_path)
        except (StoreError, OSError) as exc:  # a data dir that is a file, under a read-only parent, ...
            reason = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.store_problem = f"{reason}; sessions will not be saved"
            self.notify(self.store_problem, severity="error", timeout=10)
        self.chat = ChatScreen(self.conversation, self.status_source)
        self.push_screen(self.chat)
        self.open_model(self.initial_model, autoload=bool(self.initial_model))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """With animations off (``TEXTUAL_ANIMATIONS=none``: reduced motion, and the tests) text
        cursors do not blink either."""
        if self.animation_level == "none" and getattr(event.widget, "cursor_blink", False):
            event.widget.cursor_blink = False  # type: ignore[attr-defined]

    def on_unmount(self) -> None:
        if self.store is not None:
            self.store.close()

    # ---- model -------------------------------------------------------------------------
    def open_model(self, path: str = "", autoload: bool = False) -> None:
        recent: list[str] = []
        if self.store is not None:
            try:
                recent = self.store.recent_models()
            except StoreError as exc:
                self.notify(str(exc), severity="warning")
        if not path and self.load_request is not None:
            path = self.load_request.path
        elif not path and recent:
            path = recent[0]
        self.push_screen(LoadScreen(path, autoload=autoload, recent=recent, device=self.device, quant=self.quant),
                         self._model_loaded)

    def action_open_model(self) -> None:
        if isinstance(self.screen, LoadScreen):
            return
        if self.chat is not None and self.conversation.pending is not None:
            self.chat.show_error(RUNNING)
            return
        self.open_model()

    def _model_loaded(self, result: tuple[LoadRequest, Steerling] | None) -> None:
        if not result:
            return
        request, lm = result
        self.load_request = request
        self.device, self.quant = request.device, request.quant
        self.conversation.model = ModelServices.for_model(lm)
        if self.chat is not None:
            self.chat.model_changed()  # also clears the errors of earlier tries
        if self.store_problem:
            self.notify(self.store_problem, severity="error", timeout=10)
        if self.catalog.warning:
            self.notify(self.catalog.warning, severity="warning", timeout=8)
        if self.store is not None:
            try:
                self.store.remember_model(str(Path(request.path).expanduser()))
            except StoreError as exc:
                self.notify(f"could not remember the model: {exc}", severity="warning")

    # ---- help / palette ------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Key bindings and how the panels work (f1)", self.action_help)
        if isinstance(screen, ChatScreen):
            chat = screen
            yield SystemCommand("Open model", "Load another checkpoint (ctrl+o)", self.action_open_model)
            yield SystemCommand("New session", "Start an empty session (ctrl+n)", chat.action_new_session)
            yield SystemCommand("History", "Reopen a saved session (ctrl+r)", chat.action_history)
            yield SystemCommand("Export session", "Markdown or JSON (ctrl+s)", chat.action_export)
            yield SystemCommand("Stop generation", "Keep what is written (esc)", chat.action_stop)
            yield SystemCommand("Compare steered / unsteered",
                                "Regenerate the last answer unsteered, same seed (ctrl+t)", chat.action_compare)
            yield SystemCommand("Select answer tokens", "Focus the last answer's tokens for attribution (ctrl+g)",
                                chat.action_select_tokens)
            yield SystemCommand("Audit selected tokens", "Concepts, input units, training chunks; suppress (a)",
                                chat.action_audit)
            yield SystemCommand("Steering panel", "Search concepts and steer (f3)",
                                lambda: chat.action_tab("tab-steer"))
            yield SystemCommand("Settings panel", "Sampling settings (f2)", lambda: chat.action_tab("tab-settings"))
            yield SystemCommand("Attribution panel", "Concepts behind the selected tokens (f4)",
                                lambda: chat.action_tab("tab-attr"))
            yield SystemCommand("Clear steering", "Remove every steered concept",
                                lambda: chat.query_one("#steering").clear())
            yield SystemCommand("Toggle side panel", "Show / hide settings, steering, attribution (ctrl+b)",
                                chat.action_toggle_panel)
            yield from self.preset_commands()

    # ---- steering presets ------------------------------------------------------------------
    def preset_commands(self) -> Iterable[SystemCommand]:
        """The palette's preset commands: save the panel, and one per saved preset to apply it."""
        yield SystemCommand("Save steering as preset", "Save the steering panel as a named preset (TOML)",
                            self.action_save_preset)
        for path in list_presets():
            yield SystemCommand(f"Steering preset: {path.stem}", f"Apply the saved steering {path.name}",
                                partial(self.apply_preset, path))

    def action_save_preset(self) -> None:
        if self.chat is None:
            return
        def saved(path: Path | None) -> None:
            if path is not None and self.chat is not None:
                self.notify(f"steering saved as preset {path.stem} ({path})", timeout=5)

        self.push_screen(PresetSaveScreen(self.chat.query_one(SteeringPanel).specs), saved)

    def apply_preset(self, path: Path) -> bool:
        """Put the preset at ``path`` into the steering panel (applies to a running generation from
        its next step); False, with the error shown, for a file the panel cannot take."""
        if self.chat is None:
            return False
        panel = self.chat.query_one(SteeringPanel)
        try:
            specs = read_steering_preset(path, self.catalog)
        except USER_ERRORS as exc:
            self.chat.show_error(str(exc))
            return False
        panel.set_specs(specs)
        self.notify(f"steering preset {path.stem} applied", timeout=4)
        return True

    async def action_quit(self) -> None:
        if self.conversation.generation is not None:
            self.conversation.generation.cancel()
        await super().action_quit()
