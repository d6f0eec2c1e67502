"""Concurrency: 8 streaming clients at once, one generation at a time, and a client that
disconnects mid-stream freeing the server within one denoising step.

No timing: a paused job is held in the queue's step hook (called in the worker after each
denoising step) until the test has done what it checks, and released by the cancellation
itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from steerling_lite import GenerationConfig, Steerling
from steerling_lite.serve import GenerationQueue

from .serve_fixtures import MODEL, client, connect, request, serving, sse_events

PROMPTS = ["The history of the city", "A river runs", "Music is", "The old bridge", "In the morning",
           "Birds and fish", "A small house", "The king said"]


@pytest.fixture(scope="module")
def lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="fp32")


def test_eight_concurrent_streaming_clients_all_get_complete_correct_answers(lm):
    greedy = GenerationConfig(max_new_tokens=16, steps=8, temperature=0.0, entropy_sampling=False)
    want = [lm.generate(p, greedy).text for p in PROMPTS]
    assert len(set(want)) == 8  # eight different answers: a mix-up between clients would show
    with serving(lm) as (server, state):
        api = client(server)

        def ask(i: int) -> tuple[str, list[str | None]]:
            stream = api.completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=16, temperature=0, stream=True,
                                            extra_body={"steps": 8})
            chunks = list(stream)
            return "".join(c.choices[0].text for c in chunks), [c.choices[0].finish_reason for c in chunks]

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, range(8)))
        assert [text for text, _ in got] == want
        assert all(reasons[-1] == "length" and reasons[:-1] == [None] * (len(reasons) - 1) for _, reasons in got)
        status, health = request(server, "GET", "/health")
        assert status == 200 and health["queue_length"] == 0 and health["completed"] == 8


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "whole response"])
def test_a_disconnected_client_frees_the_server_within_one_step(lm, stream):
    paused = threading.Event()
    held: list = []

    def hold_first(job) -> None:  # after the first step that committed text: wait for the cancellation
        if job.emitted and not held:
            held.append(job)
            paused.set()
            assert job.wait_cancelled(timeout=300), "the disconnect never cancelled the job"

    with serving(lm) as (server, state):
        state.queue.step_hook = hold_first
        conn = connect(server)
        body = {"prompt": PROMPTS[0], "max_tokens": 512, "stream": stream, "seed": 1}
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        if stream:
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
            first = next(sse_events(resp))
            assert first["choices"][0]["text"] and first["choices"][0]["finish_reason"] is None
        assert paused.wait(300)
        status, health = request(server, "GET", "/health")
        assert health["running"] == 1 and health["queue_length"] == 1
        state.queue.max_waiting = 0  # a full queue answers 503 in the OpenAI shape
        status, body = request(server, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 16})
        assert status == 503 and body["error"]["code"] == "server_overloaded"
        state.queue.max_waiting = 64

        conn.close()  # the client goes away
        # the next request is served at once: it waits only for the step the job was in
        out = client(server).completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=16, seed=2)
        assert out.choices[0].text == lm.generate(PROMPTS[1], GenerationConfig(max_new_tokens=16, seed=2)).text
        job = held[0]
        assert job.steps_after_cancel == 0 and job.steps_run < 512  # stopped before its next step
        status, health = request(server, "GET", "/health")
        assert health["cancelled"] == 1 and health["queue_length"] == 0


def test_a_waiting_job_that_is_cancelled_leaves_the_queue_at_once():
    async def scenario():
        q = GenerationQueue(max_waiting=1)
        q.start()
        started, release = threading.Event(), threading.Event()
        running = q.submit(lambda job: started.set() or (release.wait(60) and "first"))
        await asyncio.to_thread(started.wait, 60)
        waiting = q.submit(lambda job: "never")
        with pytest.raises(Exception, match="waiting"):
            q.submit(lambda job: "refused")
        waiting.cancel()
        assert q.waiting == 0 and waiting.state == "cancelled"
        assert [item async for item in waiting.stream()] == [] and await waiting.future is None
        release.set()
        assert await running.future == "first"
        q.stop()
        return q.cancelled, running.state

    assert asyncio.run(scenario()) == (1, "done")


def test_an_error_in_a_job_reaches_its_client_and_the_worker_carries_on():
    async def scenario():
        q = GenerationQueue()
        q.start()

        def boom(job):
            job.emit("partial")
            raise ValueError("bad")

        job = q.submit(boom)
        items = []
        with pytest.raises(ValueError, match="bad"):
            async for item in job.stream():
                items.append(item)
        after = q.submit(lambda job: 42)
        result = await after.future
        q.stop()
        return items, result

    assert asyncio.run(scenario()) == (["partial"], 42)
