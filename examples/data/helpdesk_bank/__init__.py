"""Content bank for the Calcul Alpin helpdesk dataset (pure data, one module per language and category).

Each module defines ``LANG``, ``CATEGORY`` and ``INTENTS``: a list of dicts with keys
``intent``, ``questions`` (user paraphrases), ``answers`` (answer variants) and optionally
``followups`` (a chain of ``{"q": [...], "a": [...]}`` steps). ``{slot}`` placeholders are
filled by ``examples/data/make_helpdesk.py``.
"""
