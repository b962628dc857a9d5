"""`cwm serve` and the HTTP backend, against a real server on 127.0.0.1.

The model is real but tiny and untrained: the cwm-tiny preset, randomly initialised, saved with
save_pretrained beside a small BPE tokenizer trained here. Nothing is mocked.
"""

import contextlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import free_port, make_tiny_checkpoint, serving, wait_until_healthy
from cwm.backends import BackendError, HTTPBackend, LocalBackend, Sampling
from cwm.serve.app import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def local(tmp_path_factory, tok):
    return LocalBackend.from_dir(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tok, max_seq_len=512))


@pytest.fixture(scope="module")
def server(local):
    """A real uvicorn server in a thread, on a free loopback port."""
    with serving(local) as url:
        yield url


GREEDY = Sampling(temperature=0.0, max_new_tokens=12)


def test_health(server):
    reply = httpx.get(server + "/health").json()
    assert reply | {"generated_tokens": 0} == {"status": "ok", "model": "tiny", "server": "cwm serve", "busy": False,
                                               "waiting": 0, "generated_tokens": 0}


def test_http_and_local_backends_agree_on_greedy_predictions(server, local):
    http = HTTPBackend(server, local.tokenizer)
    tok = local.tokenizer
    prompts = [tok.encode("def f(x):\n"), [tok.bos_id, tok.trace_context_start_id] + tok.encode("y = 1")]
    for prompt in prompts:
        a, b = local.complete(prompt, sampling=GREEDY), http.complete(prompt, sampling=GREEDY)
        assert a.tokens == b.tokens and a.text == b.text and a.finish_reason == b.finish_reason
        assert len(a.tokens) >= 1
    # A text prompt is ordinary text after <|begin_of_text|>, on both sides.
    text = "def g(a):\n"
    assert local.complete(text, sampling=GREEDY).tokens == http.complete(text, sampling=GREEDY).tokens
    assert local.complete(text, sampling=GREEDY).tokens == local.complete([tok.bos_id] + tok.encode(text), sampling=GREEDY).tokens


def test_stop_token_and_stop_string(server, local):
    tok = local.tokenizer
    prompt = tok.encode("def f(x):\n")
    free = local.complete(prompt, sampling=Sampling(max_new_tokens=30))
    assert free.finish_reason == "length" and len(free.tokens) == 30
    # Stop at the token the model produces at step 5: given as a special string or as text.
    fifth = free.tokens[4]
    if tok.is_special(fifth):
        stop = tok.decode([fifth])
    else:
        stop = tok.decode(free.tokens[:5])[-1]
    http = HTTPBackend(server, tok)
    stopped = http.complete(prompt, stop=[stop], sampling=Sampling(max_new_tokens=30))
    assert stopped.finish_reason == "stop" and stop in stopped.text
    assert stopped.tokens == free.tokens[: len(stopped.tokens)] and len(stopped.tokens) <= 5


def test_release_completions_shape(server, local):
    tok = local.tokenizer
    body = {"prompt": tok.encode("x = 1\n"), "max_tokens": 4, "temperature": 0, "n": 2}
    reply = httpx.post(server + "/completions", json=body).json()
    assert reply["object"] == "text_completion" and len(reply["choices"]) == 2
    choice = reply["choices"][0]
    assert tok.decode(choice["tokens"]) == choice["text"] and len(choice["tokens"]) <= 4
    assert reply["usage"]["prompt_tokens"] == len(body["prompt"])


def test_openai_client(server, local):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="def f(x):\n", max_tokens=8, temperature=0)
    expected = local.complete("def f(x):\n", sampling=Sampling(max_new_tokens=8))
    # OpenAI semantics: the text leaves out the stop token that ended it.
    kept = expected.tokens[:-1] if expected.finish_reason == "stop" else expected.tokens
    assert out.choices[0].text == local.tokenizer.decode(kept)
    assert out.choices[0].finish_reason == expected.finish_reason


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": []}, 400, "empty"),
    ({"prompt": [10**9]}, 400, "out of range"),
    ({"prompt": [1, 2], "max_tokens": 10**6}, 400, "context"),
    ({"prompt": [1, 2], "temperature": -1}, 422, "temperature"),
    ({"prompt": [1, 2], "n": 1000}, 422, "n"),
    ({"max_tokens": 3}, 422, "prompt"),
])
def test_bad_requests_get_a_4xx_with_the_reason(server, body, status, words):
    reply = httpx.post(server + "/completions", json=body)
    assert reply.status_code == status and words in reply.text


