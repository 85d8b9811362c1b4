"""The OpenAI-compatible server, driven by the `openai` client on loopback, against transformers' generate."""

import http.client
import json
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_runs import random_adapter as make_random_adapter

from whetstone.serve import Engine, ServeLimits, make_server

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter with random A and B: it changes the greedy answer for sure."""
    return make_random_adapter(tmp_path_factory.mktemp("adapter") / "rand", tiny_model_dir)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, random_adapter):
    return Engine(str(tiny_model_dir), {"rand": str(random_adapter)})


@contextmanager
def _serving(engine, **kwargs):
    """A server on a free loopback port; after, it is shut down and every thread it started has ended."""
    server = make_server(engine, port=0, log=False, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()  # ends the open connections and joins their threads


@pytest.fixture(scope="module")
def server(engine):
    with _serving(engine, limits=ServeLimits(max_tokens=48, max_body_bytes=4096, timeout_s=30)) as server:
        yield server


def _client(server, key="unused"):
    """An openai client; use it in `with`, which closes the connections it pools."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key=key, max_retries=0)


@pytest.fixture
def client(server):
    with _client(server) as client:
        yield client


@pytest.fixture(scope="module")
def reference(tiny_model_dir, random_adapter):
    """Greedy answers from transformers' generate: {model id: answer to QUESTION (12 new tokens)}."""
    from whetstone.models.inference import generate_answers, load_for_inference

    out = {}
    for model_id, adapter in ((str(tiny_model_dir), None), ("rand", str(random_adapter))):
        model, tokenizer = load_for_inference(model=str(tiny_model_dir), adapter=adapter)
        (out[model_id],) = generate_answers(model, tokenizer, [QUESTION], max_new_tokens=12)
    return out


def _raw(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, payload


def test_models_lists_the_base_and_every_adapter(client, tiny_model_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [str(tiny_model_dir), "rand"]
    assert models[1].model_extra["parent"] == str(tiny_model_dir)


def test_chat_greedy_equals_generate_and_the_model_field_picks_the_adapter(client, reference):
    answers = {}
    for model_id in reference:
        r = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0)
        answers[model_id] = r.choices[0].message.content
        assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
        assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
        assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 12 else "stop")
    assert {k: v.strip() for k, v in answers.items()} == reference
    assert len(set(reference.values())) == 2  # base and adapter answer differently


def test_streaming_sends_the_same_text_in_pieces(client, reference):
    chunks = list(client.chat.completions.create(model="rand", messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces).strip() == reference["rand"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens <= 12


def test_completions_continue_raw_text_like_generate(client, engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    prompt = "The quick brown fox"
    r = client.completions.create(model=str(tiny_model_dir), prompt=prompt, max_tokens=8, temperature=0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ids = engine.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=engine.tokenizer.eos_token_id,
                             pad_token_id=engine.tokenizer.pad_token_id)
    expected = engine.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert r.choices[0].text == expected and r.object == "text_completion"
    streamed = client.completions.create(model=str(tiny_model_dir), prompt=prompt, max_tokens=8, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_stop_strings_cut_the_text_in_both_modes(client):
    full = client.chat.completions.create(model="rand", messages=QUESTION, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    pairs = [text[i:i + 2] for i in range(2, len(text) - 2)]
    stop = next(p for p in pairs if p.strip() and "\ufffd" not in p)
    expected = text[: text.index(stop)]
    cut = client.chat.completions.create(model="rand", messages=QUESTION, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="rand", messages=QUESTION, max_tokens=24, temperature=0,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


def test_sampling_is_reproducible_with_a_seed(client):
    runs = [client.chat.completions.create(model="rand", messages=QUESTION, max_tokens=10, temperature=1.0, top_p=0.9,
                                           seed=7).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"model": "nope"}, "NotFoundError", "model 'nope' is not served here"),
    ({"max_tokens": 49}, "BadRequestError", "max_tokens must be between 1 and 48"),
    ({"temperature": 3.0}, "BadRequestError", "temperature must be in [0, 2]"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "BadRequestError", "messages[0].role must be one of"),
    ({"messages": []}, "BadRequestError", "'messages' must hold at least one message"),
    ({"n": 2}, "BadRequestError", "n=2: this server returns one choice"),
])
def test_bad_requests_get_4xx_json_errors(client, kwargs, error, fragment):
    args = {"model": "rand", "messages": QUESTION, "max_tokens": 4} | kwargs
    with pytest.raises(getattr(openai, error)) as info:
        client.chat.completions.create(**args)
    assert fragment in info.value.body["message"]


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("POST", "/v1/chat/completions", b"{not json", {}, 400),
    ("POST", "/v1/chat/completions", b"[1, 2]", {}, 400),
    ("POST", "/v1/chat/completions", b"\xff\xfe", {}, 400),
    ("POST", "/v1/chat/completions", json.dumps({"model": "rand", "messages": "hi"}).encode(), {}, 400),
    ("POST", "/v1/chat/completions",
     json.dumps({"model": "rand", "messages": [{"role": "user", "content": 5}]}).encode(), {}, 400),
    ("POST", "/v1/chat/completions", json.dumps({"model": 1, "messages": []}).encode(), {}, 400),
    ("POST", "/v1/chat/completions",
     json.dumps({"model": "rand", "messages": [], "max_tokens": True}).encode(), {}, 400),
    ("POST", "/v1/completions", json.dumps({"model": "rand", "prompt": ["a", "b"]}).encode(), {}, 400),
    ("POST", "/v1/completions", json.dumps({"model": "rand", "prompt": "a", "echo": True}).encode(), {}, 400),
    ("POST", "/v1/chat/completions", b"x" * 5000, {}, 413),
    ("GET", "/v1/chat/completions", b"", {}, 405),
    ("POST", "/v1/models", b"{}", {}, 405),
    ("GET", "/v1/embeddings", b"", {}, 404),
    ("GET", "/v1/models/nope", b"", {}, 404),
])
def test_malformed_http_never_crashes_the_server(server, method, path, body, headers, status):
    got, payload = _raw(server, method, path, body, headers)
    assert got == status
    error = json.loads(payload)["error"]
    assert error["code"] == status and error["message"]
    kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}  # OpenAI's error types
    expected = "model_not_found" if path == "/v1/models/nope" else kinds.get(status, "invalid_request_error")
    assert error["type"] == expected
    assert _raw(server, "GET", "/health")[0] == 200


