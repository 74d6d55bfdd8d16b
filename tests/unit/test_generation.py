"""Generation: batching invariance, order, seeds, beams, stop strings, streaming, chat loop, CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from affinage.errors import ConfigError, DataError, ModelError
from affinage.generation import (
    GenerationOptions,
    end_of_turn_token_ids,
    generate,
    generate_ids,
    render_prompt,
    stream_chat,
)
from affinage.generation import cli as gen_cli
from affinage.generation.sampling import _partial_stop_length, cut_at_stop
from affinage.serving import chat as chat_module
from affinage.testing import make_tiny_model, make_tiny_tokenizer

PROMPTS = [
    "hi",
    "a much longer prompt, with several words in it, to force padding",
    [{"role": "user", "content": "medium length"}],
    "x" * 30,
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "why?"}],
]


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A tiny model whose weights are large enough for greedy answers to depend on the prompt.

    With the default 0.02 initialisation every prompt gets the same answer, which would make the
    batching tests pass trivially.
    """
    m = make_tiny_model(tok)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


GREEDY = GenerationOptions(max_new_tokens=16)


def test_batched_left_padded_greedy_equals_unbatched(model, tok):
    batched = generate_ids(model, tok, PROMPTS, GREEDY, batch_size=len(PROMPTS), progress=False)
    alone = [generate_ids(model, tok, [p], GREEDY, progress=False)[0] for p in PROMPTS]
    assert batched == alone
    assert len({tuple(ids) for ids in alone}) > 1, "answers should depend on the prompt"
    texts = generate(model, tok, PROMPTS, GREEDY, batch_size=2, progress=False)
    assert texts == [generate(model, tok, [p], GREEDY, progress=False)[0] for p in PROMPTS]


def test_order_preserved_across_batches(model, tok):
    forward = generate(model, tok, PROMPTS, GREEDY, batch_size=2, progress=False)
    backward = generate(model, tok, PROMPTS[::-1], GREEDY, batch_size=2, progress=False)
    assert backward == forward[::-1]
    assert generate(model, tok, [], GREEDY) == []


def test_seed_reproduces_samples_and_another_seed_differs(model, tok):
    prompts = PROMPTS[:3]

    def sample(seed):
        options = GenerationOptions(max_new_tokens=16, temperature=1.0, seed=seed)
        return generate(model, tok, prompts, options, batch_size=2, progress=False)

    torch.manual_seed(123)
    first = sample(7)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert sample(7) == first
    assert torch.equal(torch.rand(1), after), "a seeded call must not disturb the caller's random state"
    assert sample(8) != first


def test_sampling_options_reach_generate(model, tok):
    options = GenerationOptions(max_new_tokens=8, temperature=0.7, top_k=5, top_p=0.9, seed=0)
    assert all(isinstance(t, str) for t in generate(model, tok, PROMPTS[:2], options, progress=False))


def test_beam_search_returns_strings(model, tok):
    options = GenerationOptions(max_new_tokens=8, num_beams=3, repetition_penalty=1.2)
    out = generate(model, tok, PROMPTS, options, batch_size=2, progress=False)
    assert len(out) == len(PROMPTS) and all(isinstance(t, str) for t in out)


def test_max_new_tokens_respected(model, tok):
    for n in (1, 5, 12):
        ids = generate_ids(model, tok, PROMPTS, GenerationOptions(max_new_tokens=n), progress=False)
        assert all(1 <= len(row) <= n for row in ids)
        assert any(len(row) == n for row in ids)  # a random model rarely stops by itself


def test_stop_strings_cut_the_answer(model, tok):
    full = generate(model, tok, ["hi"], GenerationOptions(max_new_tokens=24), progress=False)[0]
    # A two-character stop taken from the middle of the answer, plain ASCII so decoding is stable.
    start = next(i for i in range(2, len(full) - 1) if full[i : i + 2].isascii() and full[i : i + 2].strip())
    stop = full[start : start + 2]
    expected = full[: full.find(stop)]
    options = GenerationOptions(max_new_tokens=24, stop=[stop, "never produced"])
    assert generate(model, tok, ["hi"], options, progress=False)[0] == expected
    assert "".join(stream_chat(model, tok, [{"role": "user", "content": "hi"}], options)) == expected


