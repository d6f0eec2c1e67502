"""Issue 12: steering that means what it says. A setting applies for as long as it is on, every
answer records which steering produced which steps and tokens (footer, saved session, Markdown
and JSON exports), strengths in units relative to the model, and steering presets (TOML) for the
app, the API and ``--steering FILE``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from steerling_lite import (
    ConceptError, RELATIVE_UNIT, Steering, SteeringBuilder, SteeringPreset,
    Steerling, default_model_dir, load_preset, residual_norm, save_preset,
)
from steerling_lite.cli import main
from tests.test_tui import SIZE, async_test, fixed_status, loaded, send, set_form, wait_for
from tui.app import SteerlingApp
from tui.backend import BackendError, Sampling
from tui.concepts import DEFAULT_STRENGTH, ConceptSpec, read_steering_preset, save_steering_preset
from tui.conversation import Conversation
from tui.export import session_to_dict, session_to_markdown
from tui.records import ModelServices
from tui.screens.preset import PresetSaveScreen
from tui.store import Store
from tui.widgets import ConceptRow, SteeringPanel

PROMPT = "The history of the city"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("STEERLING_LITE_HOME", str(h))
    return h


@pytest.fixture(scope="module")
def tiny(make_ckpt) -> Steerling:
    return Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="fp32")


# ---------------------------------------------------------------------------------------
# the app: switching a concept off mid-answer (default model)


@async_test
async def test_switching_a_concept_off_mid_answer_changes_the_rest_and_the_record_says_so(home):
    """noun.animal at the default strength, 256 tokens (64 steps, 4 tokens a step), switched off
    once 64 tokens are committed: the worker waits in the step hook until the panel's change was
    handed to the generation, so the switch falls exactly between steps 15 and 16."""
    reached, resume = threading.Event(), threading.Event()

    def hook(event, committed: int) -> None:
        if committed >= 64 and not reached.is_set():
            reached.set()
            resume.wait(60)

    app = SteerlingApp(default_model_dir(), status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot, steps=None)
        set_form(chat, seed=42, max_new_tokens=256, steps=64)
        animal = next(c for c in app.catalog.cat.concepts("known") if c.label == "noun.animal")
        chat.query_one(SteeringPanel).add_concept(animal)
        row = chat.query_one(ConceptRow)
        assert row.strength == DEFAULT_STRENGTH
        app.conversation.step_hook = hook
        await send(pilot, chat, PROMPT, wait=False)
        await wait_for(pilot, reached.is_set, what="64 tokens committed")
        row.enabled = False
        await wait_for(pilot, lambda: chat.live_steering_updates == 1, what="steering handed to the generation")
        resume.set()
        await wait_for(pilot, lambda: chat.generation is None and chat.states, what="generation done")
        turn = chat.states[0].turn
        meta = str(chat.states[0].view.query_one(".turn-meta").content)
        session = app.conversation.session

    spec = ConceptSpec(animal.concept_id, "noun.animal", DEFAULT_STRENGTH).to_dict()
    assert turn.steering_segments == [
        {"from_step": 0, "to_step": 15, "tokens": 64, "steering": [spec]},
        {"from_step": 16, "to_step": 63, "tokens": 192, "steering": []},
    ]
    assert turn.token_segments == [0] * 64 + [1] * 192
    assert turn.steering == [] and turn.settings["steering_changed_while_generating"]
    # the same seed fully steered, and unsteered, straight on the runtime
    lm = Steerling.load(default_model_dir(), device="cpu")
    config = Sampling.from_dict({**turn.settings, "seed": 42}).to_config()
    plan = ModelServices.for_model(lm).steerer.plan([ConceptSpec(animal.concept_id, "noun.animal", DEFAULT_STRENGTH)])
    steered = lm.generate(turn.prompt_ids, config, plan).token_ids
    plain = lm.generate(turn.prompt_ids, config).token_ids
    assert len(turn.token_ids) == 256 and steered[:64] != plain[:64]  # the strength changes the text
    assert turn.token_ids[:64] == steered[:64]  # steps 0-15: steered
    assert turn.token_ids[64:] != steered[64:]  # after the switch: not what the steered run writes
    # the footer, the saved session and both exports say which steps were steered
    said = f"steps 0-15 (64 tokens): noun.animal {DEFAULT_STRENGTH:+g}; steps 16-63 (192 tokens): none"
    assert f"steering changed while generating: {said}" in meta
    assert f"steering by step: {said}" in session_to_markdown(session)
    exported = session_to_dict(session)["turns"][0]
    assert exported["steering_segments"] == turn.steering_segments and exported["token_segments"] == turn.token_segments
    saved = Store().load_session(session.id).turns[0]
    assert (saved.steering_segments, saved.token_segments) == (turn.steering_segments, turn.token_segments)


# ---------------------------------------------------------------------------------------
# the per-step record, the schedules, the units


def test_the_record_names_the_steering_of_every_step(tiny):
    """A concept switched on after step 2 and its strength changed after step 5 (from the step
    hook, on the worker thread, between steps): three segments, and each answer token points at
    the segment of the step that committed it."""
    conv = Conversation(None, ModelServices.for_model(tiny))
    form = {**Sampling(seed=3).to_form(), "steps": "16"}
    pending = conv.start(PROMPT, form, "", [])
    changes = {2: [ConceptSpec(3, "known #3", 4.0)], 5: [ConceptSpec(3, "known #3", -2.0)]}

    def hook(event, committed):
        if event.step in changes:
            specs = changes[event.step]
            assert conv.apply_steering(pending, specs, conv.steering_changed(specs))

    conv.step_hook = hook
    done = conv.generate(pending, lambda p: None)
    answer, _ = conv.finish(pending, done, changes[5])
    segs = answer.turn.steering_segments
    assert [(s["from_step"], s["to_step"]) for s in segs] == [(0, 2), (3, 5), (6, 15)]
    assert [[d["strength"] for d in s["steering"]] for s in segs] == [[], [4.0], [-2.0]]
    P = len(done.result.prompt_ids)
    steps = [done.result.commit_step[p - P] for p in done.positions]
    assert answer.turn.token_segments == [0 if s <= 2 else 1 if s <= 5 else 2 for s in steps]
    assert [s["tokens"] for s in segs] == [answer.turn.token_segments.count(i) for i in range(3)]
    assert answer.turn.steering == segs[-1]["steering"]


def test_app_steering_has_no_cut_off_and_hard_cutoff_stays_by_name(tiny):
    b = SteeringBuilder(tiny)
    app_plan = b.build([ConceptSpec(3, "x", 4.0).to_steering()])
    assert [t.schedule for t in app_plan.terms] == ["fixed"]
    assert app_plan.vector(10_000, 16, torch.float32) is not None
    assert len(app_plan.in_effect(10_000)) == 1
    ref = b.build([Steering(3, "amplify", 8.0)])  # the reference's amplify preset: cut off after 32 tokens
    assert [t.schedule for t in ref.terms] == ["hard_cutoff"] and ref.in_effect(31) and not ref.in_effect(32)
    named = b.build([Steering(3, "amplify", 8.0, schedule="hard_cutoff", cutoff_tokens=5)])
    assert named.in_effect(4) and not named.in_effect(5)
    with pytest.raises(ConceptError, match="only amplify has a hard cut-off"):
        b.build([Steering(3, "suppress", 2.0, schedule="hard_cutoff")])
    with pytest.raises(ConceptError, match="schedule 'sometimes'"):
        b.build([Steering(3, schedule="sometimes")])  # type: ignore[arg-type]


def test_relative_units_scale_with_the_models_residual_stream(make_ckpt):
    """Relative strength s injects s · RELATIVE_UNIT · ‖h‖ / n_inject: the same number is the same
    fraction of each model's residual stream, whatever its logit scale."""
    for std in (0.02, 0.5):
        lm = Steerling.load(make_ckpt(diff_block_size=16, embedding_std=std), device="cpu", dtype="fp32")
        b = SteeringBuilder(lm)
        n = lm.config.n_layers
        plan = b.build([Steering(3, "amplify", 3.0, units="relative")], inject_layer=1)
        norm = residual_norm(lm)
        assert norm > 0 and plan.terms[0].alpha == pytest.approx(3.0 * RELATIVE_UNIT * norm / n)
        sup = b.build([Steering(3, "suppress", 2.0, units="relative")], inject_layer=2)
        assert sup.terms[0].alpha == pytest.approx(-2.0 * RELATIVE_UNIT * norm / (n - 1))
        assert sup.logit_offset is not None and plan.specs[0].to_dict()["units"] == "relative"


