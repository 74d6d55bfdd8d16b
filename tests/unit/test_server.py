"""The OpenAI-compatible server, driven by the official `openai` client and by plain httpx on loopback.

The served model is a tiny random Llama; its answers are compared with `affinage.generation` (which
calls transformers' `model.generate`), with themselves (streaming vs not, seeds), and across batches.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from affinage.data import encode_prompt  # noqa: E402
from affinage.errors import ConfigError  # noqa: E402
from affinage.generation import GenerationOptions, generate_ids  # noqa: E402
from affinage.serving import server as server_module  # noqa: E402
from affinage.serving.engine import BatchEngine, Job, SamplingParams, _Choice, sample_next  # noqa: E402
from affinage.serving.server import (  # noqa: E402
    RunningServer,
    ServeOptions,
    create_app,
    guard_verdict,
    load_guard,
)
from affinage.testing import make_tiny_model, make_tiny_tokenizer  # noqa: E402

NAME = "tiny"


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """Weights large enough that answers depend on the prompt (0.02 init gives every prompt the same)."""
    m = make_tiny_model(tok, tie_word_embeddings=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


def _options(**kw) -> ServeOptions:
    base = dict(guard="off", max_batch_size=4, max_queue=8, max_tokens_limit=64, default_max_tokens=16)
    return ServeOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def server(model, tok):
    with RunningServer(create_app(model, tok, _options(), name=NAME)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _letters(tok, bias: float = 100.0) -> dict[str, float]:
    """logit_bias pushing every lowercase ASCII letter up (each is one token of the byte tokenizer)."""
    return {str(tok.convert_tokens_to_ids(c)): bias for c in "abcdefghijklmnopqrstuvwxyz"}


def _no_eos(tok) -> dict[str, float]:
    return {str(tok.eos_token_id): -100.0}


# ----------------------------------------------------------------------------------------------
# Completions through the openai client
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["hi", "How do I log in to the cluster?", "Bonjour, ça va ?"])
def test_greedy_answer_and_usage_match_model_generate(client, model, tok, prompt):
    """temperature=0 gives transformers' greedy answer; usage counts the prompt and answer tokens."""
    reply = client.chat.completions.create(model=NAME, messages=_user(prompt), max_tokens=12, temperature=0)
    ids = generate_ids(model, tok, [_user(prompt)], GenerationOptions(max_new_tokens=12), progress=False)[0]
    finished = bool(ids) and ids[-1] == tok.eos_token_id
    answer_ids = ids[:-1] if finished else ids
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == tok.decode(answer_ids, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if finished else "length")
    assert reply.model == NAME and reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    prompt_tokens = len(encode_prompt(tok, _user(prompt)))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.completion_tokens == len(answer_ids)
    assert reply.usage.total_tokens == prompt_tokens + len(answer_ids)


def test_streaming_joins_to_the_non_streaming_answer(client, tok):
    kwargs = dict(model=NAME, messages=_user("stream me"), max_tokens=20, temperature=0, logit_bias=_no_eos(tok))
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # really streamed, not one block
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_raw_sse_format_ends_with_done(server, tok):
    body = {"model": NAME, "messages": _user("hi"), "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1


def test_n_choices_with_seed_are_reproducible_and_distinct(client, tok):
    kwargs = dict(model=NAME, messages=_user("tell me"), max_tokens=10, temperature=1.0, n=3, seed=7,
                  logit_bias=_no_eos(tok))
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) == 3  # each choice draws its own tokens (seed + index)
    assert first.usage.completion_tokens == 3 * 10
    other = client.chat.completions.create(**{**kwargs, "seed": 8})
    assert [c.message.content for c in other.choices] != texts


def test_stop_string_cuts_the_answer(client, tok):
    """The answer ends just before the first occurrence of the stop string, finish_reason 'stop'."""
    kwargs = dict(model=NAME, messages=_user("letters"), max_tokens=30, temperature=1.0, seed=3,
                  logit_bias={**_letters(tok), **_no_eos(tok)})
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    assert len(full) == 30 and full.isalpha()  # the bias made every token a lowercase letter
    stop = full[12:14]
    cut = client.chat.completions.create(**kwargs, stop=[stop, "never-produced"]).choices[0]
    assert cut.message.content == full[: full.find(stop)]
    assert cut.finish_reason == "stop"


