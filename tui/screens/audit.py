"""The audit of a span: its concepts, input units and nearest training chunks; one key suppresses a concept.

Three short, scrollable lists that fit 80x24: the span's known and discovered concepts
(signed shares of its logits), the prompt units behind it, the training chunks it most
resembles. Each axis is computed in a thread worker (:mod:`tui.audit`) and drawn when it
arrives, with the step running and the index build's progress shown above the lists; the
UI never waits. ``s`` regenerates the answer with the highlighted known concept (at first
the one that pushed the span most) suppressed, same seed and settings, and shows both in
Compare; the audit is saved with the session as each part arrives.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from steerling_lite import DEFAULT_INPUT_METHOD

from ..audit import AuditTarget, compute_axis, keep_audit, merge, regenerate_suppressed
from ..conversation import Conversation
from ..jobs import JobDone, JobRunner
from ..widgets.output import clean
from .compare import CompareScreen

AXES = ("concepts", "inputs", "neighbours")
METHOD_NAMES = {"ig": "integrated gradients", "occlusion": "occlusion"}
PROGRESS_EVERY_S = 0.1  # index-build progress redraws at most ten times a second


def share_row(head: str, label: str, share: float, peak: float, width: int = 10) -> Text:
    """``known +31.0% █████     label``: a concept's signed share with a bar scaled to ``peak``."""
    cells = int(round(abs(share) / (peak or 1.0) * width))
    text = Text(f"{'known' if head == 'known' else 'disc.'} {share * 100:+6.1f}% ")
    text.append(f"{'█' * cells:<{width}}", "green" if share >= 0 else "red")
    text.append(f" {clean(label)}")
    return text