def test_post_without_content_length_is_411(server):
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = b""
        while chunk := sock.recv(4096):  # the server closes the connection after the error
            head += chunk
        head = head.decode()
    assert head.startswith("HTTP/1.1 411") and '"code": 411' in head


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": st.sampled_from(["rand", "x"]), "messages": st.lists(
        st.dictionaries(st.sampled_from(["role", "content"]), st.one_of(st.text(max_size=8), st.integers())),
        max_size=3), "max_tokens": st.integers(-5, 60)}).map(lambda v: json.dumps(v).encode()),
))
def test_fuzzed_bodies_get_4xx_or_an_answer(server, body):
    status, payload = _raw(server, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    reply = json.loads(payload)
    assert status == 200 or (400 <= status < 500 and reply["error"]["message"]), (status, reply)


def test_api_key_is_required_when_set(engine):
    with (_serving(engine, api_key="s3cret") as server, _client(server, key="wrong") as wrong,
          _client(server, key="s3cret") as right):
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert _raw(server, "GET", "/v1/models")[0] == 401
        assert [m.id for m in right.models.list().data][1] == "rand"
        assert _raw(server, "GET", "/health")[0] == 200  # liveness needs no key


def test_generation_past_the_timeout_is_504_and_the_server_lives_on(engine):
    with _serving(engine, limits=ServeLimits(max_tokens=400, timeout_s=0.02)) as server, _client(server) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.completions.create(model="rand", prompt="a", max_tokens=400, temperature=0)
        assert info.value.status_code == 504 and "timeout" in info.value.body["message"]
        stream = client.completions.create(model="rand", prompt="a", max_tokens=400, temperature=0, stream=True)
        with pytest.raises(openai.APIError, match="timeout"):
            list(stream)
        assert _raw(server, "GET", "/health")[0] == 200


def test_concurrent_requests_for_different_models_get_their_own_weights(server, reference):
    results, errors = {}, []

    def ask(model_id, slot):
        try:
            with _client(server) as client:
                r = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0)
            results[slot] = (model_id, r.choices[0].message.content.strip())
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(m, i)) for i, m in enumerate(list(reference) * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 6
    assert all(answer == reference[model_id] for model_id, answer in results.values())


def test_a_client_leaving_mid_stream_leaves_the_adapters_in_order(server, client, reference, tiny_model_dir):
    body = json.dumps({"model": str(tiny_model_dir), "messages": QUESTION, "max_tokens": 40, "temperature": 0,
                       "stream": True}).encode()
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                     + b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
    for model_id, expected in reference.items():
        r = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0)
        assert r.choices[0].message.content.strip() == expected


def test_serve_binds_loopback_by_default():
    from whetstone.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000
    assert make_server.__defaults__[0] == "127.0.0.1"


def test_a_bug_costs_one_request_a_500_not_the_server(server, client, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.engine, "chat_prompt", broken)
    status, payload = _raw(server, "POST", "/v1/chat/completions",
                           json.dumps({"model": "rand", "messages": QUESTION}).encode())
    assert status == 500 and json.loads(payload)["error"]["message"] == "internal error: RuntimeError: boom"
    monkeypatch.undo()
    assert client.chat.completions.create(model="rand", messages=QUESTION, max_tokens=2).choices


def test_an_adapter_trained_with_another_template_is_refused_at_start(tiny_model_dir, random_adapter, tmp_path):
    import shutil

    from whetstone.export.consistency import ConsistencyError
    from whetstone.serve import check_adapter_tokenizers

    drifted = Path(shutil.copytree(random_adapter, tmp_path / "drifted"))
    template = drifted / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    engine = Engine(str(tiny_model_dir), {"ok": str(random_adapter), "drifted": str(drifted)})
    with pytest.raises(ConsistencyError, match="(?s)serve --adapter drifted: .*chat template: the generation prompt"):
        check_adapter_tokenizers(engine)
