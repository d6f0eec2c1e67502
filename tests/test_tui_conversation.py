"""The app's conversation controller without the UI, and the app's layering rules: tui imports only
names steerling_lite exports at its top level, and its modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import steerling_lite
from steerling_lite import GenerationConfig, Steerling
from tui.backend import BackendError, Sampling
from tui.concepts import ConceptSpec
from tui.conversation import Conversation
from tui.records import ModelServices
from tui.store import Store, StoreError

TUI = Path(__file__).resolve().parent.parent / "tui"
FORM = {**Sampling(seed=3).to_form(), "steps": "16"}  # 4 tokens per denoising step: fast


@pytest.fixture(scope="module")
def lm(tiny_ckpt) -> Steerling:
    return Steerling.load(tiny_ckpt, device="cpu")


def conversation(lm: Steerling, store: Store | None = None) -> Conversation:
    return Conversation(store, ModelServices.for_model(lm))


def test_generates_what_the_runtime_generates_and_saves_it(lm, tmp_path):
    conv = conversation(lm, Store(tmp_path / "s.sqlite3"))
    pending = conv.start("The history of the city", FORM, "", [])
    assert conv.generation is pending.generation
    progress = []
    done = conv.generate(pending, progress.append)
    answer, saved = conv.finish(pending, done, [])
    want = lm.generate("The history of the city", GenerationConfig(max_new_tokens=64, steps=16, seed=3), chat=False)
    assert answer.turn.output == want.text and answer.turn.token_ids == want.token_ids
    # each output token's absolute position holds that token in the final sequence
    assert [done.result.sequence[p] for p in answer.positions] == answer.turn.token_ids
    assert len(answer.tokens) == len(answer.turn.token_ids) and answer.attribution is not None
    assert progress and None not in progress[-1].block  # the last redraw shows the finished block
    assert saved.ok and conv.pending is None and conv.session.title == "The history of the city"
    assert [t.output for t in conv.store.load_session(conv.session.id).turns] == [want.text]


def test_one_generation_at_a_time_and_a_failed_one_leaves_nothing(lm):
    conv = conversation(lm)
    pending = conv.start("Hello", FORM, "", [])
    with pytest.raises(BackendError, match="a generation is running"):
        conv.start("Again", FORM, "", [])
    with pytest.raises(BackendError, match="a generation is running"):
        conv.new_session([])
    conv.fail(pending)
    assert conv.pending is None and conv.answers == []
    with pytest.raises(BackendError, match="no model loaded"):
        Conversation().start("Hello", FORM, "", [])


def test_live_steering_drops_a_plan_a_newer_change_replaced(lm):
    conv = conversation(lm)
    assert conv.steering_changed([ConceptSpec(3, "known #3")]) is None  # nothing generating: just remembered
    assert conv.session.steering[0]["concept_id"] == 3
    pending = conv.start("Steer me", FORM, "", [])
    first = conv.steering_changed([ConceptSpec(5, "known #5")])
    second = conv.steering_changed([ConceptSpec(7, "known #7")])
    assert not conv.apply_steering(pending, [ConceptSpec(5, "known #5")], first)  # stale: dropped
    assert conv.apply_steering(pending, [ConceptSpec(7, "known #7")], second)
    event = next(iter(pending.generation))
    assert [s.concept_id for s in event.steering.specs] == [7]
    pending.generation.cancel()


def test_an_unwritable_store_keeps_the_answer_and_says_why(lm, tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    conv = conversation(lm, store)
    store.close()  # every write now fails with a sqlite3 error, which the store reports as StoreError
    pending = conv.start("Unsaved", FORM, "", [])
    answer, saved = conv.finish(pending, conv.generate(pending, lambda p: None), [])
    assert not saved.ok and saved.error.startswith("not saved: ") and "s.sqlite3" in saved.error
    assert conv.session.turns == [answer.turn] and conv.answers == [answer]
    with pytest.raises(StoreError, match="cannot list the sessions"):
        conv.history()


def test_compare_needs_a_steered_answer(lm):
    conv = conversation(lm)
    with pytest.raises(BackendError, match="nothing to compare yet"):
        conv.compare_target()
    pending = conv.start("Plain", FORM, "", [])
    conv.finish(pending, conv.generate(pending, lambda p: None), [])
    with pytest.raises(BackendError, match="was not steered"):
        conv.compare_target()


def _tui_modules() -> list[Path]:
    return sorted(TUI.rglob("*.py"))


def test_tui_imports_only_top_level_steerling_lite_names():
    exported = set(steerling_lite.__all__)
    for path in _tui_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.startswith("steerling_lite.")]
                assert not bad, f"{path.name}: imports {bad}; use names steerling_lite exports"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("steerling_lite"):
                assert node.module == "steerling_lite", f"{path.name}: imports from {node.module}"
                missing = [a.name for a in node.names if a.name not in exported]
                assert not missing, f"{path.name}: {missing} not in steerling_lite.__all__"


def test_tui_modules_stay_small():
    sizes = {p.relative_to(TUI).as_posix(): len(p.read_text().splitlines()) for p in _tui_modules()}
    assert {name: n for name, n in sizes.items() if n > 450} == {}
