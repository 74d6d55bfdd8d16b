"""Evaluation: metrics and judges (``metrics``), the ``eval`` stage (``evaluate``), the bridge to
lm-evaluation-harness (``lm_eval_bridge``) and the HTML/Markdown report (``report``).

Submodules import torch and transformers only inside the functions that need a model, so
``affinage report`` and the pure metric functions stay light.
"""
