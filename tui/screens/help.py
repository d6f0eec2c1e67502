"""The help screen: what the app does and every key binding."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("enter", "send the prompt (shift+enter or ctrl+j: new line)"),
    ("esc", "stop the generation, keeping what is written"),
    ("ctrl+n", "new session"),
    ("ctrl+r", "history: reopen a saved session (delete there removes one, after a yes)"),
    ("ctrl+s", "export the session to Markdown or JSON (answers are saved as they finish)"),
    ("ctrl+t", "compare: regenerate the last answer unsteered, same seed, side by side"),
    ("ctrl+o", "open (load) another model"),
    ("ctrl+g", "select tokens of the last answer"),
    ("ctrl+f", "find a concept to steer"),
    ("f2 f3 f4", "side panel: settings, steering, attribution (explain)"),
    ("ctrl+b", "show / hide the side panel"),
    ("ctrl+p", "command palette"),
    ("f1", "this help"),
    ("ctrl+q", "quit"),
]

SECTIONS = [
    ("Answer tokens",
     "Tab to an answer (or ctrl+g). left/right moves, shift+left/right extends the selection, home/end "
     "jump, enter attributes the selection to concepts, i also finds the input tokens behind it "
     "(occlusion: one extra pass per prompt token and selected token; I: integrated gradients, 32 "
     "passes per selected token)."),
    ("Steering (f3)",
     "Type a concept name, words of its description, or #id; enter adds the best match (or pick from "
     "the list). On a concept: left/right changes its strength by 1 (shift: by 5) from -10 (suppress) to "
     "+10 (amplify), space turns it on/off, delete removes it. Changes apply from the next denoising step "
     "of a running generation."),
    ("Settings (f2)",
     "Each field is checked as you type (a field in red says what is wrong under the form). "
     "max tokens: a multiple of the model's diffusion block; steps: blank = one per token; temperature: "
     "blank = adaptive, 0 = greedy; seed: blank = random (the seed used is shown under each answer)."),
    ("Sessions",
     "Saved in a SQLite database in the data folder ($STEERLING_LITE_HOME overrides it)."),
    ("Audit (a on answer tokens)",
     "The selected span along three axes: its known and discovered concepts, the prompt units behind it "
     "(g: integrated gradients, o: occlusion) and the training chunks it most resembles (the default model "
     "builds its index on first use). s regenerates the answer with the highlighted known concept "
     "suppressed, same seed, and shows both in Compare. The audit is saved with the session and exported."),
]


def help_text() -> Text:
    """The help as one text: keys in a column, then a paragraph per panel."""
    text = Text()
    text.append("steerling-lite", "bold")
    text.append(": generate with a Steerling model, steer it by concepts while it writes, and see which "
                "concepts (and which prompt tokens) produced each token.  esc closes this help.\n\n")
    width = max(len(k) for k, _ in KEYS) + 2
    for key, does in KEYS:
        text.append(f"{key:<{width}}", "bold")
        text.append(does + "\n")
    for title, body in SECTIONS:
        text.append(f"\n{title}\n", "bold")
        text.append(body + "\n")
    return text


class HelpScreen(ModalScreen):
    """Key bindings and how the panels work; esc / f1 / q closes it."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(help_text(), id="help-text")

    def action_dismiss(self, result=None) -> None:  # type: ignore[override]
        self.dismiss(result)
