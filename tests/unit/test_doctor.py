"""The doctor: each template or data problem detected on a tokenizer built in the test."""

from __future__ import annotations

import json

import pytest
from tokenizers import processors

from affinage.data.formats import Example
from affinage.doctor import DoctorReport, check_data, check_template, doctor, preflight, render_mask
from affinage.errors import DataError
from affinage.testing import make_tiny_tokenizer
from affinage.testing.tiny import CHATML_TEMPLATE

# Answers end with a newline only: no end-of-turn or eos token is ever trained.
NO_EOS_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] + ':\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}"
)
# Marks the last message specially: rendering the first turns is not a prefix of the whole.
NOT_PREFIX_STABLE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% if loop.last %}{{ '<|endoftext|>' }}{% else %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DROPS_SYSTEM = CHATML_TEMPLATE.replace("{% for message in messages %}",
                                       "{% for message in messages if message['role'] != 'system' %}")


def with_bos_processor(tokenizer):
    """Make the tokenizer prepend <|endoftext|> as BOS to every encoded text, as Llama tokenizers do."""
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)]
    )
    tokenizer.bos_token = "<|endoftext|>"
    return tokenizer


def status(report: DoctorReport, name: str) -> str | None:
    check = report.get(name)
    return None if check is None else check.status


def test_tiny_chatml_tokenizer_is_ready():
    report = check_template(make_tiny_tokenizer())
    assert not report.fatal and not report.warnings, [c.message for c in report.checks]
    assert status(report, "assistant mask") == "ok" and status(report, "eos trained") == "ok"
    assert status(report, "generation tags") == "info"  # the tiny template has no {% generation %} tags
    assert status(report, "pad token") == "info"  # pad == eos, and the eos labels survive padding
    assert "keep their labels" in report.get("pad token").message


def test_named_template_with_generation_tags():
    from affinage.models.templates import CHATML

    report = check_template(make_tiny_tokenizer(CHATML))
    assert status(report, "generation tags") == "ok"
    assert "named template 'chatml'" in report.get("chat template").message


def test_template_without_eos_in_trained_span_is_fatal():
    report = check_template(make_tiny_tokenizer(NO_EOS_TEMPLATE))
    assert status(report, "eos trained") == "fatal"
    assert "never learns to stop" in report.get("eos trained").message


def test_template_not_prefix_stable_is_flagged():
    report = check_template(make_tiny_tokenizer(NOT_PREFIX_STABLE))
    check = report.get("prefix-stable")
    assert check.status in ("warn", "fatal")
    assert "not prefix-stable" in check.message


def test_missing_template_is_fatal():
    report = check_template(make_tiny_tokenizer(None))
    assert status(report, "chat template") == "fatal"
    assert "model.chat_template" in report.get("chat template").fix


def test_bos_written_by_template_and_added_by_tokenizer_is_flagged():
    tokenizer = with_bos_processor(make_tiny_tokenizer("{{ bos_token }}" + CHATML_TEMPLATE))
    report = check_template(tokenizer)
    assert status(report, "bos token") == "warn"
    assert "gets two" in report.get("bos token").message


def test_missing_bos_is_flagged():
    report = check_template(with_bos_processor(make_tiny_tokenizer()))
    assert status(report, "bos token") == "warn"
    assert "trained without BOS" in report.get("bos token").message


def test_doubled_bos_in_data_is_fatal():
    # A chat pre-rendered into a text column carries its own BOS; tokenising it adds a second one.
    tokenizer = with_bos_processor(make_tiny_tokenizer())
    rows = [("data.jsonl, row 1", Example(text="<|endoftext|><|im_start|>user\nhi<|im_end|>\n"))]
    report = check_data(tokenizer, rows)
    assert status(report, "bos in data") == "fatal"
    assert "twice" in report.get("bos in data").message


def test_template_dropping_system_messages_is_flagged():
    report = check_template(make_tiny_tokenizer(DROPS_SYSTEM))
    assert status(report, "system prompt") == "warn"


def test_truncated_answers_are_counted():
    tokenizer = make_tiny_tokenizer()
    long_prompt = [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "an answer"}]
    long_answer = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y" * 80}]
    short = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [(f"row {i}", Example(messages=m)) for i, m in enumerate([long_prompt, long_answer, short])]
    report = check_data(tokenizer, rows, max_length=64)
    check = report.get("truncation")
    assert check.status == "warn"
    # The 80-byte prompt fills max_length=64 before the answer starts: dropped. The long answer is cut short.
    assert "1 of 3 rows lose every answer token" in check.message and "1 more are cut short" in check.message
    all_cut = check_data(tokenizer, rows[:1], max_length=64)
    assert status(all_cut, "truncation") == "fatal"


def test_special_tokens_inside_text_are_flagged():
    rows = [("row 1", Example(messages=[{"role": "user", "content": "say <|im_end|> please"},
                                         {"role": "assistant", "content": "ok then"}]))]
    report = check_data(make_tiny_tokenizer(), rows)
    assert status(report, "special tokens in text") == "warn"


def test_trained_share_by_value():
    tokenizer = make_tiny_tokenizer()
    rows = [("row 1", Example(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc"}]))]
    report = check_data(tokenizer, rows)
    # "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nabc<|im_end|>\n": 1+5+1+1+1 + 1+10+3+1+1 = 25 tokens;
    # trained: "abc" and "<|im_end|>" = 4 tokens.
    assert "4 of 25 tokens are trained (16.0%)" in report.get("trained share").message


def test_preflight_refuses_fatal_and_passes_good(tmp_path):
    from affinage.config import DataConfig

    preflight(make_tiny_tokenizer(), DataConfig(train=["x"]))  # no exception
    with pytest.raises(DataError, match="eos trained"):
        preflight(make_tiny_tokenizer(NO_EOS_TEMPLATE), DataConfig(train=["x"]))


def test_doctor_end_to_end_and_mask_rendering(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Where is the FAQ?"},
                          {"role": "assistant", "content": "On the home page."}]}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report, tokenizer = doctor(str(tiny_model_dir), [str(data)], max_length=256)
    assert not report.fatal
    where, text, example = report.examples[0]
    rendered = render_mask(tokenizer, text, example, where)
    trained = "".join(rendered.plain[s.start:s.end] for s in rendered.spans if "green" in str(s.style))
    assert trained == "On the home page.<|im_end|>"  # exactly the answer and its end of turn


def test_saved_template_mismatch_is_fatal(tmp_path, tiny_tokenizer):
    import yaml

    from affinage.testing import make_tiny_model

    config = make_tiny_model(tiny_tokenizer).config
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    tiny_tokenizer.save_pretrained(run / "final")
    config.save_pretrained(run / "final")
    base = tmp_path / "base"
    make_tiny_tokenizer(NO_EOS_TEMPLATE).save_pretrained(base)  # the base model's template differs
    config.save_pretrained(base)
    (run / "config.yaml").write_text(yaml.safe_dump({"stage": "sft", "model": {"name": str(base)},
                                                     "data": {"train": ["x.jsonl"]}}))
    from affinage.doctor import check_saved_template

    report = DoctorReport()
    check_saved_template(run / "final", report)
    assert status(report, "saved template") == "fatal"
    tiny_tokenizer.save_pretrained(base)  # now the base has the same template as the saved one
    report = DoctorReport()
    check_saved_template(run / "final", report)
    assert status(report, "saved template") == "ok"
