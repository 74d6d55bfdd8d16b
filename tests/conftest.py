"""Shared fixtures: a tiny tokenizer and model built in memory, saved to a local directory on demand."""

from __future__ import annotations

import pytest
import torch

from affinage.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; one thread keeps timings steady on a busy machine.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A Hugging Face directory (safetensors + tokenizer) holding a tiny random Llama model."""
    path = tmp_path / "tiny-model"
    make_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