def test_logit_bias_and_penalties_by_value(tok):
    """sample_next applies bias then OpenAI's penalties: logit - f*count - p*(count > 0)."""
    logits = torch.tensor([1.0, 2.0, 3.0, 0.0])
    job = Job([1], SamplingParams(max_tokens=1, temperature=0, logit_bias={0: 5.0}), emit=lambda e: None)
    assert sample_next(logits, _Choice(job, 0, 4)) == 0  # 1 + 5 beats 3
    job = Job([1], SamplingParams(max_tokens=1, temperature=0, frequency_penalty=1.0, presence_penalty=0.5),
              emit=lambda e: None)
    choice = _Choice(job, 0, 4)
    choice.counts[2] = 2  # token 2: 3 - 1*2 - 0.5 = 0.5, below token 1's 2.0
    assert sample_next(logits, choice) == 1
    # top_p: probabilities [0.6, 0.3, 0.1]; top_p=0.5 keeps only the first (it alone crosses 0.5).
    probs = torch.tensor([0.6, 0.3, 0.1])
    job = Job([1], SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=0), emit=lambda e: None)
    draws = {sample_next(probs.log(), _Choice(job, 0, 3)) for _ in range(20)}
    assert draws == {0}


# ----------------------------------------------------------------------------------------------
# Bad requests: 400 in OpenAI's error shape, naming the field
# ----------------------------------------------------------------------------------------------

GOOD = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

BAD = [
    ({"temperature": 5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 5}, "n"),  # more than max_batch_size (4)
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 65}, "max_tokens"),  # more than max_tokens_limit (64)
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"max_token": 5}, "max_token"),  # a typo is reported, not ignored
    ({"model": None}, "model"),
]