def test_cut_helpers():
    assert cut_at_stop("abc###def", ["###", "c"]) == "ab"
    assert cut_at_stop("abc", ["x"]) == "abc"
    assert _partial_stop_length("hello <|e", ["<|end|>"]) == 3
    assert _partial_stop_length("hello", ["<|end|>"]) == 0


def test_stream_chat_matches_generate(model, tok):
    messages = [{"role": "user", "content": "tell me something"}]
    pieces = list(stream_chat(model, tok, messages, GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == generate(model, tok, [messages], GREEDY, progress=False)[0]
    beams = GenerationOptions(max_new_tokens=6, num_beams=2)
    assert (
        "".join(stream_chat(model, tok, messages, beams))
        == generate(model, tok, [messages], beams, progress=False)[0]
    )


def test_stream_chat_stops_worker_when_closed_early(model, tok):
    stream = stream_chat(
        model, tok, [{"role": "user", "content": "hi"}], GenerationOptions(max_new_tokens=200)
    )
    next(stream)
    stream.close()  # must return promptly: the worker sees the cancel flag at the next token


def test_peft_wrapped_model_generates_like_the_base(tok):
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(tok, seed=3)
    expected = generate(base, tok, PROMPTS[:3], GREEDY, progress=False)
    wrapped = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    # LoRA starts as the identity (B = 0), so the wrapped model answers exactly like the base one.
    assert generate(wrapped, tok, PROMPTS[:3], GREEDY, progress=False) == expected


def test_templates_end_of_turn_and_plain_text(model, tok):
    assert end_of_turn_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    text = render_prompt(tok, "hello", system_prompt="Be brief.")
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = make_tiny_tokenizer(chat_template=None)
    assert render_prompt(plain, "hello") == "hello"
    assert end_of_turn_token_ids(plain) == []
    assert len(generate(model, plain, ["hello"], GREEDY, progress=False)) == 1
    with pytest.raises(ModelError, match="no chat template"):
        generate(model, plain, [[{"role": "user", "content": "hi"}]], GREEDY, progress=False)
    with pytest.raises(DataError, match="prompt 1"):
        generate(model, tok, ["ok", [{"role": "user"}]], GREEDY, progress=False)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (GenerationOptions(num_beams=4, temperature=0.8), "beam search.*cannot be combined with sampling"),
        (GenerationOptions(top_k=20), "top_k.*only applies to sampling"),
        (GenerationOptions(temperature=1.0, top_p=0.0), "top_p"),
        (GenerationOptions(max_new_tokens=0), "max_new_tokens"),
        (GenerationOptions(temperature=-1), "temperature"),
        (GenerationOptions(stop=[""]), "stop"),
    ],
)
def test_validate_names_the_option(options, match):
    with pytest.raises(ConfigError, match=match):
        options.validate()


# ----------------------------------------------------------------------------------------------
# Terminal chat
# ----------------------------------------------------------------------------------------------


def _script(monkeypatch, lines):
    feed = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)


def _spy_stream(monkeypatch):
    calls = []
    real = chat_module.stream_chat

    def spy(model, tokenizer, messages, options):
        calls.append([dict(m) for m in messages])
        return real(model, tokenizer, messages, options)

    monkeypatch.setattr(chat_module, "stream_chat", spy)
    return calls


def test_chat_loop_keeps_history(monkeypatch, model, tok):
    _script(monkeypatch, ["hello", "and then?", "/exit", "never read"])
    calls = _spy_stream(monkeypatch)
    out = io.StringIO()
    conversation = chat_module.run_chat(
        model, tok, system_prompt="Be kind.", options=GREEDY, console=Console(file=out, width=200)
    )
    assert len(calls) == 2
    first_answer = conversation[2]["content"]
    assert first_answer and calls[1][2] == {"role": "assistant", "content": first_answer}
    assert first_answer in render_prompt(tok, calls[1])
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant"]
    assert "you>" in out.getvalue()


