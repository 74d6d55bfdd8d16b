"""Typed configuration: dataclasses, YAML files that mirror them, dotted overrides, strict validation.

The dataclasses are the single source of truth. ``load_config(SFTConfig, "sft.yaml", ["train.lr=1e-4"])``
reads the YAML, applies the overrides, converts every value to its declared type and runs
``validate()``. An unknown key, a wrong type or an impossible combination raises
:class:`~affinage.errors.ConfigError` naming the key and the valid choices, before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from affinage.errors import ConfigError

DType = Literal["auto", "float32", "bfloat16", "float16"]
AdapterMethod = Literal["full", "lora", "dora", "prompt_tuning", "freeze"]
DataFormat = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]
Scheduler = Literal["cosine", "linear", "constant"]
Tracker = Literal["tensorboard", "mlflow"]


@dataclass
class ModelConfig:
    """Which model to start from and how to load it."""

    name: str = "smollm2-135m-instruct"
    """A built-in alias, a local Hugging Face directory, a ``.gguf`` file or a hub id."""
    dtype: DType = "auto"
    """``auto`` picks fp32 on CPUs without native bf16 and bf16 on GPUs that support it."""
    chat_template: str | None = None
    """A named template (``chatml``, ``llama3``, ``mistral``...) or a Jinja string, for base models."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``name`` is a hub id."""
    trust_remote_code: bool = False
    """Run modelling code shipped with a hub model. Off by default: it executes downloaded code."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel; ``sdpa`` works everywhere, ``flash_attention_2`` needs the package and a GPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""


@dataclass
class AdapterConfig:
    """What is trained: all weights, a peft adapter, soft prompts, or chosen layers."""

    method: AdapterMethod = "lora"
    """``full`` (all weights), ``lora``, ``dora``, ``prompt_tuning`` or ``freeze`` (chosen layers only)."""
    r: int = 16
    """LoRA/DoRA rank."""
    alpha: int = 32
    """LoRA/DoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA/DoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names for LoRA/DoRA; ``all-linear`` targets every linear layer except the output head."""
    num_virtual_tokens: int = 20
    """Prompt tuning: number of soft-prompt vectors."""
    prompt_init_text: str | None = None
    """Prompt tuning: initialise the soft prompt from the embeddings of this text."""
    trainable: list[str] = field(default_factory=list)
    """Freeze: regular expressions on parameter names that stay trainable (everything else is frozen)."""
    merge: bool = True
    """Merge LoRA/DoRA into the weights of ``final/`` (the adapter is saved beside it either way)."""


@dataclass
class DataConfig:
    """Where the training data comes from and how it becomes token ids and loss masks."""

    train: list[str] = field(default_factory=list)
    """Files (JSONL, JSON, CSV, Parquet) or saved Hugging Face dataset directories."""
    validation: list[str] = field(default_factory=list)
    """Held-out files for evaluation loss and perplexity."""
    validation_fraction: float = 0.0
    """When no validation files are given, hold out this fraction of train (by a stable hash)."""
    format: DataFormat = "auto"
    """Row format: ``messages``, ``sharegpt``, ``alpaca``, ``prompt_completion``, ``text``, or detected."""
    max_length: int = 1024
    """Longest example in tokens; longer ones are truncated (and dropped if nothing trainable is left)."""
    train_on_prompt: bool = False
    """Also train on system and user tokens (assistant-only loss masking off)."""
    packing: Literal["auto", "on", "off"] = "auto"
    """Padding-free packing: ``auto`` turns it on where the model supports it."""
    system_prompt: str | None = None
    """Added as the first message of conversations that have none."""
    max_examples: int | None = None
    """Use at most this many examples of each split (for quick trials)."""


@dataclass
class TrainConfig:
    """Optimisation: AdamW, the learning-rate schedule, batching and accumulation."""

    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not biases or norms)."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW beta1 and beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    scheduler: Scheduler = "cosine"
    """Decay after warmup: ``cosine``, ``linear`` or ``constant``."""
    warmup_steps: int = 0
    """Linear warmup length in optimizer steps (wins over ``warmup_ratio`` when set)."""
    warmup_ratio: float = 0.0
    """Linear warmup length as a fraction of all steps."""
    min_lr_ratio: float = 0.0
    """Learning rate at the end of the decay, as a fraction of the peak."""
    epochs: float = 1.0
    """Passes over the training set (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 4
    """Examples per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step; the loss is normalised by the global token count."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this value (null: no clipping; the norm is logged either way)."""
    seed: int = 42
    """Seed of the data order and of every random number generator."""


@dataclass
class RunConfig:
    """The run directory, logging, checkpointing and resuming."""

    output_dir: str = "runs/sft"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    log_every: int = 1
    """Write a metrics row every N optimizer steps."""
    eval_every: int | None = None
    """Evaluate on the validation split every N steps (and always at the end)."""
    save_every: int | None = None
    """Write a checkpoint every N steps (and always at the end of training)."""
    keep_last: int = 2
    """How many checkpoints to keep (the oldest are deleted)."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir (model, optimizer, schedule, data position, RNG)."""
    report_to: list[Tracker] = field(default_factory=list)
    """Also log to ``tensorboard`` (output_dir/tensorboard) and/or ``mlflow``."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning: ``affinage sft CONFIG.yaml``."""

    stage: Literal["sft"] = "sft"
    """Which verb this config is for; guards against running a config with the wrong command."""
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    samples: list[str] = field(default_factory=list)
    """Prompts answered before and after training, printed side by side and saved to samples.jsonl."""
    sample_max_new_tokens: int = 96
    """Longest sample answer, in tokens."""

    def validate(self) -> None:
        t, d, a, r = self.train, self.data, self.adapter, self.run
        _check(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
        _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}")
        _check(t.grad_accum >= 1, "train.grad_accum", f"must be at least 1, got {t.grad_accum}")
        _check(t.epochs > 0 or t.max_steps, "train.epochs", "must be positive (or set train.max_steps)")
        _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be at least 1")
        _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
        _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _check(len(t.adam_betas) == 2, "train.adam_betas", "must hold two numbers, e.g. [0.9, 0.999]")
        _check(t.max_grad_norm is None or t.max_grad_norm > 0, "train.max_grad_norm", "must be positive or null")
        _check(bool(d.train), "data.train", "needs at least one file, e.g. data.train=[examples/data/helpdesk/train.jsonl]")
        _check(d.max_length >= 8, "data.max_length", f"must be at least 8, got {d.max_length}")
        _check(0 <= d.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")
        _check(
            not (d.validation and d.validation_fraction),
            "data.validation_fraction",
            "cannot be combined with data.validation files; use one or the other",
        )
        _check(a.r >= 1, "adapter.r", "must be at least 1")
        _check(a.num_virtual_tokens >= 1, "adapter.num_virtual_tokens", "must be at least 1")
        _check(
            a.method != "freeze" or bool(a.trainable),
            "adapter.trainable",
            "method 'freeze' needs patterns of the parameters to train, e.g. ['layers\\.2[89]\\.', 'norm']",
        )
        _check(
            not (a.method == "prompt_tuning" and d.packing == "on"),
            "data.packing",
            "cannot be 'on' with adapter.method=prompt_tuning (soft prompts are prepended to each row); use 'off' or 'auto'",
        )
        _check(r.keep_last >= 1, "run.keep_last", "must be at least 1")
        _check(r.log_every >= 1, "run.log_every", "must be at least 1")
        _check(r.eval_every is None or r.eval_every >= 1, "run.eval_every", "must be at least 1 or null")
        _check(r.save_every is None or r.save_every >= 1, "run.save_every", "must be at least 1 or null")


# stage name -> "module:ClassName" of its config dataclass (imported lazily: stages live in their
# own modules and reuse the sections above).
STAGE_CONFIGS: dict[str, str] = {
    "sft": "affinage.config:SFTConfig",
    "sweep": "affinage.planning.sweep:SweepConfig",
    "curate": "affinage.curation.config:CurateConfig",
    "eval": "affinage.evaluation.evaluate:EvalConfig", "report": "affinage.evaluation.report:ReportConfig", "export": "affinage.pipeline_stages:ExportStageConfig", "pipeline": "affinage.pipeline:PipelineConfig",
    "dpo": "affinage.recipes.dpo:DPOConfig", "rm": "affinage.recipes.reward:RewardConfig",
    "ppo": "affinage.recipes.ppo:PPOConfig", "grpo": "affinage.recipes.grpo:GRPOConfig", "sample_best": "affinage.recipes.sample_best:SampleBestConfig",
    "safety_classifier": "affinage.safety.training:ClassifierTrainConfig", "safety_eval": "affinage.safety.evaluate:SafetyEvalConfig", "redteam": "affinage.safety.redteam:RedTeamConfig", "constitutional": "affinage.safety.constitution:ConstitutionConfig", "guard": "affinage.safety.guard:GuardConfig",
}


def stage_config_class(stage: str) -> type:
    import importlib

    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"'stage' must be one of {', '.join(STAGE_CONFIGS)}; got {stage!r}")
    module, _, name = STAGE_CONFIGS[stage].partition(":")
    return getattr(importlib.import_module(module), name)


def config_class_for(path: str | Path) -> type:
    """The config class a YAML file is written for, from its ``stage`` key (default ``sft``)."""
    stage = read_yaml(path).get("stage", "sft")
    try:
        return stage_config_class(stage)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check(condition: Any, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}' {message}")


# ----------------------------------------------------------------------------------------------
# Loading, overriding and converting
# ----------------------------------------------------------------------------------------------

C = TypeVar("C")


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build a validated ``cls`` from a YAML file and ``a.b=value`` overrides (YAML values)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return validated(cls, raw)


def validated(cls: type[C], raw: dict[str, Any]) -> C:
    """``cls`` built from ``raw``, then checked by its ``validate()`` where it has one."""
    config = from_dict(cls, raw)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values at the top, not {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``train.lr=1e-4`` -> ("train.lr", 0.0001); values are parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like key.subkey=value (e.g. train.lr=1e-4)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def build_run_config(config_class: type, raw: dict[str, Any], *, output_key: str, output_dir: str | Path,
                     resume_key: str | None = None, resume: bool = False) -> Any:
    """A stage config from its raw mapping, writing into ``output_dir`` (and resuming if asked):
    what the pipeline and the sweep do for each stage or trial. Validated; ``raw`` is changed."""
    set_dotted(raw, output_key, str(output_dir))
    if resume_key:
        set_dotted(raw, resume_key, resume)
    return validated(config_class, raw)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[C], raw: Any, prefix: str = "") -> C:
    """Convert a nested mapping into the dataclass ``cls``, failing on unknown keys and bad types."""
    if not isinstance(raw, dict):
        where = f"'{prefix}'" if prefix else "the config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {_describe(raw)}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            valid = ", ".join(names)
            raise ConfigError(f"unknown config key '{full}'.{hint} Valid keys here: {valid}")
        kwargs[key] = _convert(hints[key], value, full)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key '{key}' got {_describe(value)}: {'; '.join(errors)}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
            # YAML reads `on`/`off` as booleans; map them back for string choices.
            value = {True: "on", False: "off"}[value]
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
            )
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]  # a single value is a list of one
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {_describe(value)}")
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {_describe(value)}")
        _, val_tp = get_args(tp)
        return {str(k): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, list | dict):
            raise ConfigError(f"config key '{key}' must be a string, got {_describe(value)}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} for '{key}'")  # a bug in a dataclass, not user error


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def config_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, for docs and error messages."""
    keys = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(config_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    import ast
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def commented_yaml(config: Any, indent: int = 0) -> str:
    """YAML of a config with each field's documentation as a comment above it."""
    lines: list[str] = []
    pad = "  " * indent
    cls_doc = (type(config).__doc__ or "").strip().splitlines()
    if indent == 0 and cls_doc:
        lines.append(f"# {cls_doc[0]}")
    docs = field_docs(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in docs:
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            sub_doc = (type(value).__doc__ or "").strip().splitlines()
            lines.append(f"{pad}{f.name}:" + (f"  # {sub_doc[0]}" if sub_doc else ""))
            lines.append(commented_yaml(value, indent + 1))
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, allow_unicode=True).strip()
            lines.append(f"{pad}{dumped.strip('{}')}")
    return "\n".join(lines)
