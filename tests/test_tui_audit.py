"""The audit loop in the app: a span's concepts, input units and nearest training chunks, one key
to suppress a concept and compare, the audit saved with the session and exported; its screen at
80x24 (SVG snapshot); sessions saved before audits existed still open."""

from __future__ import annotations

import json
import lzma
import sqlite3
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList

from steerling_lite import Steerling, SteeringBuilder, default_model_dir, span_inputs
from steerling_lite.generation.steering_builder import Steering
from steerling_lite.interpret import index_build
from steerling_lite.interpret.index_build import default_corpus_path
from tui.app import SteerlingApp
from tui.audit import SUPPRESS_STRENGTH, merge
from tui.backend import Sampling
from tui.concepts import attribute_span
from tui.export import session_to_dict, session_to_markdown
from tui.screens import AuditScreen, ChatScreen, CompareScreen, ExportScreen
from tui.store import MIGRATIONS, SCHEMA_VERSION, Attribution, Audit, Session, Store, Turn

from .test_tui import async_test, fixed_status, home, loaded, send, set_form, wait_for  # noqa: F401 (home: a fixture)
from .test_tui_snapshots import ATTRIBUTION, OUTPUT, PROMPT, reopened, saved_session

SIZE = (80, 24)


@pytest.fixture
def small_corpus(tmp_path, monkeypatch) -> Path:
    """The default model's corpus cut to its first 60 entries, so its index builds in seconds."""
    small = tmp_path / "training-corpus.txt.xz"
    with lzma.open(default_corpus_path(), "rt", encoding="utf-8") as f:
        small.write_bytes(lzma.compress("".join(next(f) for _ in range(60)).encode()))
    monkeypatch.setattr(index_build, "default_corpus_path", lambda: small)
    return small


def audited(screen: AuditScreen) -> bool:
    return not screen.running and all(screen._has(axis) for axis in ("concepts", "inputs", "neighbours"))


# ---------------------------------------------------------------------------------------
# the loop, on the default model


@async_test
async def test_audit_loop_on_the_default_model(home, small_corpus, tmp_path):
    app = SteerlingApp(default_model_dir(), status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot, steps=None)
        set_form(chat, seed=3, max_new_tokens=16)
        await send(pilot, chat, "A small dog")
        state = chat.states[0]
        turn = state.turn
        # select tokens 1..3 and audit them
        await pilot.press("ctrl+g", "home", "right", "shift+right", "shift+right", "a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen), what="audit screen")
        screen = app.screen
        assert (screen.target.start, screen.target.end) == (1, 4)
        await wait_for(pilot, lambda: audited(screen), timeout=180, what="the three axes")
        data = screen.data
        assert "notes" not in data, data.get("notes")
        # concepts: the attribution panel's numbers for the span
        assert {k: data[k] for k in ("known", "discovered", "epsilon")} == {
            k: v for k, v in attribute_span(state.attribution, state.positions, 1, 4).items()
            if k in ("known", "discovered", "epsilon")}
        # inputs: the runtime's input attribution of the same span, strongest first
        p0 = len(turn.prompt_ids)
        direct = span_inputs(app.lm, state.attribution, state.positions[1] - p0, state.positions[3] - p0 + 1)
        assert [(r["index"], r["score"]) for r in data["inputs"]] == [(u.position, u.score) for u in direct[:16]]
        assert data["input_method"] == "occlusion" and all(0 <= r["index"] < p0 for r in data["inputs"])
        # training chunks: five, nearest first, from the default model's corpus
        sims = [n["similarity"] for n in data["neighbours"]]
        assert [n["rank"] for n in data["neighbours"]] == [1, 2, 3, 4, 5] and sims == sorted(sims, reverse=True)
        assert all(n["source"] == small_corpus.name for n in data["neighbours"])
        lists = {axis: screen.query_one(f"#audit-{axis}", OptionList) for axis in ("concepts", "inputs", "neighbours")}
        assert lists["concepts"].option_count == len(data["known"]) + len(data["discovered"])
        assert lists["neighbours"].option_count == 5 and lists["inputs"].option_count == len(data["inputs"])
        # saved as it arrived
        assert turn.audits and turn.audits[0].id is not None and turn.audits[0].data == data

        # s: the top known concept suppressed, same seed, shown in Compare
        top = next(r for r in data["known"] if r["share"] > 0)
        highlighted = lists["concepts"].get_option_at_index(lists["concepts"].highlighted)
        assert highlighted.id == f"known:{top['concept_id']}"
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=120, what="compare")
        compare = app.screen
        sup = screen.data["suppressed"]
        assert (sup["concept_id"], sup["seed"]) == (top["concept_id"], turn.seed)
        # the panel's scale (relative units, no cut-off), as a slider at SUPPRESS_STRENGTH would steer
        plan = SteeringBuilder(app.lm).build([Steering(top["concept_id"], "suppress", -SUPPRESS_STRENGTH,
                                                       schedule="fixed", units="relative")])
        config = Sampling.from_dict({**turn.settings, "seed": turn.seed}).to_config()
        assert sup["text"] == app.lm.generate(turn.prompt_ids, config, plan).text
        assert (compare.steered, compare.unsteered) == (sup["text"], turn.output)
        assert compare.titles == (f"{top['label']} suppressed", "as generated")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back to the audit")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="back to the chat")

        # saved with the session
        store = Store(app.store.path)
        (saved,) = store.load_session(chat.session.id).turns[0].audits
        store.close()
        assert (saved.start, saved.end) == (1, 4) and saved.data == screen.data

        # exported: JSON through the export dialog
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen), what="export dialog")
        await pilot.click("#fmt-json")
        json_path = Path(app.screen.query_one("#export-path", Input).value)
        await pilot.click("#export-go")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="exported")
        (exported,) = json.loads(json_path.read_text())["turns"][0]["audits"]
        assert exported == {"start": 1, "end": 4, **screen.data}

        # reopened, the span's audit is shown as saved: nothing is computed again
        await chat.open_session(chat.session.id)
        await wait_for(pilot, lambda: chat.states and chat.states[0].view.output.tokens, what="session shown")
        chat.states[0].view.output.focus()
        chat.states[0].view.output.select(1, 4)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen), what="saved audit")
        assert app.screen.data == screen.data and not app.screen.running


