"""`cwm serve` and the HTTP backend, against a real server on 127.0.0.1.

The model is real but tiny and untrained: the cwm-tiny preset, randomly initialised, saved with
save_pretrained beside a small BPE tokenizer trained here. Nothing is mocked.
"""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import free_port, make_tiny_checkpoint, serving, wait_until_healthy

from cwm.backends import BackendError, HTTPBackend, LocalBackend, Sampling


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
    assert httpx.get(server + "/health").json() == {"status": "ok", "model": "tiny"}


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
