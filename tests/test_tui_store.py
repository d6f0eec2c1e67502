"""The app's pieces without the UI: the sessions database, exports, and the backend's parsing."""

from __future__ import annotations

import json
import sqlite3

import pytest

from steerling_lite import GenerationError, parse_size, write_text_atomic
from tui.backend import BackendError, Sampling, budget_bytes
from tui.concepts import Catalog, ConceptSpec
from tui.export import export_session, session_to_dict, session_to_markdown
from tui.store import SCHEMA_VERSION, Attribution, Session, Store, StoreError, Turn


def make_session() -> Session:
    return Session(title="t", model="/m", system="sys", settings={"seed": 1},
                   steering=[{"concept_id": 3, "label": "known #3", "strength": 8.0, "enabled": True}])


def test_schema_is_versioned_and_migrations_run_once(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    store = Store(path)  # reopening applies nothing twice
    rows = store.conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this app knows"):
        Store(path)


def test_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"garbage" * 200)
    with pytest.raises(StoreError, match="cannot open the sessions database"):
        Store(path)


def test_turns_and_attributions_round_trip(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    session = make_session()
    t1 = Turn("p1", "o1", prompt_ids=[1, 2], token_ids=[3, 4], settings={"seed": 1}, seed=1, stop_reason="length",
              tokens_per_s=12.5)
    store.add_turn(session, t1)
    store.add_turn(session, Turn("p2", "o2", seed=2))
    store.add_attribution(t1, Attribution(0, 2, {"known": [{"label": "known #1", "share": 0.5}], "epsilon": 0.1}))
    store.set_unsteered(t1, "plain")
    back = Store(tmp_path / "s.sqlite3").load_session(session.id)
    assert [t.prompt for t in back.turns] == ["p1", "p2"]
    a = back.turns[0]
    assert (a.prompt_ids, a.token_ids, a.seed, a.stop_reason, a.tokens_per_s, a.unsteered) == (
        [1, 2], [3, 4], 1, "length", 12.5, "plain")
    assert a.attributions[0].data["known"][0]["share"] == 0.5
    assert (a.attributions[0].start, a.attributions[0].end) == (0, 2)
    assert back.steering == session.steering and back.system == "sys"
    (summary,) = store.list_sessions()
    assert (summary.title, summary.turns) == ("t", 2)


def test_a_failed_write_leaves_nothing_half_done(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    session = make_session()
    store.add_turn(session, Turn("p1", "o1"))
    bad = Turn("p2", "o2", attributions=[Attribution(0, 1, {"x": object()})])  # not JSON: fails mid-transaction
    with pytest.raises(TypeError):
        store.add_turn(session, bad)
    back = store.load_session(session.id)
    assert [t.prompt for t in back.turns] == ["p1"]  # the turn row inserted before the failure was rolled back
    assert store.conn.execute("SELECT COUNT(*) FROM attributions").fetchone()[0] == 0


def test_delete_session_cascades(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    session = make_session()
    t = Turn("p", "o")
    store.add_turn(session, t)
    store.add_attribution(t, Attribution(0, 1, {}))
    store.delete_session(session.id)
    assert store.list_sessions() == []
    assert store.conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 0
    assert store.conn.execute("SELECT COUNT(*) FROM attributions").fetchone()[0] == 0
    with pytest.raises(StoreError, match="no session"):
        store.load_session(session.id)


def test_recent_models_most_recent_first_and_bounded(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    for i in range(12):
        store.remember_model(f"/m{i}")
    store.remember_model("/m3")
    recent = store.recent_models()
    assert recent[0] == "/m3" and len(recent) == 10 and "/m0" not in recent


def test_markdown_export_is_verbatim_and_fenced(tmp_path):
    session = make_session()
    session.turns.append(Turn("a ``` prompt", "out ```` put\nline2", seed=9, stop_reason="eot",
                              steering=session.steering, unsteered="plain",
                              attributions=[Attribution(0, 1, {"text": "x", "epsilon": 0.5,
                                                               "known": [{"label": "known #3", "share": 0.25}]})]))
    md = session_to_markdown(session)
    assert "`````text\nout ```` put\nline2\n`````" in md  # a fence longer than any backtick run inside
    assert "seed 9" in md and "known #3 +8" in md and "known #3 25.0%" in md and "epsilon: 50.0%" in md
    assert "**Unsteered (same seed)**" in md


def test_export_writes_atomically(tmp_path):
    session = make_session()
    session.turns.append(Turn("p", "o"))
    path = export_session(session, tmp_path / "out" / "s.json", "json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(session_to_dict(session)))
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]
    with pytest.raises(ValueError, match="export format"):
        export_session(session, tmp_path / "x", "html")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        write_text_atomic(blocker / "x.md", "text")


def test_budget_field_reads_sizes_as_the_runtime_does():
    # the GPU budget field uses steerling_lite's one size parser (its units: GiB = 2**30,
    # GB = 10**9); the field's unit is GiB, so a bare number is GiB; a blank field means no limit
    assert budget_bytes("") is None and budget_bytes("  ") is None
    assert budget_bytes("8GiB") == 8 * 2**30 and budget_bytes(" 512MiB ") == 512 * 2**20
    for text in ("8GiB", "8GB", "1.5GiB", "100b"):
        assert budget_bytes(text) == parse_size(text)
    assert budget_bytes("8") == 8 * 2**30 and budget_bytes("1.5") == int(1.5 * 2**30)
    with pytest.raises(BackendError, match="memory budget"):
        budget_bytes("lots")


def test_sampling_form_parsing():
    s = Sampling.from_form({"max_new_tokens": "128", "steps": "", "temperature": "0", "top_p": "0.9",
                            "repetition_penalty": "1.0", "seed": "5"})
    assert s == Sampling(128, None, 0.0, 0.9, 1.0, 5)
    cfg = s.to_config()
    assert cfg.temperature == 0.0 and not cfg.entropy_sampling and cfg.seed == 5
    assert Sampling().to_config().entropy_sampling  # blank temperature: the reference's adaptive one
    assert Sampling.from_form(s.to_form()) == s and Sampling.from_dict(s.to_dict()) == s
    with pytest.raises(BackendError, match="seed: 'x' is not a whole number"):
        Sampling.from_form({**s.to_form(), "seed": "x"})
    with pytest.raises(BackendError, match="top p: a value is needed"):
        Sampling.from_form({**s.to_form(), "top_p": ""})
    with pytest.raises(BackendError, match="must be a finite number"):
        Sampling.from_form({**s.to_form(), "temperature": "nan"})
    with pytest.raises(GenerationError, match="multiple"):
        Sampling(max_new_tokens=100).to_config().validate(64)


def test_concept_spec_maps_the_slider_to_presets():
    amp = ConceptSpec(4, "known #4", 8.0).to_steering()
    sup = ConceptSpec(4, "known #4", -7.0).to_steering()
    assert (amp.mode, amp.value) == ("amplify", 8.0)
    assert (sup.mode, sup.value) == ("suppress", 7.0)
    assert ConceptSpec.from_dict(ConceptSpec(4, "x", -3.0, False).to_dict()) == ConceptSpec(4, "x", -3.0, False)


def test_catalog_without_a_model_has_no_concepts():
    cat = Catalog(None)
    assert cat.search("anything") == []
    with pytest.raises(BackendError, match="no concept heads"):
        cat.resolve("#1")