@async_test
async def test_audit_of_a_model_without_an_index_says_so(tiny_ckpt, home):
    """A model other than the default one has no built-in index: the chunks list says what to
    do, and the other two axes are still there."""
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        set_form(chat, seed=1)
        await send(pilot, chat, "The history of the city")
        await pilot.press("ctrl+g", "home", "shift+right", "a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen), what="audit screen")
        screen = app.screen
        await wait_for(pilot, lambda: audited(screen), timeout=120, what="the three axes")
        assert screen.data["known"] and screen.data["inputs"] and "neighbours" not in screen.data
        assert screen.data["input_method"] == "occlusion"
        assert "no training-data index for this model" in screen.data["notes"]["neighbours"]
        lists = screen.query_one("#audit-neighbours", OptionList)
        assert "no training-data index" in str(lists.get_option_at_index(0).prompt)
        # a discovered concept cannot be steered: said in the status line, nothing regenerated
        concepts = screen.query_one("#audit-concepts", OptionList)
        concepts.highlighted = next(i for i in range(concepts.option_count)
                                    if concepts.get_option_at_index(i).id.startswith("discovered:"))
        await pilot.press("s")
        assert "only known concepts can be steered" in str(screen.query_one("#audit-status").content)
        assert "suppressed" not in screen.data and isinstance(app.screen, AuditScreen)
        # g: the input units again, by integrated gradients (per prompt token)
        await pilot.press("g")
        await wait_for(pilot, lambda: not screen.running and screen.data["input_method"] == "ig", timeout=120,
                       what="inputs by integrated gradients")
        assert len(screen.data["inputs"]) == min(16, len(screen.target.turn.prompt_ids))
        assert "integrated gradients" in str(screen.query_one("#audit-inputs-head").content)


# ---------------------------------------------------------------------------------------
# sessions saved before audits existed; merging axes


def test_a_version_1_database_opens_and_keeps_its_sessions(tmp_path):
    path = tmp_path / "sessions.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    for stmt in MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    conn.execute("INSERT INTO sessions (title, model, created_at, updated_at) VALUES ('old', 'm', 1, 1)")
    conn.execute("INSERT INTO turns (session_id, position, prompt, output, created_at) VALUES (1, 0, 'p', 'o', 1)")
    conn.execute("INSERT INTO attributions (turn_id, start, end, data, created_at) VALUES (1, 0, 1, '{}', 1)")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION == 3
    (turn,) = store.load_session(1).turns
    assert (turn.prompt, turn.output, len(turn.attributions), turn.audits) == ("p", "o", 1, [])
    store.add_audit(turn, Audit(0, 1, {"known": [], "suppressed": {"text": "x"}}))
    store.close()
    store = Store(path)
    (audit,) = store.load_session(1).turns[0].audits
    assert (audit.start, audit.end, audit.data["suppressed"]) == (0, 1, {"text": "x"})
    audit.data["inputs"] = [{"index": 0, "text": "p", "score": 1.0}]
    store.update_audit(audit)
    assert store.load_session(1).turns[0].audits[0].data["inputs"][0]["score"] == 1.0
    store.close()


def test_merge_replaces_an_axis_and_its_note():
    data = merge({}, "neighbours", {"notes": {"neighbours": "no index"}})
    data = merge(data, "inputs", {"input_method": "ig", "inputs": [1]})
    assert data == {"notes": {"neighbours": "no index"}, "input_method": "ig", "inputs": [1]}
    data = merge(data, "neighbours", {"neighbours": [2]})
    assert data == {"input_method": "ig", "inputs": [1], "neighbours": [2]}
    assert merge(data, "inputs", {"notes": {"inputs": "failed"}})["notes"] == {"inputs": "failed"}


# ---------------------------------------------------------------------------------------
# the screen at 80x24

AUDIT = {
    **ATTRIBUTION,
    "input_method": "ig",
    "inputs": [{"index": 4, "text": " city", "score": 0.41}, {"index": 1, "text": " history", "score": 0.22},
               {"index": 0, "text": "The", "score": -0.08}, {"index": 3, "text": " the", "score": 0.03}],
    "neighbours": [
        {"rank": 1, "similarity": 0.912, "text": "fishing village: a small village where fishermen live",
         "source": "training-corpus.txt.xz", "line": 4021, "shared": ["known #12", "known #5"]},
        {"rank": 2, "similarity": 0.874, "text": "delta: a low triangular area where a river divides",
         "source": "training-corpus.txt.xz", "line": 1733, "shared": ["known #12"]},
        {"rank": 3, "similarity": 0.851, "text": "port: a place where ships can take on or discharge cargo",
         "source": "training-corpus.txt.xz", "line": 88, "shared": []},
    ],
    "suppressed": {"concept_id": 12, "label": "known #12", "strength": -7.0, "seed": 7,
                   "text": " was built on a hill above the plain."},
}


def test_snapshot_audit_screen(snap_compare, home, tiny_ckpt):
    """The audit of one span at 80x24: its concepts, input units and nearest training chunks."""
    session_id = saved_session(str(tiny_ckpt))
    store = Store()
    turn = store.load_session(session_id).turns[0]
    store.add_audit(turn, Audit(4, 6, AUDIT))
    store.close()
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")

    async def audit(pilot, chat) -> None:
        chat.states[0].view.output.select(4, 6)
        chat.audit(chat.states[0], 4, 6)
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, AuditScreen), what="audit screen")

    assert snap_compare(app, terminal_size=SIZE, run_before=reopened(tiny_ckpt, audit))


def test_export_markdown_has_the_audit():
    turn = Turn(PROMPT, OUTPUT, seed=7, attributions=[Attribution(4, 6, ATTRIBUTION)], audits=[Audit(4, 6, AUDIT)])
    session = Session(title=PROMPT, model="m", turns=[turn])
    md = session_to_markdown(session)
    assert "**Audit of tokens 4..5** (` fishing village`)" in md
    assert "- input tokens (ig): ` city` +0.41" in md
    assert '- training chunk 1: 0.912 `training-corpus.txt.xz:4021` "fishing village: a small village where ' \
           'fishermen live" (shared: known #12, known #5)' in md
    assert "**Regenerated with known #12 suppressed (seed 7)**" in md and "built on a hill" in md
    assert session_to_dict(session)["turns"][0]["audits"] == [{"start": 4, "end": 6, **AUDIT}]