def concept_rows(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Known and discovered concepts together, largest ``|share|`` first (discovered ones carry most
    of the logit on the default model): ``(head, row)``."""
    rows = [("known", r) for r in data.get("known") or []] + [("discovered", r) for r in data.get("discovered") or []]
    return sorted(rows, key=lambda hr: -abs(float(hr[1]["share"])))


def concept_options(data: dict[str, Any]) -> list[Option]:
    """The concept list (:func:`concept_rows`), options with ids ``known:ID`` / ``discovered:ID``."""
    rows = concept_rows(data)
    peak = max((abs(float(r["share"])) for _, r in rows), default=1.0)
    return [Option(share_row(head, str(r["label"]), float(r["share"]), peak), id=f"{head}:{r['concept_id']}")
            for head, r in rows]


def input_options(data: dict[str, Any]) -> list[Option]:
    """The input units, strongest first: ``+0.312  ' city'  at prompt token 4`` (a unit's first token)."""
    out = []
    for r in data.get("inputs") or []:
        text = Text(f"{float(r['score']):+7.3f}  ", "green" if float(r["score"]) >= 0 else "red")
        text.append(repr(clean(str(r["text"]))), "bold")
        text.append(f"  at prompt token {r['index']}", "dim")
        out.append(Option(text, id=f"input:{len(out)}"))
    return out


def neighbour_options(data: dict[str, Any]) -> list[Option]:
    """The training chunks: ``1. 0.912 wordnet.txt:43 text`` and the concepts they share."""
    out = []
    for n in data.get("neighbours") or []:
        text = Text(f"{n['rank']}. {float(n['similarity']):.3f} ")
        text.append(f"{n['source']}:{n['line']} ", "dim")
        text.append(clean(str(n["text"])))
        if n.get("shared"):
            text.append(f"  shared: {', '.join(n['shared'])}", "italic")
        out.append(Option(text, id=f"chunk:{n['rank']}"))
    return out


class AuditScreen(JobRunner, ModalScreen):
    """The audit of tokens ``target.start..target.end`` of an answer (see the module docstring).

    Args:
        conversation: the app's conversation (model, sessions database).
        target: the span (:func:`tui.audit.audit_target`).
    """

    DEFAULT_CSS = """
    AuditScreen { align: center middle; }
    #audit-box { width: 100%; height: 100%; border: round $accent; background: $surface; padding: 0 1; }
    #audit-title { text-style: bold; height: 1; }
    #audit-status { height: 1; color: $text-muted; }
    #audit-progress { height: 1; display: none; }
    .audit-head { text-style: bold; color: $accent; height: 1; }
    AuditScreen OptionList, AuditScreen OptionList:focus { border: none; padding: 0; background: $surface; }
    #audit-concepts { height: auto; max-height: 8; }
    #audit-inputs { height: auto; max-height: 6; }
    #audit-neighbours { height: 1fr; min-height: 3; }
    #audit-hint { height: 1; color: $text-muted; }
    """

    BINDINGS = [
        Binding("escape,q", "close", "Close"),
        Binding("s", "suppress", "Suppress & compare"),
        Binding("g", "inputs('ig')", "Inputs by IG"),
        Binding("o", "inputs('occlusion')", "Inputs by occlusion"),
    ]

    def __init__(self, conversation: Conversation, target: AuditTarget) -> None:
        super().__init__()
        self.conversation = conversation
        self.target = target
        self.data: dict[str, Any] = dict(target.data)
        self.running: set[str] = set()  # axes (and "suppress") being computed
        self.method = self.data.get("input_method") or DEFAULT_INPUT_METHOD  # of the input units
        self._last_progress = 0.0

    def compose(self) -> ComposeResult:
        t = self.target
        where = f"tokens {t.start}..{t.end - 1}" if t.end - t.start > 1 else f"token {t.start}"
        with Vertical(id="audit-box"):
            yield Label(Text(f"Audit of {where}: “{clean(self._span_text())}”", no_wrap=True, overflow="ellipsis"),
                        id="audit-title")
            yield Static("", id="audit-status")
            yield ProgressBar(id="audit-progress", show_eta=False)
            yield Label("Concepts (s: suppress the highlighted known concept)", classes="audit-head",
                        id="audit-concepts-head")
            yield OptionList(id="audit-concepts")
            yield Label("Input units", classes="audit-head", id="audit-inputs-head")
            yield OptionList(id="audit-inputs")
            yield Label("Nearest training chunks", classes="audit-head", id="audit-neighbours-head")
            yield OptionList(id="audit-neighbours")
            yield Static(Text("tab: next list · s: suppress, compare · g/o: inputs by IG / occlusion · esc",
                              no_wrap=True, overflow="ellipsis"), id="audit-hint")

    def _span_text(self) -> str:
        t = self.target
        return self.data.get("text") or "".join(t.answer.tokens[t.start:t.end])

    def on_mount(self) -> None:
        self.query_one("#audit-concepts", OptionList).focus()
        self.redraw()
        if self.target.reason:
            self.status("saved audit" if self.data else f"Cannot audit: {self.target.reason}.")
            return
        missing = [a for a in AXES if not self._has(a)]
        if missing:
            self.compute(missing, self.method)
        else:
            self.status("saved audit")

    def _has(self, axis: str) -> bool:
        key = {"concepts": "known", "inputs": "inputs", "neighbours": "neighbours"}[axis]
        return key in self.data or axis in (self.data.get("notes") or {})

    # ---- computing ---------------------------------------------------------------------------
    def status(self, text: str) -> None:
        self.query_one("#audit-status", Static).update(Text(text, no_wrap=True, overflow="ellipsis"))

    def compute(self, axes: list[str], method: str) -> None:
        """Compute ``axes`` one after another in a worker; each is drawn (and saved) as it arrives."""
        lm = self.conversation.lm
        if lm is None:
            self.status("no model loaded: press ctrl+o to open one")
            return
        self.running.update(axes)
        self.method = method
        self.redraw()
        target = self.target

        def body() -> None:
            for axis in axes:
                self.post_message(JobDone(self._step, axis))
                try:
                    part = compute_axis(axis, lm, target, method, self._index_progress)
                except Exception as exc:  # a bug: say so in the axis, never a traceback
                    part = {"notes": {axis: f"failed: {type(exc).__name__}: {exc}"}}
                self.post_message(JobDone(partial(self._arrived, axis), part))

        self.run_worker(body, group="audit", thread=True, exit_on_error=False)

    def _step(self, axis: str) -> None:
        what = {"concepts": "concepts", "neighbours": "nearest training chunks (the index is built on first use)",
                "inputs": f"input units ({METHOD_NAMES[self.method]})"}
        self.status(f"computing {what[axis]}…")

    def _index_progress(self, done: int, total: int) -> None:
        """Worker thread: the index build's progress (bytes of corpus), at most every 0.1 s."""
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S or done >= total:
            self._last_progress = now
            self.post_message(JobDone(self._show_progress, (done, total)))

    def _show_progress(self, value: tuple[int, int]) -> None:
        bar = self.query_one("#audit-progress", ProgressBar)
        bar.display = value[0] < value[1]
        bar.update(total=value[1], progress=value[0])
        if "suppress" not in self.running:  # its own line stays until it is done
            self.status("building the training-data index (first use only)…")

    def _arrived(self, axis: str, part: dict[str, Any]) -> None:
        self.running.discard(axis)
        self.query_one("#audit-progress", ProgressBar).display = False
        self.data = merge(self.data, axis, part)
        self.redraw()
        if not self.running:
            self.status("done" if not self.data.get("notes") else "done; " + "; ".join(
                f"{k}: {v}" for k, v in self.data["notes"].items()))
        self._save()

    def _save(self) -> None:
        saved = keep_audit(self.conversation, self.target, self.data)
        if saved.error:
            self.notify(saved.error, severity="error", timeout=6)

    def action_inputs(self, method: str) -> None:
        if self.target.reason:
            self.status(f"Cannot compute: {self.target.reason}.")
        elif "inputs" not in self.running:
            self.compute(["inputs"], method)

    # ---- drawing ----------------------------------------------------------------------------
    def redraw(self) -> None:
        notes = self.data.get("notes") or {}
        method = self.method if "inputs" in self.running else self.data.get("input_method")
        self.query_one("#audit-inputs-head", Label).update(
            "Input units" + (f" ({METHOD_NAMES.get(method, method)})" if method else ""))
        for axis, options in (("concepts", concept_options), ("inputs", input_options),
                              ("neighbours", neighbour_options)):
            widget = self.query_one(f"#audit-{axis}", OptionList)
            rows = options(self.data)
            had_rows = widget.option_count > 0 and widget.get_option_at_index(0).id is not None
            keep = widget.highlighted if had_rows else None
            if not rows:
                note = ("computing…" if axis in self.running else notes.get(axis)
                        or ("none" if self._has(axis) else "not computed"))
                widget.set_options([Option(Text(note, style="dim"), disabled=True)])
                continue
            widget.set_options(rows)
            default = self._top_known_row() if axis == "concepts" else None
            widget.highlighted = min(keep, len(rows) - 1) if keep is not None else (default or 0)

    def _top_known_row(self) -> int | None:
        """The row of the known concept that pushed the span most (the suppress key's default)."""
        return next((i for i, (head, r) in enumerate(concept_rows(self.data))
                     if head == "known" and float(r["share"]) > 0), None)

    # ---- suppress ---------------------------------------------------------------------------
    def action_suppress(self) -> None:
        """Regenerate with the highlighted known concept suppressed (same seed), then Compare."""
        concepts = self.query_one("#audit-concepts", OptionList)
        index = concepts.highlighted if concepts.highlighted is not None else self._top_known_row()
        option = concepts.get_option_at_index(index) if index is not None and concepts.option_count else None
        if option is None or not option.id:
            self.status("no concept to suppress yet")
            return
        head, cid = option.id.split(":")
        if head != "known":
            self.status("only known concepts can be steered: highlight a known one (↑/↓) and press s")
            return
        row = next(r for r in self.data["known"] if int(r["concept_id"]) == int(cid))
        sup = self.data.get("suppressed")
        if sup and int(sup["concept_id"]) == int(cid):
            self._compare(sup)
            return
        model = self.conversation.model
        if model is None or self.target.reason:
            self.status(f"Cannot regenerate: {self.target.reason or 'no model loaded'}.")
            return
        if "suppress" in self.running:
            return
        self.running.add("suppress")
        self.status(f"regenerating with {row['label']} suppressed (seed {self.target.turn.seed})…")
        self.run_job(lambda: regenerate_suppressed(model, self.target.turn, int(cid), str(row["label"])),
                     self._suppressed, self._suppress_failed, what="regeneration", group="audit-suppress")

    def _suppressed(self, sup: dict[str, Any]) -> None:
        self.running.discard("suppress")
        self.data = {**self.data, "suppressed": sup}
        self.status(f"{sup['label']} suppressed: compared with the answer as generated")
        self._save()
        self._compare(sup)

    def _suppress_failed(self, message: str) -> None:
        self.running.discard("suppress")
        self.status(message)

    def _compare(self, sup: dict[str, Any]) -> None:
        t = self.target.turn
        self.app.push_screen(CompareScreen(t.prompt, sup["text"], t.output, f"{sup['label']} suppressed", t.seed,
                                           titles=(f"{sup['label']} suppressed", "as generated")))

    def action_close(self) -> None:
        self.dismiss(None)