# ---------------------------------------------------------------------------------------
# presets


def test_preset_round_trip(tmp_path, home):
    preset = SteeringPreset("animals", (
        Steering(3, "amplify", 2.5, units="relative", schedule="fixed"),
        Steering(5, "suppress", 4.0, group=(6, 7), relu_strength=9.0, enabled=False),
        Steering(8, "amplify", 8.0, cutoff_tokens=12),
        Steering(9, "intervene", 0.7),
    ), {3: "noun.animal", 5: "noun.food"}, inject_layer=1)
    path = save_preset(preset, tmp_path / "p.toml")
    assert load_preset(path) == preset
    assert not list(tmp_path.glob(".*tmp"))  # written atomically
    specs = [ConceptSpec(3, "noun.animal", 3.0), ConceptSpec(5, "known #5", -2.0, enabled=False)]
    written = save_steering_preset("my animals", specs)
    assert written == home / "steering-presets" / "my animals.toml"
    assert read_steering_preset(written) == specs
    with pytest.raises(BackendError, match="preset name"):
        save_steering_preset("../evil", specs)
    with pytest.raises(BackendError, match=r"concept\[1\] \(#5\).*--steering FILE"):
        read_steering_preset(path)  # the reference units / cut-off entries are for the CLI


@pytest.mark.parametrize("text,message", [
    ("not toml [", "not valid TOML"),
    ('name = "x"\n', r"no \[\[concept\]\] tables"),
    ('colour = "red"\n[[concept]]\nid = 1\nstrength = 1\n', "unknown key 'colour'"),
    ('format = "other/9"\n[[concept]]\nid = 1\nstrength = 1\n', "format is 'other/9'"),
    ("[[concept]]\nstrength = 1\n", r"concept\[0\]\.id: missing"),
    ("[[concept]]\nid = 1\n", r"concept\[0\]\.strength: missing"),
    ('[[concept]]\nid = 1\nstrength = "big"\n', r"concept\[0\]\.strength is 'big'; expected a finite number"),
    ("[[concept]]\nid = 1\nstrength = nan\n", r"concept\[0\]\.strength is nan"),
    ("[[concept]]\nid = -1\nstrength = 1\n", r"concept\[0\]\.id is -1"),
    ('[[concept]]\nid = 1\nstrength = 1\nmode = "boost"\n', r"concept\[0\]\.mode is 'boost'"),
    ('[[concept]]\nid = 1\nstrength = 1\nunits = "mm"\n', r"concept\[0\]\.units is 'mm'"),
    ('[[concept]]\nid = 1\nstrength = 1\nmode = "suppress"\nschedule = "hard_cutoff"\n', "only amplify"),
    ("[[concept]]\nid = 1\nstrength = 1\nenabled = 1\n", r"concept\[0\]\.enabled is 1"),
    ("[[concept]]\nid = 1\nstrength = 1\nspeed = 1\n", r"concept\[0\]\.speed: unknown key"),
    ("inject_layer = -2\n[[concept]]\nid = 1\nstrength = 1\n", "inject_layer is -2"),
])
def test_bad_preset_files_are_one_line_errors_naming_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConceptError, match=message) as exc:
        load_preset(path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_unreadable_preset_files(tmp_path):
    with pytest.raises(ConceptError, match="No such file"):
        load_preset(tmp_path / "missing.toml")
    with pytest.raises(ConceptError, match="is a directory"):
        load_preset(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConceptError, match="not UTF-8"):
        load_preset(tmp_path / "latin1.toml")


def _cli(ckpt, capsys, *flags) -> dict:
    assert main(["generate", "--model", str(ckpt), "--prompt", PROMPT, "-n", "48", "--steps", "24", "--seed", "4",
                 "--dtype", "fp32", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_steering_file_gives_the_tokens_of_the_equivalent_flags(make_ckpt, tmp_path, capsys):
    """48 tokens: past the amplify preset's 32-token cut-off, which the file keeps by default
    (reference units) as the flags do."""
    ckpt = make_ckpt(diff_block_size=16)
    ref = tmp_path / "ref.toml"
    ref.write_text('inject_layer = 1\n[[concept]]\nid = 3\nstrength = 20\nunits = "reference"\n'
                   '[[concept]]\nid = 5\nmode = "suppress"\nstrength = 4\nunits = "reference"\n')
    flags = _cli(ckpt, capsys, "--amplify", "3=20", "--suppress", "5=4", "--inject-layer", "1")
    from_file = _cli(ckpt, capsys, "--steering", str(ref))
    assert from_file["token_ids"] == flags["token_ids"] and from_file["steering"] == flags["steering"]
    assert from_file["token_ids"] != _cli(ckpt, capsys)["token_ids"]
    # the app's presets: relative units, fixed schedule = --units relative --schedule fixed
    rel = save_steering_preset("rel", [ConceptSpec(3, "known #3", 4.0), ConceptSpec(5, "known #5", -2.0)],
                               tmp_path)
    flags = _cli(ckpt, capsys, "--amplify", "3=4", "--suppress", "5=2", "--units", "relative", "--schedule", "fixed")
    from_file = _cli(ckpt, capsys, "--steering", str(rel))
    assert from_file["token_ids"] == flags["token_ids"]
    assert [t["schedule"] for t in from_file["steering"]["terms"]] == ["fixed", "fixed"]
    # a bad file: one line naming the file and the field, exit 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[[concept]]\nid = 3\nstrength = true\n")
    assert main(["steer", "--model", str(ckpt), "--prompt", PROMPT, "-n", "16", "--steering", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: concept[0].strength is True; expected a finite number"


# ---------------------------------------------------------------------------------------
# presets in the app: the palette's commands


@async_test
async def test_palette_saves_and_applies_presets(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        panel = chat.query_one(SteeringPanel)
        panel.add_concept(app.catalog.get(5), strength=-4)
        panel.add_concept(app.catalog.get(9))
        specs = panel.specs
        titles = [c.title for c in app.get_system_commands(chat)]
        assert "Save steering as preset" in titles and not any(t.startswith("Steering preset:") for t in titles)
        app.action_save_preset()
        await wait_for(pilot, lambda: isinstance(app.screen, PresetSaveScreen), what="preset dialog")
        await pilot.pause()
        app.screen.query_one("#preset-name").value = "bad/name"
        await pilot.press("enter")
        assert "preset name" in str(app.screen.query_one("#preset-error").content)
        app.screen.query_one("#preset-name").value = "two concepts"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, PresetSaveScreen), what="saved")
        path = home / "steering-presets" / "two concepts.toml"
        assert read_steering_preset(path) == specs
        panel.clear()
        await pilot.pause()
        command = next(c for c in app.get_system_commands(chat) if c.title == "Steering preset: two concepts")
        command.callback()
        await pilot.pause()
        assert panel.specs == specs
        # a preset the sliders cannot take: an error, the panel unchanged
        (home / "steering-presets" / "cli.toml").write_text("[[concept]]\nid = 3\nstrength = 8\nunits = \"reference\"\n")
        assert not app.apply_preset(home / "steering-presets" / "cli.toml")
        assert "--steering FILE" in str(chat.query_one("#chat-error").content) and panel.specs == specs
        await send(pilot, chat, PROMPT)
        assert [d["concept_id"] for d in chat.states[0].turn.steering] == [5, 9]
