"""``steerling-lite serve`` with the official ``openai`` client, against the Python API.

A uvicorn server on 127.0.0.1 over a tiny checkpoint (fp32, diffusion block 16): every text
it returns is compared with what ``Steerling.generate`` / ``explain`` / ``embed`` / the CLI
give for the same settings and seed.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest

from steerling_lite import ChatMessage, GenerationConfig, Steering, SteeringBuilder, Steerling, embed, explain
from steerling_lite.cli import main

from .serve_fixtures import MODEL, client, request, serving

PROMPT = "The history of the city"


@pytest.fixture(scope="module")
def base_dir(make_ckpt):
    return make_ckpt(diff_block_size=16)


@pytest.fixture(scope="module")
def lm(base_dir):
    return Steerling.load(base_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def server(lm):
    with serving(lm) as (srv, _):
        yield srv


@pytest.fixture(scope="module")
def api(server):
    return client(server)


def cfg(n=16, steps=8, seed=1, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, steps=steps, seed=seed, **kw)


def test_models_and_health(api, server, lm):
    models = api.models.list().data
    assert [m.id for m in models] == [MODEL]
    info = models[0].model_extra["steerling"]
    assert info["kind"] == "base" and info["diffusion_block"] == 16 and info["known_concepts"] == 100
    assert api.models.retrieve(MODEL).id == MODEL
    status, health = request(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["queue_length"] == 0


def test_completion_is_the_python_api_generation(api, lm):
    out = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=3, extra_body={"steps": 8})
    want = lm.generate(PROMPT, cfg(seed=3))
    assert out.choices[0].text == want.text and out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(want.prompt_ids) and out.usage.completion_tokens == 16
    extra = out.model_extra["steerling"]
    assert extra["seed"] == 3 and extra["steps"] == 8 and extra["rounded_up"] is False
    greedy = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0)
    assert greedy.choices[0].text == lm.generate(PROMPT, cfg(32, None, 0, temperature=0.0, entropy_sampling=False)).text


def test_streaming_gives_the_same_text_in_chunks(api, lm):
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, seed=4, stream=True,
                                    stream_options={"include_usage": True})
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == lm.generate(PROMPT, cfg(32, 32, 4)).text
    assert sum(1 for t in texts if t) > 1  # streamed as the committed prefix grew, not in one piece
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 32


def test_max_tokens_is_rounded_up_to_the_block_and_the_answer_cut_back(api, lm):
    out = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, seed=2)
    full = lm.generate(PROMPT, cfg(16, None, 2))
    assert out.choices[0].text == lm.tokenizer.decode(full.token_ids[:10])
    assert out.usage.completion_tokens == 10 and out.choices[0].finish_reason == "length"
    extra = out.model_extra["steerling"]
    assert extra["rounded_up"] is True and extra["max_new_tokens"] == 16 and extra["max_tokens"] == 10


def test_stop_strings_end_the_text(api, lm):
    text = lm.generate(PROMPT, cfg(32, 32, 6)).text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    out = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, seed=6, stop=[stop])
    assert out.choices[0].text == text[:text.index(stop)] and out.choices[0].finish_reason == "stop"
    streamed = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, seed=6, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[:text.index(stop)]


def test_steering_extra_field_changes_the_text_as_cli_amplify(api, base_dir, capsys):
    flags = ["generate", "--model", str(base_dir), "--prompt", PROMPT, "-n", "16", "--steps", "8", "--seed", "5",
             "--dtype", "fp32", "--json"]
    assert main(flags + ["--amplify", "3=20", "--inject-layer", "1"]) == 0
    cli_steered = json.loads(capsys.readouterr().out)["text"]
    assert main(flags) == 0
    cli_plain = json.loads(capsys.readouterr().out)["text"]
    body = {"steps": 8, "steering": [{"concept": 3, "strength": 20}], "inject_layer": 1}
    steered = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=5, extra_body=body)
    plain = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=5, extra_body={"steps": 8})
    assert steered.choices[0].text == cli_steered and plain.choices[0].text == cli_plain
    assert cli_steered != cli_plain
    assert steered.model_extra["steerling"]["steering"]["specs"][0]["concept_id"] == 3


def test_negative_strength_suppresses_as_cli_suppress(api, lm):
    body = {"steering": [{"concept": "#7", "strength": -4}, {"concept": 9, "mode": "intervene", "strength": 0.8}]}
    out = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=8, extra_body=body)
    plan = SteeringBuilder(lm).build([Steering(7, "suppress", 4.0), Steering(9, "intervene", 0.8)])
    assert out.choices[0].text == lm.generate(PROMPT, cfg(16, None, 8), plan).text


def test_attribution_in_every_chunk(api, lm):
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=7, stream=True,
                                    extra_body={"attribution": {"top": 3}, "steps": 8})
    chunks = [c for c in stream if c.choices and c.choices[0].text]
    records = [r for c in chunks for r in c.choices[0].model_extra["attribution"]]
    for c in chunks:  # each chunk's records are the tokens of its text
        recs = c.choices[0].model_extra["attribution"]
        assert lm.tokenizer.decode([r["token_id"] for r in recs]) == c.choices[0].text
    want = explain(lm, PROMPT, cfg(16, 8, 7))
    tokens = want.tokens()
    assert [r["token_id"] for r in records] == [t.token_id for t in tokens]
    for r, t in zip(records, tokens):
        assert [c["id"] for c in r["concepts"]] == [c.concept_id for c in t.top(3)]
        assert r["shares"] == pytest.approx(t.shares, abs=1e-3)
        assert sum(abs(v) for v in r["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    whole = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=7,
                                   extra_body={"attribution": True, "steps": 8})
    assert len(whole.choices[0].model_extra["attribution"]) == 16


def test_embeddings_are_the_python_api_embeddings(api, lm, server):
    out = api.embeddings.create(model=MODEL, input=["a cat", "the sea"])
    assert [d.index for d in out.data] == [0, 1] and out.usage.prompt_tokens == 4
    assert np.allclose(out.data[1].embedding, embed(lm, "the sea").numpy(), atol=1e-5)
    known = api.embeddings.create(model=MODEL, input="a cat", extra_body={"kind": "known", "pooling": "last"})
    assert np.allclose(known.data[0].embedding, embed(lm, "a cat", "known", "last").numpy(), atol=1e-5)
    status, body = request(server, "POST", "/v1/embeddings", {"input": [[64, 8171]], "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and np.allclose(vec, embed(lm, [64, 8171]).numpy(), atol=1e-5)


def test_chat_on_an_instruct_model(make_ckpt):
    lm = Steerling.load(make_ckpt(instruct=True, diff_block_size=16), device="cpu", dtype="fp32")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]
    want = lm.generate([ChatMessage(m["role"], m["content"]) for m in messages], cfg(32, 16, 1))
    with serving(lm) as (srv, _):
        api = client(srv)
        out = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=32, seed=1, extra_body={"steps": 16})
        assert out.choices[0].message.content == want.text and out.choices[0].message.role == "assistant"
        assert out.choices[0].finish_reason == ("stop" if want.stop_reason == "eot" else "length")
        chunks = list(api.chat.completions.create(model=MODEL, messages=messages, max_tokens=32, seed=1, stream=True,
                                                  extra_body={"steps": 16}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
        assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_steering_by_concept_name_and_the_app_preset_format():
    """The embedded default model has a labels file: names resolve to known concept ids."""
    lm = Steerling.load(_default_dir(), device="cpu", dtype="fp32")
    animal = next(c.concept_id for c in _catalog(lm).concepts("known") if c.name == "noun.animal")
    with serving(lm) as (srv, _):
        api = client(srv)
        by = {}
        for key, steering in [("id", [{"concept": animal, "strength": 2}]),
                              ("name", [{"concept": "Noun.Animal", "strength": 2}]),
                              ("session", {"format": "steerling-lite.session/1", "steering": [
                                  {"concept_id": animal, "label": "noun.animal", "strength": 3.0, "enabled": True},
                                  {"concept_id": 3, "label": "x", "strength": 5.0, "enabled": False}]}),
                              ("relative", [{"concept": animal, "strength": 3, "units": "relative",
                                             "schedule": "fixed"}])]:
            out = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, seed=1,
                                         extra_body={"steering": steering})
            by[key] = out.choices[0].text
        with pytest.raises(openai.BadRequestError, match="units"):
            api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16,
                                   extra_body={"steering": [{"concept": animal, "units": "logits"}]})
    builder = SteeringBuilder(lm)
    reference = builder.build([Steering(animal, "amplify", 2.0)])
    assert by["id"] == by["name"] == lm.generate(PROMPT, cfg(64, None, 1), reference).text
    # the app's saved session means what its sliders mean: relative units, steered to the end
    slider = builder.build([Steering(animal, "amplify", 3.0, schedule="fixed", units="relative")])
    assert by["session"] == by["relative"] == lm.generate(PROMPT, cfg(64, None, 1), slider).text
    assert by["session"] != by["id"]


def _default_dir():
    from steerling_lite.loading.default_model import ensure_default_model

    return ensure_default_model()


def _catalog(lm):
    from steerling_lite import ConceptCatalog

    return ConceptCatalog.for_model(lm)
