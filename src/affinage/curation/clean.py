"""Cleaning: Unicode repair (ftfy) and normalisation, control characters, stray HTML, whitespace.

Cleaning changes rows but removes only those left empty. Code (fenced blocks and inline code) is
never touched by the HTML and whitespace rules: ``<div>`` inside a code answer is content.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from affinage.curation.base import Step, require
from affinage.curation.record import Record, map_prose

# Formatting tags that leak from scraped pages and rich-text editors; a tag outside this list
# (``<EMAIL>``, ``<jobid>``, ``<user>``) is text the answer means.
_HTML_TAGS = (
    "a|abbr|b|big|blockquote|br|center|code|div|em|font|h[1-6]|hr|i|img|li|ol|p|pre|small|span|"
    "strong|sub|sup|table|tbody|td|tfoot|th|thead|tr|tt|u|ul"
)
_TAG = re.compile(rf"</?(?:{_HTML_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_BREAK_TAG = re.compile(r"<br\s*/?>|</(?:p|div|li|h[1-6]|tr|blockquote)>|<hr\s*/?>", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:[A-Za-z]{2,8}|#\d{2,5}|#x[0-9A-Fa-f]{2,4});")
# C0 and C1 controls except tab and newline, DEL, zero-width space, word joiner, BOM, soft hyphen.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff\u00ad]")
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


@dataclass
class CleanOptions:
    fix_unicode: bool = True
    """Repair mojibake (``Ã©`` -> ``é``) and other encoding damage with ftfy."""
    normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_html: bool = True
    """Remove formatting tags (``<br>``, ``<p>``, ``<span ...>``) and decode entities (``&amp;``) outside code."""
    remove_control: bool = True
    normalize_whitespace: bool = True
    """CRLF -> LF, odd spaces -> space, no trailing spaces, at most one blank line, trimmed ends."""


class CleanStep(Step):
    name = "clean"

    def __init__(self, options: CleanOptions, context) -> None:
        super().__init__(options, context)
        self._ftfy = require("ftfy", "curation", "the clean step's fix_unicode") if options.fix_unicode else None

    def __call__(self, record: Record) -> str | None:
        for kind, fn in self._passes():
            if record.map_contents(fn):
                self.changes[kind] += 1
        if any(not c.strip() for c in record.contents()):
            return "empty after cleaning"
        return None

    def _passes(self):
        o = self.options
        if self._ftfy is not None:
            yield "unicode repaired", self._fix_unicode
        if o.normalization != "none":
            yield f"{o.normalization} normalised", lambda t: unicodedata.normalize(o.normalization, t)
        if o.remove_control:
            yield "control characters removed", lambda t: _CONTROL.sub("", t)
        if o.strip_html:
            yield "HTML removed", lambda t: map_prose(t, strip_html)
        if o.normalize_whitespace:
            yield "whitespace normalised", normalize_whitespace

    def _fix_unicode(self, text: str) -> str:
        # Curly quotes and French guillemets are content, not damage; normalisation is its own pass.
        return self._ftfy.fix_text(text, uncurl_quotes=False, normalization=None, unescape_html=False)


def strip_html(text: str) -> str:
    """Drop formatting tags (line-breaking ones become newlines) and decode HTML entities."""
    if "<" in text:
        text = _BREAK_TAG.sub("\n", text)
        text = _TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    return text


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ODD_SPACE.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()