def test_malformed_json_and_huge_body(server):
    assert httpx.post(server + "/completions", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    huge = b"[" + b"1," * (5 << 20) + b"1]"
    assert httpx.post(server + "/completions", content=huge, headers={"content-type": "application/json"}).status_code == 413


def test_concurrent_requests_are_all_answered(server, local):
    http = HTTPBackend(server, local.tokenizer)
    prompts = [local.tokenizer.encode(f"v{i} = {i}\n") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: http.complete(p, sampling=GREEDY), prompts))
    assert [r.tokens for r in results] == [local.complete(p, sampling=GREEDY).tokens for p in prompts]


def test_http_backend_reports_a_dead_server(local):
    with pytest.raises(BackendError, match="cwm serve"):
        HTTPBackend(f"http://127.0.0.1:{free_port()}", local.tokenizer).complete([1, 2])


def test_cwm_serve_cli_runs_a_real_server(local, tmp_path_factory, tok):
    """`cwm serve` as a user runs it: a subprocess on a free port, stopped with SIGTERM."""
    import subprocess
    import sys

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("cli"), tok, max_seq_len=512)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cwm", "serve", "--model", str(ckpt), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url)
        reply = httpx.post(url + "/completions", json={"prompt": "def f(x):\n", "max_tokens": 5, "temperature": 0})
        assert reply.json()["choices"][0]["tokens"] == local.complete("def f(x):\n", sampling=Sampling(max_new_tokens=5)).tokens
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cwm_serve_cli_names_a_bad_checkpoint(tmp_path, capsys):
    import argparse

    from cwm.serve import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--model", str(tmp_path / "missing")])) == 2
    assert "cannot load" in capsys.readouterr().err


def test_http_backend_passes_on_the_servers_reason(server, local):
    with pytest.raises(BackendError, match="400.*context"):
        HTTPBackend(server, local.tokenizer).complete([1, 2], sampling=Sampling(max_new_tokens=10**5))
    # /v1/completions has no `tokens`: a server without them is named, not a KeyError
    with pytest.raises(BackendError, match="choices"):
        HTTPBackend(server + "/v1", local.tokenizer).complete([1, 2], sampling=GREEDY)


def test_stop_string_ends_local_generation_early(local):
    tok = local.tokenizer
    prompt = tok.encode("def f(x):\n")
    free = local.complete(prompt, sampling=Sampling(max_new_tokens=40))
    text = tok.decode(free.tokens)
    stop = next(c for c in text[3:] if c.strip() and not tok.is_special(tok.encode(c)[0]))
    cut = local.complete(prompt, stop=[stop], sampling=Sampling(max_new_tokens=40))
    assert cut.finish_reason == "stop" and stop in cut.text and stop not in tok.decode(cut.tokens[:-1])
    assert cut.tokens == free.tokens[: len(cut.tokens)] and len(cut.tokens) < 40


# --- hostile numbers, bodies and clients ---------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("temperature", 1e-300), ("temperature", -0.5), ("temperature", float("nan")), ("temperature", float("inf")),
    ("temperature", 1e6), ("top_p", float("nan")), ("top_p", 0), ("top_p", -1), ("top_p", 1.5),
    ("seed", 2**64), ("seed", -1), ("max_tokens", 0), ("max_tokens", -3), ("max_tokens", 10**30),
    ("n", 0), ("prompt", [2**70]), ("prompt", [-1]),
])
@pytest.mark.parametrize("endpoint", ["/completions", "/v1/completions"])
def test_every_invalid_number_gets_a_4xx_naming_it(server, endpoint, field, value):
    body = {"prompt": [1, 2], "max_tokens": 4} | {field: value}
    # json.dumps writes NaN and Infinity as Python's json does (and some clients send them)
    reply = httpx.post(server + endpoint, content=json.dumps(body), headers={"content-type": "application/json"})
    assert reply.status_code in (400, 422), (field, value, reply.status_code, reply.text)
    assert field in reply.text


def test_a_chunked_body_over_the_cap_is_refused_without_being_read_whole(server):
    sent = 0
    piece = b" " * (64 << 10)

    def body():  # 100 MB, chunked (no Content-Length)
        nonlocal sent
        for _ in range(1600):
            sent += len(piece)
            yield piece

    reply = httpx.post(server + "/completions", content=body(), headers={"content-type": "application/json"})
    assert reply.status_code == 413 and "body over" in reply.text
    assert sent < MAX_BODY_BYTES + (16 << 20)  # the server stopped reading near the cap (+ socket buffers)
    assert httpx.get(server + "/health").status_code == 200  # and it still serves


