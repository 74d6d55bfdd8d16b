"""Train a safety classifier: ``affinage safety train-classifier CONFIG.yaml``.

A chat model becomes an ``AutoModelForSequenceClassification`` with ``1 + K`` outputs (unsafe, and
the K categories of the taxonomy; see :mod:`affinage.losses.safety`), fine-tuned on labelled
prompts and answers (``{"prompt", "response"?, "label", "category"?, "language"?}`` rows, or
``messages``). The decision threshold is then chosen on the validation data for a target precision
or recall (:func:`affinage.safety.metrics.choose_threshold`), and the run reports precision, recall,
F1 and AUPRC overall, per category and per language, with the confusion table, on validation and
on the held-out test files.

What trains is ``adapter`` as for SFT: ``freeze`` with no pattern (the default) trains the
classification head alone on the frozen model, a linear probe; ``lora`` or ``full`` fine-tune the
model too. When nothing but the head trains, the model's pooled features (the last token's final
hidden state, as ``*ForSequenceClassification`` pools) are computed once and the head is trained on
them: the same logits and gradients as running the model at every step, at the cost of one forward
pass over the data. ``num_layers`` keeps only the first N transformer layers, a smaller and faster
classifier (intermediate layers often classify as well as the last one).

Layout of ``run.output_dir``::

    config.yaml  metrics.jsonl  report.json
    final/       config.json, model.safetensors, tokenizer files, safety_classifier.json

``final/`` loads with ``AutoModelForSequenceClassification.from_pretrained`` and with
:meth:`affinage.safety.classifiers.TrainedClassifier.load` (which also reads the threshold).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import AdapterConfig, ModelConfig, TrainConfig, _check, to_dict
from affinage.errors import ConfigError, DataError, ModelError
from affinage.losses.safety import NO_CATEGORY, safety_classifier_loss
from affinage.safety.classifiers import (
    CLASSIFIER_META,
    TrainedClassifier,
    classifier_input,
    conversation_text,
    judged_role,
    row_conversation,
    row_gold,
)
from affinage.safety.metrics import Record, choose_threshold, classification_report, format_report
from affinage.safety.taxonomy import Taxonomy


@dataclass
class ClassifierDataConfig:
    train: list[str] = field(default_factory=list)
    """Labelled rows: ``prompt`` (+ ``response``) or ``messages``, ``label`` safe/unsafe, ``category``."""
    validation: list[str] = field(default_factory=list)
    validation_fraction: float = 0.2
    """Without validation files, hold out this fraction of train, grouped by the rows' ``id``
    (every language and answer of one request go to the same side)."""
    test: list[str] = field(default_factory=list)
    """Held-out files evaluated once at the end with the chosen threshold."""
    roles: list[Literal["prompt", "response"]] = field(default_factory=lambda: ["prompt", "response"])
    """Keep rows that judge a user prompt, an assistant answer, or both."""
    max_length: int = 256
    """Tokens per conversation; longer ones keep their end (the judged message)."""
    max_examples: int | None = None


@dataclass
class ClassifierAdapterConfig(AdapterConfig):
    """As for SFT, but ``freeze`` by default: with no pattern, only the classification head trains."""

    method: Literal["full", "lora", "dora", "prompt_tuning", "freeze"] = "freeze"


@dataclass
class ClassifierRunConfig:
    output_dir: str = "runs/safety_classifier"
    log_every: int = 10
    eval_every: int | None = None
    report_to: list[Literal["tensorboard", "mlflow"]] = field(default_factory=list)
    progress: bool = True


@dataclass
class ClassifierTrainConfig:
    """Safety classifier training: ``affinage safety train-classifier CONFIG.yaml``."""

    stage: Literal["safety_classifier"] = "safety_classifier"
    model: ModelConfig = field(default_factory=ModelConfig)
    num_layers: int | None = None
    """Keep only the first N transformer layers of the model (None: all)."""
    adapter: ClassifierAdapterConfig = field(default_factory=ClassifierAdapterConfig)
    """What trains besides the head (always trained): ``freeze`` with no pattern trains the head alone;
    ``freeze`` with patterns on the last layers trains them on cached hidden states of the others."""
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=30, batch_size=32))
    run: ClassifierRunConfig = field(default_factory=ClassifierRunConfig)
    taxonomy: str | None = None
    """Taxonomy YAML file (default: the built-in taxonomy)."""
    include: list[str] = field(default_factory=list)
    """Keep only these categories (empty: all)."""
    target_precision: float | None = None
    """Choose the threshold with the best recall at this precision on validation data."""
    target_recall: float | None = None
    """Or: the best precision at this recall. Neither: the best F1."""
    category_weight: float = 1.0
    """Weight of the category loss against the detection loss."""
    question: str | None = None
    """Ask the model this after the conversation, in its chat template (e.g. "Is the last message
    safe or unsafe?"); the head reads the hidden state where the model would answer. None: the
    conversation lines alone. Saved with the classifier and applied when it classifies."""

    def validate(self) -> None:
        t, d = self.train, self.data
        _check(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
        _check(t.batch_size >= 1, "train.batch_size", "must be at least 1")
        _check(t.grad_accum >= 1, "train.grad_accum", "must be at least 1")
        _check(t.epochs > 0 or t.max_steps, "train.epochs", "must be positive (or set train.max_steps)")
        _check(bool(d.train), "data.train", "needs at least one labelled file, e.g. [examples/data/safety/labelled/train.jsonl]")
        _check(0 <= d.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")
        _check(
            bool(d.validation) or d.validation_fraction > 0, "data.validation",
            "is needed to choose the threshold: give files or a data.validation_fraction > 0",
        )
        _check(bool(d.roles), "data.roles", "must keep at least one of prompt, response")
        _check(d.max_length >= 8, "data.max_length", "must be at least 8")
        _check(self.num_layers is None or self.num_layers >= 1, "num_layers", "must be at least 1 or null")
        for name, value in (("target_precision", self.target_precision), ("target_recall", self.target_recall)):
            _check(value is None or 0 < value <= 1, name, f"must be in (0, 1], got {value}")
        _check(
            self.target_precision is None or self.target_recall is None,
            "target_recall", "cannot be set together with target_precision; choose one target",
        )
        _check(self.category_weight >= 0, "category_weight", "must be >= 0")
        _check(
            self.adapter.method in ("freeze", "lora", "dora", "full"), "adapter.method",
            f"must be freeze, lora, dora or full for a classifier, got {self.adapter.method!r}",
        )
        _check(self.run.log_every >= 1, "run.log_every", "must be at least 1")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class LabelledItem:
    text: str
    """:func:`conversation_text` of the conversation: what the classifier reads."""
    unsafe: bool
    category: str | None
    language: str | None
    role: str
    group: str


def load_labelled(paths: list[str], taxonomy: Taxonomy, roles: list[str] | None = None,
                  require_label: bool = True) -> list[LabelledItem]:
    """Read labelled rows from ``paths``; a row without a usable label raises :class:`DataError`."""
    from affinage.data.io import read_rows

    items = []
    for path in paths:
        for number, row in read_rows(path):
            where = f"{path}, row {number}"
            conv = row_conversation(row, where)
            unsafe, category = row_gold(row, taxonomy, where)
            if unsafe is None:
                if require_label:
                    raise DataError(f'{where}: no "label"; labelled data needs "label": "safe" or "unsafe"')
                unsafe = False
            role = judged_role(conv)
            if roles and role not in roles:
                continue
            text = conversation_text(conv)
            items.append(LabelledItem(text, unsafe, category, row.get("language"), role, str(row.get("id", text))))
    if not items:
        raise DataError(f"no labelled rows in {', '.join(paths)} (after keeping roles {roles})")
    return items


def split_validation(items: list[LabelledItem], fraction: float) -> tuple[list[LabelledItem], list[LabelledItem]]:
    """Hold out ``fraction`` of the groups (request ids) by a stable hash of the group name."""
    from affinage.data.io import stable_fraction

    train = [x for x in items if stable_fraction({"group": x.group}) >= fraction]
    validation = [x for x in items if stable_fraction({"group": x.group}) < fraction]
    if not train or not validation:
        raise DataError(
            f"data.validation_fraction={fraction} leaves {len(train)} training and {len(validation)} validation "
            "rows; give validation files or change the fraction"
        )
    return train, validation


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    # Keep the end of long conversations: the judged message is last.
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [list(x[-max_length:]) for x in ids]


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, : len(r)] = 1
    return input_ids, attention_mask


def targets(items: list[LabelledItem], taxonomy: Taxonomy) -> tuple[torch.Tensor, torch.Tensor]:
    unsafe = torch.tensor([float(x.unsafe) for x in items])  # [N]
    index = {name: k for k, name in enumerate(taxonomy.names)}
    category = torch.tensor([index.get(x.category, NO_CATEGORY) if x.unsafe else NO_CATEGORY for x in items])  # [N]
    return unsafe, category


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def load_sequence_classifier(
    name: str, num_labels: int, *, dtype: torch.dtype, pad_token_id: int, num_layers: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """``AutoModelForSequenceClassification`` from a causal LM (alias, local dir, hub id or .gguf).

    The head is zero-initialised: every score starts at 0.5 and training starts from a symmetric
    point. With ``num_layers`` the model keeps its first N transformer layers only.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from affinage.models.loading import load_model, resolve_model

    source = resolve_model(name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised score.weight" and dropped layers are expected
    try:
        if source.kind == "gguf":
            lm = load_model(name, dtype=dtype)
            config = lm.config
        else:
            config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
        config.num_labels = num_labels
        config.pad_token_id = pad_token_id
        if num_layers is not None:
            total = config.num_hidden_layers
            if num_layers > total:
                raise ConfigError(f"config key 'num_layers' = {num_layers} but {name} has only {total} layers")
            config.num_hidden_layers = num_layers
            if isinstance(getattr(config, "layer_types", None), list):
                config.layer_types = config.layer_types[:num_layers]
        if source.kind == "gguf":
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
            backbone = getattr(model, model.base_model_prefix)
            missing, _unexpected = backbone.load_state_dict(getattr(lm, lm.base_model_prefix).state_dict(), strict=False)
            if missing:
                raise ModelError(f"cannot build a classifier from {name}: missing weights {missing[:3]}")
        else:
            kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "trust_remote_code": trust_remote_code}
            if source.kind != "hub":
                kwargs["use_safetensors"] = any(Path(source.path).glob("*.safetensors")) or None
            try:
                model = AutoModelForSequenceClassification.from_pretrained(source.path, **kwargs)
            except ValueError as exc:
                raise ModelError(
                    f"{name} cannot become a sequence classifier with transformers' "
                    f"AutoModelForSequenceClassification: {exc}"
                ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    with torch.no_grad():
        model.score.weight.zero_()
    model.config.id2label = {0: "unsafe"}
    return model


def _label_names(model: Any, taxonomy: Taxonomy) -> None:
    id2label = {0: "unsafe", **{k + 1: f"category:{n}" for k, n in enumerate(taxonomy.names)}}
    model.config.id2label = id2label
    model.config.label2id = {v: k for k, v in id2label.items()}


@torch.no_grad()  # not inference_mode: the features are inputs of the head's autograd graph later
def pooled_features(backbone: Any, rows: list[list[int]], pad_id: int, batch_size: int, device: torch.device,
                    autocast: Any = contextlib.nullcontext) -> torch.Tensor:
    """Final hidden state at the last non-padding token of each row, ``[N, H]`` (the HF pooling rule)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # similar lengths share a batch
    out: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, attention_mask = right_pad([rows[i] for i in idx], pad_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with autocast():
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        non_pad = (input_ids != pad_id).int()
        last = (torch.arange(input_ids.shape[1], device=device) * non_pad).argmax(-1)  # [B]
        pooled = hidden[torch.arange(len(idx), device=device), last]  # [B, H]
        for i, vec in zip(idx, pooled, strict=True):
            out[i] = vec.cpu()
    return torch.stack(out)  # type: ignore[arg-type]


def _head_only(model: Any) -> bool:
    return all(("score" in n) or not p.requires_grad for n, p in model.named_parameters())


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_FINAL_NORM = re.compile(r"(?:^|\.)norm\.weight$")


def frozen_prefix(model: Any, num_layers: int) -> int:
    """K such that the embeddings and the first K transformer layers have nothing to train.

    K = 0 when the embeddings or the first layer train (LoRA on every layer, full fine-tuning).
    """
    first = num_layers
    for name, param in model.named_parameters():
        if not param.requires_grad or "score" in name or _FINAL_NORM.search(name):
            continue
        m = _LAYER.search(name)
        if m is None:
            return 0  # the embeddings or another early part trains
        first = min(first, int(m.group(1)))
    return first


@contextlib.contextmanager
def layer_slice(backbone: Any, start: int, stop: int, *, final_norm: bool = True) -> Iterator[None]:
    """Run ``backbone`` with only its layers ``start:stop`` (and without its final norm if asked).

    Fed ``inputs_embeds`` = the hidden states after layer ``start - 1``, it computes what layers
    ``start..stop-1`` of the whole model compute: positions, rotary embeddings and the causal mask
    depend on the sequence, not on the layer index. Checked against the full forward before use.
    """
    layers, norm = backbone.layers, backbone.norm
    backbone.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        backbone.norm = torch.nn.Identity()
    try:
        yield
    finally:
        backbone.layers, backbone.norm = layers, norm


def pool_index(row: list[int], pad_id: int) -> int:
    """The position ``*ForSequenceClassification`` pools: the last token that is not padding."""
    return max((i for i, t in enumerate(row) if t != pad_id), default=len(row) - 1)


@torch.no_grad()
def prefix_states(backbone: Any, rows: list[list[int]], pad_id: int, k: int, batch_size: int,
                  device: torch.device, autocast: Any = contextlib.nullcontext) -> list[torch.Tensor]:
    """Hidden states after the first ``k`` layers, one ``[T_i, H]`` tensor per row (no padding)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    with layer_slice(backbone, 0, k, final_norm=False), autocast():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, attention_mask = right_pad([rows[i] for i in idx], pad_id)
            hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
            for j, i in enumerate(idx):
                out[i] = hidden[j, : len(rows[i])].cpu()
    return out  # type: ignore[return-value]


def top_logits(backbone: Any, head: Any, states: list[torch.Tensor], pools: list[int], k: int,
               device: torch.device) -> torch.Tensor:
    """Logits from cached states after layer ``k``: layers ``k..N-1``, the final norm, the pooled head."""
    width = max(s.shape[0] for s in states)
    x = torch.zeros((len(states), width, states[0].shape[1]), dtype=states[0].dtype)  # [B, T, H]
    mask = torch.zeros((len(states), width), dtype=torch.long)  # [B, T]
    for i, s in enumerate(states):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    with layer_slice(backbone, k, len(backbone.layers)):
        hidden = backbone(inputs_embeds=x.to(device), attention_mask=mask.to(device)).last_hidden_state  # [B, T, H]
    pooled = hidden[torch.arange(len(states), device=device), torch.tensor(pools, device=device)]  # [B, H]
    return head(pooled.to(head.weight.dtype))


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------


def train_classifier(cfg: ClassifierTrainConfig) -> Path:
    """Train, choose the threshold, report and save; return the ``final/`` directory."""
    from transformers.utils import logging as hf_logging

    from affinage.engine.batching import BatchPlan
    from affinage.engine.metrics import MetricLogger
    from affinage.engine.optim import build_optimizer, build_scheduler
    from affinage.engine.progress import console, progress_bar
    from affinage.engine.runtime import make_accelerator, seed_everything
    from affinage.models.adapters import count_parameters
    from affinage.models.loading import load_tokenizer, resolve_dtype
    from affinage.recipes.reward import apply_reward_adapter
    from affinage.utils.fs import atomic_directory, atomic_write_text

    # ---------------------------------------------------------------- setup
    hf_logging.disable_progress_bar()
    out = Path(cfg.run.output_dir)
    if (out / "metrics.jsonl").exists():
        raise ConfigError(
            f"run.output_dir '{out}' already holds a run (metrics.jsonl); choose another run.output_dir"
        )
    taxonomy = Taxonomy.from_settings(cfg.taxonomy, cfg.include or None)
    d = cfg.data
    items = load_labelled(d.train, taxonomy, d.roles)
    if d.validation:
        train_items, val_items = items, load_labelled(d.validation, taxonomy, d.roles)
    else:
        train_items, val_items = split_validation(items, d.validation_fraction)
    if d.max_examples:
        train_items = train_items[: d.max_examples]
    test_items = load_labelled(d.test, taxonomy, d.roles) if d.test else []
    if not any(x.unsafe for x in val_items):
        raise DataError("the validation data holds no unsafe example, so no threshold can be chosen")

    from affinage.config import dump_yaml

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    seed_everything(cfg.train.seed)
    accelerator = make_accelerator()
    device = accelerator.device
    show = cfg.run.progress

    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template,
                               revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.truncation_side = "left"
    pad_id = tokenizer.pad_token_id
    dtype = resolve_dtype(cfg.model.dtype, device)
    # As in SFT: fp32 master weights under autocast for full/freeze (bf16 weights would round away
    # most small AdamW updates), frozen weights in the compute dtype under adapters.
    weights_dtype = torch.float32 if cfg.adapter.method in ("full", "freeze") else dtype
    model = load_sequence_classifier(
        cfg.model.name, 1 + len(taxonomy), dtype=weights_dtype, pad_token_id=pad_id,
        num_layers=cfg.num_layers, trust_remote_code=cfg.model.trust_remote_code,
    )
    _label_names(model, taxonomy)
    # The reward-model recipe's adapter rules fit any sequence classifier: LoRA as SEQ_CLS with the
    # head in modules_to_save, ``freeze`` patterns on top of the always-trained head.
    model = apply_reward_adapter(model, cfg.adapter, gradient_checkpointing=cfg.model.gradient_checkpointing)
    probe = _head_only(model)  # the head alone trains, on cached features
    model.to(device)
    trainable, total = count_parameters(model)
    console.print(
        f"[bold]safety classifier[/] {cfg.model.name} ({dtype}, {device}) layers="
        f"{model.config.num_hidden_layers} adapter={cfg.adapter.method} trainable={trainable:,}/{total:,} "
        f"{'(linear probe on cached features)' if probe else ''}\n"
        f"  train {len(train_items)} rows ({sum(x.unsafe for x in train_items)} unsafe), validation "
        f"{len(val_items)}, test {len(test_items)}; categories: {', '.join(taxonomy.names)}"
    )

    def inputs(items: list[LabelledItem]) -> list[str]:
        return [classifier_input(x.text, tokenizer, cfg.question) for x in items]

    train_ids = encode(tokenizer, inputs(train_items), d.max_length)
    val_ids = encode(tokenizer, inputs(val_items), d.max_length)
    unsafe, category = targets(train_items, taxonomy)
    head = _find_head(model)
    autocast_on = dtype != weights_dtype
    autocast = partial(torch.autocast, device.type, dtype=dtype, enabled=autocast_on)
    backbone = _backbone(model)
    n_layers = len(backbone.layers) if hasattr(backbone, "layers") else 0
    k = frozen_prefix(model, n_layers) if n_layers else 0
    # What runs at each step: the head on cached pooled features (nothing else trains), the top
    # layers on cached hidden states (the first k layers are frozen), or the whole model.
    mode = "pooled" if probe else "sequence" if k > 0 else "full"
    t0 = time.perf_counter()
    if mode == "pooled":
        features = pooled_features(backbone, train_ids, pad_id, cfg.train.batch_size, device, autocast)  # [N, H]
        val_features = pooled_features(backbone, val_ids, pad_id, cfg.train.batch_size, device, autocast)
    elif mode == "sequence":
        states = prefix_states(backbone, train_ids, pad_id, k, cfg.train.batch_size, device, autocast)
        val_states = prefix_states(backbone, val_ids, pad_id, k, cfg.train.batch_size, device, autocast)
        pools = [pool_index(r, pad_id) for r in train_ids]
        val_pools = [pool_index(r, pad_id) for r in val_ids]
        if not _sequence_mode_matches(model, backbone, head, train_ids[:2], states[:2], pools[:2], pad_id, k, device):
            console.print("[yellow]this architecture does not run from cached hidden states; training the whole model[/]")
            mode = "full"
    if mode == "full":
        console.print("  each step runs the whole model (its first layer or its embeddings train)")
    else:
        n_tokens = sum(map(len, train_ids)) + sum(map(len, val_ids))
        what = "pooled features" if mode == "pooled" else f"hidden states after layer {k}"
        console.print(f"  cached {what}: {n_tokens:,} tokens in {time.perf_counter() - t0:.1f} s; "
                      f"each step runs {'the head only' if mode == 'pooled' else f'layers {k}..{n_layers - 1}'}")

    def batch_logits(indices: list[int]) -> torch.Tensor:
        if mode == "pooled":
            return head(features[indices].to(device).float())  # [B, 1 + K]
        if mode == "sequence":
            with autocast():
                return top_logits(backbone, head, [states[i] for i in indices], [pools[i] for i in indices], k, device)
        input_ids, attention_mask = right_pad([train_ids[i] for i in indices], pad_id)
        with autocast():
            return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits

    @torch.no_grad()
    def validation_logits() -> torch.Tensor:
        if mode == "pooled":
            return head(val_features.to(device).float()).cpu()
        if mode == "sequence":
            was_training = model.training
            model.eval()
            with autocast():
                chunks = [top_logits(backbone, head, val_states[i : i + cfg.train.batch_size],
                                     val_pools[i : i + cfg.train.batch_size], k, device).float().cpu()
                          for i in range(0, len(val_states), cfg.train.batch_size)]
            model.train(was_training)
            return torch.cat(chunks)
        return _model_logits(model, val_ids, pad_id, cfg.train.batch_size, device, autocast)

    # ---------------------------------------------------------------- loop
    optimizer = build_optimizer(model, cfg.train)
    plan = BatchPlan(len(train_items), cfg.train.batch_size, cfg.train.grad_accum, 1, cfg.train.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    logger = MetricLogger(out, cfg.run.report_to, run_name=out.name, config=to_dict(cfg))
    val_unsafe, val_category = targets(val_items, taxonomy)

    def log_validation(step: int) -> None:
        logits = validation_logits()
        per_example, m = safety_classifier_loss(logits, val_unsafe, val_category, cfg.category_weight)
        from affinage.safety.metrics import average_precision

        auprc = average_precision([x.unsafe for x in val_items], torch.sigmoid(logits[:, 0]).tolist())
        logger.log({"split": "eval", "step": step, "loss": per_example.mean().item(),
                    "accuracy": m["accuracy"].item(), "auprc": auprc})

    model.train()
    window_start = time.perf_counter()
    with progress_bar("train classifier", total_steps, enabled=show) as bar:
        for step in range(total_steps):
            global_batch = plan.global_batch(step)
            loss_sum = 0.0
            for indices in plan.micro_batches(step, 0):
                logits = batch_logits(indices)
                per_example, m = safety_classifier_loss(
                    logits, unsafe[indices].to(device), category[indices].to(device), cfg.category_weight
                )
                # Mean over the global batch: each micro-batch adds its share.
                loss = per_example.sum() / len(global_batch)
                loss.backward()
                loss_sum += loss.item()
            max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if done % cfg.run.log_every == 0 or done == total_steps:
                now = time.perf_counter()
                logger.log({"split": "train", "step": done, "epoch": round(plan.epoch_of(done), 3), "loss": loss_sum,
                            "accuracy": m["accuracy"].item(), "lr": lr, "grad_norm": float(grad_norm),
                            "elapsed_s": round(now - window_start, 3)})
                bar.update(completed=done, loss=loss_sum)
            if cfg.run.eval_every and done % cfg.run.eval_every == 0 and done < total_steps:
                log_validation(done)
    log_validation(total_steps)
    model.eval()

    # ---------------------------------------------------------------- threshold and reports
    # The threshold is chosen on the logits of the classifier as it is saved (merged, in the
    # compute dtype), so that the saved threshold fits the numbers the saved model gives.
    final_model = _merged(model)
    final_model.to(dtype)
    classifier = TrainedClassifier(final_model, tokenizer, taxonomy, threshold=0.5,
                                   max_length=d.max_length, batch_size=cfg.train.batch_size, question=cfg.question)
    val_logits = classifier.logits_for_texts([x.text for x in val_items])
    val_scores = torch.sigmoid(val_logits[:, 0]).tolist()
    choice = choose_threshold(
        [x.unsafe for x in val_items], val_scores,
        target_precision=cfg.target_precision, target_recall=cfg.target_recall,
    )
    classifier.threshold = choice.threshold
    if not choice.target_met:
        console.print(f"[yellow]warning: no threshold reaches {choice.target} on validation; using the most precise one[/]")
    console.print(
        f"threshold {choice.threshold:.4f} ({choice.target}): validation precision {choice.precision:.3f} "
        f"recall {choice.recall:.3f} F1 {choice.f1:.3f}"
    )
    report: dict[str, Any] = {"threshold": choice.as_dict(), "categories": taxonomy.names}
    for split, split_items in (("validation", val_items), ("test", test_items)):
        if not split_items:
            continue
        if split == "validation":
            judgements = classifier.judge_logits(val_logits)
        else:
            judgements = classifier.judge_logits(classifier.logits_for_texts([x.text for x in split_items]))
        records = [Record(x.unsafe, x.category, x.language, j.label, j.score, j.categories)
                   for x, j in zip(split_items, judgements, strict=True)]
        report[split] = classification_report(records, taxonomy.names)
        console.print(format_report(report[split], title=f"safety classifier, {split}"))
        logger.log({"split": split, "step": total_steps, **{k: report[split]["overall"][k]
                    for k in ("precision", "recall", "f1", "auprc")}})
    logger.close()
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    # ---------------------------------------------------------------- save
    final_dir = out / "final"
    with atomic_directory(final_dir) as tmp:
        final_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "threshold": choice.threshold,
            "threshold_choice": choice.as_dict(),
            "taxonomy": taxonomy.to_rows(),
            "max_length": d.max_length,
            "input_format": "conversation_text: 'User: ...' / 'Agent: ...' lines"
                            + (", then the question in the chat template" if cfg.question else ""),
            "question": cfg.question,
            "base_model": cfg.model.name,
            "num_layers": final_model.config.num_hidden_layers,
        }
        (tmp / CLASSIFIER_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"saved {final_dir}")
    return final_dir


def _find_head(model: Any) -> torch.nn.Linear:
    for name, module in model.named_modules():
        if name.endswith("score") and isinstance(module, torch.nn.Linear):
            return module
        if name.endswith("score.modules_to_save.default") and isinstance(module, torch.nn.Linear):
            return module
    raise ModelError("the classification model has no 'score' head")


def _backbone(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def _merged(model: Any) -> Any:
    """The plain ``*ForSequenceClassification`` model (LoRA merged) in eval mode."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    return model


@torch.inference_mode()
def _model_logits(model, rows, pad_id, batch_size, device, autocast) -> torch.Tensor:
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(rows), batch_size):
        input_ids, attention_mask = right_pad(rows[start : start + batch_size], pad_id)
        with autocast():
            chunks.append(model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def _sequence_mode_matches(model, backbone, head, rows, states, pools, pad_id, k, device) -> bool:
    """Does the top of the model, fed cached states, give the full forward's logits? (Some
    architectures rescale ``inputs_embeds`` inside the model, which would break it.)"""
    was_training = model.training
    model.eval()
    input_ids, attention_mask = right_pad(rows, pad_id)
    full = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
    top = top_logits(backbone, head, states, pools, k, device).float()
    model.train(was_training)
    return bool(torch.allclose(full, top, rtol=1e-3, atol=1e-3 * max(1.0, full.abs().max().item())))
