"""Models: loading (aliases, local dirs, GGUF, hub), dtype choice, chat templates, peft adapters."""

from affinage.models.adapters import (
    apply_adapter,
    copy_model,
    count_parameters,
    disabled_adapter,
    save_final,
    unwrap_to_base,
)
from affinage.models.loading import (
    BUILTIN_MODELS,
    ModelSource,
    affinage_home,
    default_dtype,
    load_model,
    load_tokenizer,
    model_supports_packing,
    resolve_dtype,
    resolve_model,
    resolve_model_path,
)
from affinage.models.templates import NAMED_TEMPLATES, get_template

__all__ = [
    "BUILTIN_MODELS",
    "NAMED_TEMPLATES",
    "ModelSource",
    "affinage_home",
    "apply_adapter",
    "copy_model",
    "count_parameters",
    "default_dtype",
    "disabled_adapter",
    "get_template",
    "load_model",
    "load_tokenizer",
    "model_supports_packing",
    "resolve_dtype",
    "resolve_model",
    "resolve_model_path",
    "save_final",
    "unwrap_to_base",
]