def _idle(server, timeout=10.0) -> dict:
    """/health once no generation runs or waits."""
    deadline = time.monotonic() + timeout
    while (h := httpx.get(server + "/health").json())["busy"] or h["waiting"]:
        assert time.monotonic() < deadline, f"the server is still busy: {h}"
        time.sleep(0.02)
    return h


@contextlib.contextmanager
def _client_waiting(server, body):
    """A raw client that sends `body` to /completions and, on leaving the block, hangs up unanswered."""
    data = json.dumps(body).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"POST /completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(data), data))
        yield


def _wait_for(server, condition, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(h := httpx.get(server + "/health").json()):
        assert time.monotonic() < deadline, f"/health never showed it: {h}"
        time.sleep(0.02)
    return h


LONG = {"prompt": "def f(x):\n", "max_tokens": 500, "temperature": 0}  # greedy: no stop token before 500


def test_health_answers_at_once_while_generations_queue(server):
    _idle(server)
    with contextlib.ExitStack() as clients, httpx.Client() as client:  # one connection: time the answer only
        for _ in range(3):
            clients.enter_context(_client_waiting(server, LONG))
        _wait_for(server, lambda h: h["busy"] and h["waiting"] == 2)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            assert client.get(server + "/health").status_code == 200
            times.append(time.perf_counter() - start)
            time.sleep(0.02)
    assert max(times) < 0.1, times
    _idle(server, timeout=3)  # the clients hung up: the running one stopped, the queued ones never ran


def test_generation_stops_when_the_client_hangs_up(server):
    before = _idle(server)["generated_tokens"]
    with _client_waiting(server, LONG):
        _wait_for(server, lambda h: h["generated_tokens"] >= before + 3)  # it is generating
    gone = time.monotonic()  # the client hung up
    after = _idle(server, timeout=3)
    assert time.monotonic() - gone < 1.0  # stopped at once, not after 500 tokens
    assert after["generated_tokens"] - before < LONG["max_tokens"]


# --- streaming -----------------------------------------------------------------------------------


def test_openai_client_streams_the_same_text_as_the_plain_answer(server, local):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    for prompt, stop in [("def f(x):\n", None), ("def g(a, b):\n    return", ["(", ")"])]:
        plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0, stop=stop)
        chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0,
                                                stop=stop, stream=True))
        assert len(chunks) >= 2  # text as it comes, not one body
        assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
        assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_release_endpoint_streams_text_and_tokens(server, local):
    body = {"prompt": "x = 1\n", "max_tokens": 12, "temperature": 0}
    plain = httpx.post(server + "/completions", json=body).json()["choices"][0]
    with httpx.stream("POST", server + "/completions", json=body | {"stream": True}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert [t for c in choices for t in c["tokens"]] == plain["tokens"]
    assert "".join(c["text"] for c in choices) == plain["text"]
    assert choices[-1]["finish_reason"] == plain["finish_reason"]


def test_a_bad_streamed_request_gets_its_4xx_before_any_event(server):
    reply = httpx.post(server + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 10**6, "stream": True})
    assert reply.status_code == 400 and "context" in reply.text


def test_a_stream_stops_generating_when_its_reader_leaves(server):
    before = _idle(server)["generated_tokens"]
    with httpx.stream("POST", server + "/v1/completions", json=LONG | {"stream": True}, timeout=60) as reply:
        first = next(line for line in reply.iter_lines() if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["choices"][0]["finish_reason"] is None
    gone = time.monotonic()  # the reader closed the connection after one event
    after = _idle(server, timeout=3)
    assert time.monotonic() - gone < 1.0
    assert after["generated_tokens"] - before < LONG["max_tokens"]


def test_a_chat_stream_stops_generating_when_its_reader_leaves(server):
    before = _idle(server)["generated_tokens"]
    body = {"messages": [{"role": "user", "content": "def f(x):"}], "max_tokens": 400, "temperature": 0,
            "stream": True}  # the untrained model does not stop before 400 tokens
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as reply:
        events = (json.loads(line.removeprefix("data: ")) for line in reply.iter_lines() if line.startswith("data: "))
        assert next(events)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert next(events)["choices"][0]["delta"]["content"]  # text is coming
    gone = time.monotonic()  # the reader closed the connection
    after = _idle(server, timeout=3)
    assert time.monotonic() - gone < 1.0
    assert after["generated_tokens"] - before < body["max_tokens"]