@pytest.mark.parametrize(("change", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_request_is_400_naming_the_field(server, change, param):
    body = {**GOOD, **change}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert param.split("[")[0] in error["message"]
    assert error["type"] == "invalid_request_error"


def test_missing_messages_and_bad_json_are_400(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": NAME}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": ', timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json=[1, 2], timeout=30)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


def test_openai_client_raises_bad_request_with_the_message(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=_user("hi"), temperature=3.0)
    assert info.value.status_code == 400
    assert "temperature" in info.value.message


def test_unknown_model_and_path_are_404(server, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=_user("hi"))
    assert "gpt-9" in info.value.message and NAME in info.value.message
    r = httpx.get(server.url + "/v1/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/chat/completions", timeout=30)
    assert r.status_code == 405 and "error" in r.json()


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    health = httpx.get(server.url + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["model"] == NAME and health["guard"] is False


def test_prompt_and_context_limits_are_400(model, tok):
    with RunningServer(create_app(model, tok, _options(max_prompt_tokens=40), name=NAME)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={**GOOD, "messages": _user("x" * 100)}, timeout=30)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded" and "40" in error["message"]
    # The tiny model's context is 512 tokens: a 500-token prompt leaves no room for 64 new ones.
    with RunningServer(create_app(model, tok, _options(), name=NAME)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions",
                       json={**GOOD, "messages": _user("y" * 480), "max_tokens": 64}, timeout=30)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "max_tokens" and "512" in r.json()["error"]["message"]


def test_request_body_too_large_is_400(model, tok):
    with RunningServer(create_app(model, tok, _options(max_request_bytes=2048), name=NAME)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={**GOOD, "messages": _user("z" * 5000)}, timeout=30)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "request_too_large" and "2048" in r.json()["error"]["message"]

        def chunked():  # no Content-Length: the limit is counted as the body arrives
            yield json.dumps({**GOOD, "messages": _user("z" * 5000)}).encode()

        r = httpx.post(srv.url + "/v1/chat/completions", content=chunked(), timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"


# ----------------------------------------------------------------------------------------------
# API keys
# ----------------------------------------------------------------------------------------------


def test_api_keys_401_without_a_valid_key(model, tok):
    with RunningServer(create_app(model, tok, _options(api_keys=["k-secret", "k-other"]), name=NAME)) as srv:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(srv.url + "/v1/chat/completions", json=GOOD, headers=headers, timeout=30)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/v1/models", timeout=30).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="k-other", max_retries=0)
        assert good.chat.completions.create(model=NAME, messages=_user("hi"), max_tokens=3).choices
        assert httpx.get(srv.url + "/health", timeout=30).status_code == 200  # health needs no key


# ----------------------------------------------------------------------------------------------
# Guard
# ----------------------------------------------------------------------------------------------


class FakeGuard:
    """Implements the two methods of affinage.safety.guard.Guard: refuses inputs that mention
    'forbidden'; replaces answers to conversations that mention 'censor'. Records its calls."""

    def __init__(self):
        self.inputs, self.outputs = [], []

    def check_input(self, messages):
        self.inputs.append(messages)
        if "forbidden" in messages[-1]["content"]:
            return {"allowed": False, "refusal": "Je ne peux pas aider avec cela."}
        return {"allowed": True}

    def check_output(self, messages, answer):
        self.outputs.append((messages, answer))
        return type("Verdict", (), {"safe": "censor" not in messages[-1]["content"], "response": None})()


def test_guard_refuses_input_and_replaces_output(model, tok):
    guard = FakeGuard()
    with RunningServer(create_app(model, tok, _options(), guard=guard, name=NAME)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        refused = client.chat.completions.create(model=NAME, messages=_user("a forbidden thing"), max_tokens=8)
        assert refused.choices[0].message.content == "Je ne peux pas aider avec cela."
        assert refused.choices[0].finish_reason == "content_filter"
        assert guard.outputs == []  # refused before any generation

        passed = client.chat.completions.create(model=NAME, messages=_user("a benign thing"), max_tokens=8,
                                                temperature=0)
        assert passed.choices[0].finish_reason in ("stop", "length")
        assert guard.outputs[-1] == (_user("a benign thing"), passed.choices[0].message.content)

        replaced = client.chat.completions.create(model=NAME, messages=_user("please censor"), max_tokens=8)
        assert replaced.choices[0].message.content == server_module.DEFAULT_REFUSAL
        assert replaced.choices[0].finish_reason == "content_filter"

        # Streaming with a guard: the answer is checked whole, then sent; same text as without stream.
        chunks = list(client.chat.completions.create(model=NAME, messages=_user("a benign thing"), max_tokens=8,
                                                     temperature=0, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == passed.choices[0].message.content
        streamed_refusal = list(client.chat.completions.create(model=NAME, messages=_user("forbidden"), stream=True))
        assert [c.choices[0].finish_reason for c in streamed_refusal if c.choices[0].finish_reason] == ["content_filter"]
        assert httpx.get(srv.url + "/health").json()["guard"] is True


def test_guard_verdict_reads_the_usual_shapes():
    assert guard_verdict(None) == (True, None)
    assert guard_verdict(True) == (True, None)
    assert guard_verdict(False) == (False, None)
    assert guard_verdict({"allowed": False, "refusal": "no"}) == (False, "no")
    assert guard_verdict({"blocked": True, "message": "nope"}) == (False, "nope")
    assert guard_verdict({"flagged": False}) == (True, None)
    verdict = type("V", (), {"safe": False, "text": "refusé"})()
    assert guard_verdict(verdict) == (False, "refusé")
    with pytest.raises(TypeError):
        guard_verdict({"score": 0.3})


def test_load_guard_off_and_missing_config():
    assert load_guard(None) is None
    assert load_guard("off") is None
    try:
        import affinage.safety.guard  # noqa: F401
    except ImportError:
        assert load_guard("default") is None  # unguarded, with a warning, until issue 6 lands
        with pytest.raises(ConfigError, match="affinage.safety.guard"):
            load_guard("guard.yaml")
    else:
        with pytest.raises(ConfigError, match="no such file"):
            load_guard("/nonexistent/guard.yaml")


# ----------------------------------------------------------------------------------------------
# Queue, batching, timeout, load
# ----------------------------------------------------------------------------------------------


def _wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _post(url, body):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_queue_full_is_429_and_queued_requests_are_batched(model, tok):
    """With the worker held, one request runs, max_queue wait, the next is refused with 429; once
    released, the waiting requests are decoded as one batch and answer as they would alone."""
    app = create_app(model, tok, _options(max_batch_size=4, max_queue=3), name=NAME)
    engine = app.state.affinage.engine
    prompts = ["first", "second one", "third, longer prompt", "4th"]
    bodies = [{**GOOD, "messages": _user(p), "max_tokens": 8, "temperature": 0} for p in prompts]
    with RunningServer(app) as srv:
        alone = [_post(srv.url, b).json()["choices"][0]["message"]["content"] for b in bodies]
        batches_before = engine.batches
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            engine.model_lock.acquire()
            try:
                futures = [pool.submit(_post, srv.url, bodies[0])]
                _wait(lambda: engine.running_rows == 1 and engine.queued == 0)  # taken, blocked on the lock
                for body in bodies[1:]:
                    futures.append(pool.submit(_post, srv.url, body))
                _wait(lambda: engine.queued == 3)
                refused = _post(srv.url, bodies[0])
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "queue_full" and refused.headers["retry-after"] == "1"
            finally:
                engine.model_lock.release()
            answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == alone
    assert engine.batches - batches_before == 2  # the first alone, the three queued together


def test_timeout_is_504_and_the_server_recovers(model, tok):
    app = create_app(model, tok, _options(request_timeout_s=0.5), name=NAME)
    engine = app.state.affinage.engine
    with RunningServer(app) as srv:
        engine.model_lock.acquire()
        try:
            r = _post(srv.url, GOOD)
        finally:
            engine.model_lock.release()
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert _post(srv.url, GOOD).status_code == 200


def test_concurrent_load_no_request_lost_or_crossed_and_memory_flat(model, tok, tmp_path):
    """48 sampled requests, 8 at a time, each with its own seed: every request gets exactly one answer,
    and it is the answer that request gets alone. Resident memory after the second half of the load
    is within 40 MB of after the first half (no growth per request)."""
    psutil = pytest.importorskip("psutil")
    log = tmp_path / "access.jsonl"
    app = create_app(model, tok, _options(max_batch_size=4, max_queue=64, access_log=str(log)), name=NAME)
    bodies = [{**GOOD, "messages": _user(f"request {i}"), "max_tokens": 12, "temperature": 1.0, "seed": i,
               "logit_bias": {**_letters(tok, 3.0), **_no_eos(tok)}} for i in range(48)]
    with RunningServer(app) as srv:
        alone = {i: _post(srv.url, bodies[i]).json()["choices"][0]["message"]["content"] for i in range(8)}
        process = psutil.Process()

        def run(indices):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                return dict(zip(indices, pool.map(lambda i: _post(srv.url, bodies[i]), indices), strict=True))

        first = run(range(24))
        rss_first = process.memory_info().rss
        second = run(range(24, 48))
        rss_second = process.memory_info().rss
    replies = {**first, **second}
    assert all(r.status_code == 200 for r in replies.values())
    ids = [r.json()["id"] for r in replies.values()]
    assert len(set(ids)) == 48
    for i in range(8):
        assert replies[i].json()["choices"][0]["message"]["content"] == alone[i]
    assert len({r.json()["choices"][0]["message"]["content"] for r in replies.values()}) > 40
    assert rss_second - rss_first < 40 * 2**20
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    chat = [entry for entry in lines if entry["path"] == "/v1/chat/completions"]
    assert len(chat) == 8 + 48 and {e["status"] for e in chat} == {200}
    assert all(e["prompt_tokens"] > 0 and e["completion_tokens"] == 12 and e["latency_ms"] > 0 for e in chat)
    assert len({e["request_id"] for e in chat}) == len(chat)


def test_engine_rows_finish_independently(model, tok):
    """In one batch, a row that stops early leaves the batch and the others finish unchanged."""
    engine = BatchEngine(model, tok, max_batch_size=4)
    events: dict[int, list] = {0: [], 1: []}
    short = Job(encode_prompt(tok, _user("a")), SamplingParams(max_tokens=3, temperature=0), events[0].append)
    long = Job(encode_prompt(tok, _user("bb")), SamplingParams(max_tokens=15, temperature=0,
                                                                 logit_bias={tok.eos_token_id: -100.0}),
               events[1].append)
    with torch.inference_mode():
        engine.decode([_Choice(short, 0, engine.vocab_size), _Choice(long, 0, engine.vocab_size)])
    alone = generate_ids(model, tok, [_user("a")], GenerationOptions(max_new_tokens=3), progress=False)[0]
    finish = next(e for e in events[0] if e.kind == "finish")
    assert finish.completion_tokens == len([t for t in alone if t != tok.eos_token_id])
    long_finish = next(e for e in events[1] if e.kind == "finish")
    assert long_finish.finish_reason == "length" and long_finish.completion_tokens == 15


def test_serve_dependencies_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'affinage\[serve\]'"):
        server_module.check_serve_dependencies()


def test_engine_survives_a_failing_batch(model, tok):
    """An exception inside generation fails that batch's requests (500), not the server."""
    app = create_app(model, tok, _options(), name=NAME)
    engine = app.state.affinage.engine
    with RunningServer(app) as srv:
        original = engine.decode
        calls = threading.Event()

        def broken(choices):
            calls.set()
            raise RuntimeError("simulated failure")

        engine.decode = broken
        r = _post(srv.url, GOOD)
        engine.decode = original
        assert calls.is_set() and r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert _post(srv.url, GOOD).status_code == 200


def test_the_safety_module_guard_is_plumbed_in(model, tok):
    """The real Guard of issue 6 (self-reflection with the served model): the server adds its safety
    system prompt, and answers exactly what the guard decides for the prompt."""
    guard_module = pytest.importorskip("affinage.safety.guard")
    assert isinstance(load_guard("default", model, tok), guard_module.Guard)
    # The built-in safety system prompt alone is longer than the tiny model's 512-token context.
    config = guard_module.GuardConfig(system_prompt_text="Be safe.")
    guard = guard_module.Guard.from_config(config, model=model, tokenizer=tok)
    messages = _user("Comment réinitialiser mon mot de passe ?")
    allowed, refusal = guard_verdict(guard.check_input(messages))
    with RunningServer(create_app(model, tok, _options(), guard=guard, name=NAME)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    assert reply.usage.prompt_tokens == len(encode_prompt(tok, guard.apply_system_prompt(messages)))
    if allowed:
        assert reply.choices[0].finish_reason in ("stop", "length", "content_filter")
    else:
        assert reply.choices[0].finish_reason == "content_filter"
        assert reply.choices[0].message.content == refusal
