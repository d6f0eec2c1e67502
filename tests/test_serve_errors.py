"""Bad requests get a clean 4xx in the OpenAI error shape, and the server keeps serving.

One server with an API key, a 4 KiB body limit and a max_tokens limit; after every bad
request it still answers ``/health`` and a good completion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from steerling_lite import GenerationConfig, Steerling

from .serve_fixtures import MODEL, client, connect, request, serving

KEY = "sk-local-test"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def server(lm):
    with serving(lm, api_key=KEY, max_body_bytes=4096, max_tokens_limit=256) as (srv, _):
        yield srv


def good(prompt="Once upon a time", **kw):
    return {"model": MODEL, "prompt": prompt, "max_tokens": 16, "seed": 1, **kw}


CASES = [
    # (name, path, body (dict or raw bytes), headers, status, code, words in the message)
    ("malformed JSON", "/v1/completions", b'{"model": "tiny-test", "prompt": ', AUTH, 400, None, "not valid JSON"),
    ("not an object", "/v1/completions", b"[1, 2]", AUTH, 400, None, "JSON object"),
    ("missing prompt", "/v1/completions", {"model": MODEL}, AUTH, 400, None, "prompt: Field required"),
    ("wrong type", "/v1/completions", good(max_tokens="many"), AUTH, 400, None, "max_tokens"),
    ("unknown model", "/v1/completions", good(model="gpt-4o"), AUTH, 404, "model_not_found", "'gpt-4o' does not exist"),
    ("unknown model, embeddings", "/v1/embeddings", {"model": "x", "input": "a"}, AUTH, 404, "model_not_found", "tiny-test"),
    ("max_tokens over the context", "/v1/completions", good(max_tokens=250, prompt="word " * 780), AUTH, 400,
     "context_length_exceeded", "maximum context length is 1024"),
    ("max_tokens over the limit", "/v1/completions", good(max_tokens=300), AUTH, 400, None, "at most 256"),
    ("max_tokens zero", "/v1/completions", good(max_tokens=0), AUTH, 400, None, "at least 1"),
    ("steps not a multiple", "/v1/completions", good(max_tokens=32, steps=3), AUTH, 400, None, "multiple of the number of generated blocks"),
    ("NaN temperature", "/v1/completions", b'{"prompt": "a", "temperature": NaN}', AUTH, 400, None, "finite"),
    ("unknown concept id", "/v1/completions", good(steering=[{"concept": 100, "strength": 2}]), AUTH, 400, None,
     "out of range (0..99)"),
    ("unknown concept name", "/v1/completions", good(steering=[{"concept": "ocean"}]), AUTH, 400, None,
     "unknown concept 'ocean'"),
    ("NaN strength", "/v1/completions", b'{"prompt": "a", "steering": [{"concept": 3, "strength": NaN}]}', AUTH, 400,
     None, "strength is nan; expected a finite number"),
    ("infinite strength", "/v1/completions", b'{"prompt": "a", "steering": [{"concept": 3, "strength": "inf"}]}', AUTH,
     400, None, "finite number"),
    ("steering not a list", "/v1/completions", good(steering="ocean"), AUTH, 400, None, "expected a list"),
    ("bad inject layer", "/v1/completions", good(steering=[{"concept": 3}], inject_layer=9), AUTH, 400, None, "0..2"),
    ("several choices", "/v1/completions", good(n=2), AUTH, 400, None, "one choice"),
    ("chat on a base model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, AUTH, 400,
     None, "base model"),
    ("bad embedding kind", "/v1/embeddings", {"input": "a", "kind": "colour"}, AUTH, 400, None, "embedding kind 'colour'"),
    ("bad dimensions", "/v1/embeddings", {"input": "a", "dimensions": 3}, AUTH, 400, None, "have 64"),
    ("no API key", "/v1/completions", good(), {"Content-Type": "application/json"}, 401, "invalid_api_key", "API key"),
    ("wrong API key", "/v1/models", None, {"Authorization": "Bearer sk-wrong"}, 401, "invalid_api_key", "API key"),
    ("oversized body", "/v1/completions", good(prompt="x" * 8000), AUTH, 413, "request_too_large", "at most 4096"),
    ("unknown route", "/v1/engines", None, AUTH, 404, "not_found", "no route"),
    # issue 13: hostile bodies and values
    ("deep nesting", "/v1/completions", b'{"prompt": ' + b"[" * 2000 + b"]" * 2000 + b"}", AUTH, 400, None,
     "nested 2001 levels deep"),
    ("body not UTF-8", "/v1/completions", b'{"prompt": "caf\xe9"}', AUTH, 400, None, "not valid JSON"),
    ("seed beyond 64 bits", "/v1/completions", good(seed=2**64), AUTH, 400, None, "seed is 18446744073709551616"),
    ("negative seed", "/v1/completions", good(seed=-1), AUTH, 400, None, "seed is -1"),
    ("negative max_tokens", "/v1/completions", good(max_tokens=-5), AUTH, 400, None, "at least 1"),
    ("huge max_tokens", "/v1/completions", good(max_tokens=10**30), AUTH, 400, None, "at most 256"),
    ("prompt ids outside the vocabulary", "/v1/completions", good(prompt=[5, 10**9]), AUTH, 400, None,
     "outside the vocabulary"),
    ("top_p out of range", "/v1/completions", good(top_p=2), AUTH, 400, None, "top_p"),
    ("negative temperature", "/v1/completions", good(temperature=-1), AUTH, 400, None, "temperature must be >= 0"),
    ("concept of a wrong type", "/v1/completions", good(steering=[{"concept": [3]}]), AUTH, 400, None,
     "expected a concept id or name"),
    ("strength beyond a float", "/v1/completions",
     b'{"prompt": "a", "steering": [{"concept": 3, "strength": 1' + b"0" * 400 + b"}]}", AUTH, 400, None,
     "expected a finite number"),
]


@pytest.mark.parametrize("name,path,body,headers,status,code,words", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_clean_error_and_the_server_keeps_serving(server, name, path, body, headers, status, code, words):
    got, payload = request(server, "POST" if body is not None else "GET", path, body, headers)
    assert got == status, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"} and words in err["message"], err
    assert "\n" not in err["message"] and "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code
    assert err["type"] == "invalid_request_error"
    assert request(server, "GET", "/health")[0] == 200  # no key needed, still up


def test_the_openai_client_gets_typed_errors(server, lm):
    import openai

    api = client(server, KEY)
    with pytest.raises(openai.NotFoundError) as exc:
        api.completions.create(model="nope", prompt="a", max_tokens=16)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model=MODEL, prompt="a", max_tokens=16, extra_body={"steering": [{"concept": "sea"}]})
    assert exc.value.body["param"] == "steering"
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-wrong").models.list()
    # ... and then serves a good request: the same text as the Python API
    out = api.completions.create(**good())
    want = lm.generate("Once upon a time", GenerationConfig(max_new_tokens=16, seed=1)).text
    assert out.choices[0].text == want


def test_chunked_oversized_body_is_refused(server):
    conn = connect(server)
    try:
        conn.putrequest("POST", "/v1/completions")
        for k, v in AUTH.items():
            conn.putheader(k, v)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        data = json.dumps(good(prompt="y" * 6000)).encode()
        conn.send(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        assert resp.status == 413 and err["code"] == "request_too_large" and "over 4096 bytes" in err["message"]
    finally:
        conn.close()
    assert request(server, "GET", "/health")[0] == 200


def test_serve_command_runs_and_answers_curl(tiny_ckpt, tmp_path):
    """``steerling-lite serve`` as users start it, on a free port, asked with curl as in the README."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "steerling_lite", "serve", "--model", str(tiny_ckpt), "--port", "0", "--dtype", "fp32",
         "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split("/v1", 1)[0]
                break
        assert url is not None, "the server did not start"
        name = tiny_ckpt.name
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        out = subprocess.run(["curl", "-s", f"{url}/v1/completions", "-H", "Content-Type: application/json", "-d",
                              json.dumps({"model": name, "prompt": "Once upon a time", "max_tokens": 64, "seed": 1})],
                             capture_output=True, text=True, timeout=300, check=True)
        body = json.loads(out.stdout)
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 64
        busy = subprocess.run(["curl", "-s", f"{url}/v1/models"], capture_output=True, text=True, timeout=60)
        assert json.loads(busy.stdout)["data"][0]["id"] == name
    finally:
        proc.terminate()
        proc.wait(60)


def test_serve_command_reports_a_taken_port(tiny_ckpt, capsys):
    from steerling_lite.cli import main
    from steerling_lite.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert main(["serve", "--model", str(tiny_ckpt), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot listen on 127.0.0.1:") and "--port" in err
    finally:
        sock.close()