def test_chat_commands_and_eof(monkeypatch, model, tok):
    _script(monkeypatch, ["hi", "/system Answer in French.", "/reset", "/nope", "", "again"])
    calls = _spy_stream(monkeypatch)
    out = io.StringIO()
    conversation = chat_module.run_chat(model, tok, options=GREEDY, console=Console(file=out, width=200))
    assert calls[0] == [{"role": "user", "content": "hi"}]
    assert calls[1] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "again"},
    ]
    assert len(conversation) == 3  # ended by EOF (Ctrl-D) after the second answer
    assert "unknown command /nope" in out.getvalue()


def test_chat_ctrl_c_at_prompt_exits(monkeypatch, model, tok):
    def interrupt(prompt=""):
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupt)
    assert chat_module.run_chat(model, tok, console=Console(file=io.StringIO())) == []


# ----------------------------------------------------------------------------------------------
# CLI functions
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def fake_loader(monkeypatch, model, tok):
    loads = []

    def load(model_name, dtype="auto", chat_template=None):
        loads.append((model_name, dtype, chat_template))
        return model, tok

    monkeypatch.setattr(gen_cli, "load_model_and_tokenizer", load)
    return loads


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_generate_command_writes_a_completion_per_row(tmp_path, fake_loader, model, tok):
    messages = [
        {"role": "user", "content": "How do I log in?"},
        {"role": "assistant", "content": "reference answer"},
    ]
    rows = [{"prompt": "hi", "id": 1}, {"messages": messages, "id": 2}, {"prompt": "x" * 20, "id": 3}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out" / "answers.jsonl"
    _write_jsonl(src, rows)
    answers = gen_cli.generate_command(
        "tiny", None, str(src), str(dst), GREEDY, system_prompt=None, batch_size=2, dtype="float32"
    )
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in r.items() if k != "completion"} for r in out] == rows
    assert [r["completion"] for r in out] == answers
    expected = generate(model, tok, ["hi", messages[:1], "x" * 20], GREEDY, progress=False)
    assert answers == expected
    assert fake_loader == [("tiny", "float32", None)]


def test_generate_command_single_prompt_prints(capsys, fake_loader, model, tok):
    answers = gen_cli.generate_command("tiny", "hello", None, None, GREEDY, system_prompt="Be brief.")
    assert answers == generate(model, tok, ["hello"], GREEDY, system_prompt="Be brief.", progress=False)
    assert capsys.readouterr().out == answers[0] + "\n"


@pytest.mark.parametrize(
    ("bad_row", "match"),
    [
        ({"text": "no prompt here"}, r"row 2: no \"prompt\" or \"messages\""),
        ({"prompt": 5}, r"row 2: \"prompt\" must be a non-empty string"),
        ({"messages": [{"role": "user"}]}, r"row 2: message 0 must be an object"),
        ({"messages": [{"role": "assistant", "content": "only an answer"}]}, r"row 2: .*no user turn"),
    ],
)
def test_generate_command_names_a_malformed_row(tmp_path, fake_loader, bad_row, match):
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, [{"prompt": "fine"}, bad_row])
    with pytest.raises(DataError, match=match):
        gen_cli.generate_command("tiny", None, str(src), str(tmp_path / "out.jsonl"), GREEDY)
    assert fake_loader == [], "a bad file must fail before the model loads"
    assert not (tmp_path / "out.jsonl").exists()


def test_generate_command_needs_exactly_one_source(fake_loader, tmp_path):
    with pytest.raises(ConfigError, match="either a prompt or an input file"):
        gen_cli.generate_command("tiny", None, None, None, GREEDY)
    with pytest.raises(ConfigError, match="either a prompt or an input file"):
        gen_cli.generate_command("tiny", "hi", str(tmp_path / "in.jsonl"), None, GREEDY)


def test_chat_command_loads_and_chats(monkeypatch, fake_loader):
    _script(monkeypatch, ["hi"])
    gen_cli.chat_command("tiny", "Be kind.", GREEDY, dtype="auto", chat_template="chatml")
    assert fake_loader == [("tiny", "auto", "chatml")]
