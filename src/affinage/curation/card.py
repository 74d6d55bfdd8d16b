"""The data card: what went in, what came out, what each step removed and why, as Markdown and HTML.

``card.md`` holds the tables; ``card.html`` is one self-contained file with the same tables and the
plots (length histograms, shares of each source before and after mixing, removals per step) embedded
as base64 PNG, drawn with matplotlib when the ``report`` extra is installed.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from affinage.curation.stats import CurationStats
from affinage.utils.fs import atomic_write_text


@dataclass
class _Card:
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        if not items:
            return
        self.md.append("\n".join(f"- {_md_cell(i)}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, headers: list[str], rows: list[list[object]]) -> None:
        if not rows:
            self.para("(none)")
            return
        cells = [[_fmt(c) for c in row] for row in rows]
        self.md.append("| " + " | ".join(headers) + " |")
        self.md.append("|" + "|".join("---" for _ in headers) + "|")
        self.md.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells)
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, png: bytes | None, alt: str) -> None:
        if png is None:
            return
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/></figure>')


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if 0 <= value <= 1 else f"{value:,.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def build_card(stats: CurationStats, title: str = "Data card") -> tuple[str, str]:
    """The card as ``(markdown, html)``."""
    card = _Card()
    card.heading(title, 1)
    card.para(
        f"{stats.rows_read:,} rows read from {len(stats.sources)} source(s)"
        + (f", {stats.skipped_total:,} unreadable rows or files skipped" if stats.skipped_total else "")
        + f"; {stats.rows_kept:,} kept by the {len(stats.steps)} step(s); written: {stats.train_rows:,} training "
        f"rows after mixing and {stats.validation_rows:,} validation rows. Lengths are in {stats.unit}. "
        f"Took {stats.seconds:.1f} s ({stats.rows_read / max(stats.seconds, 1e-9):,.0f} rows/s)."
    )
    if stats.warnings:
        card.heading("Warnings")
        card.bullets(stats.warnings)

    card.heading("Sources")
    shares = stats.shares()
    card.table(
        ["source", "path", "read", "skipped", "removed", "kept", "train", "validation", "mixing", "train after mixing",
         "target share", "share before", "share after"],
        [
            [s.name, s.path, s.rows_read, s.skipped.total(), s.dropped, s.kept, s.train, s.validation, s.mixing,
             s.mixed, _pct(s.target_share), _pct(shares[n]["before"]), _pct(shares[n]["after"])]
            for n, s in stats.sources.items()
        ],
    )
    card.para(
        "Shares are of the training split. Validation rows are chosen by a stable hash of their content "
        "before mixing and are written once each, so a row never moves between splits as data is added."
    )
    card.image(_plot_shares(stats), "share of each source before and after mixing")

    card.heading("Steps")
    card.table(
        ["step", "rows in", "removed", "rows out", "why removed", "changed (not removed)", "seconds"],
        [
            [st.name, st.rows_in, st.dropped.total(), st.rows_out,
             "; ".join(f"{r}: {n:,}" for r, n in st.dropped.most_common()) or "-",
             "; ".join(f"{k}: {n:,}" for k, n in st.changes.most_common()) or "-", f"{st.seconds:.2f}"]
            for st in stats.steps
        ],
    )
    card.image(_plot_steps(stats), "rows removed by each step")
    names = list(stats.sources)
    card.heading("Removed per source", 3)
    card.table(["step", *names], [[st.name, *(st.dropped_by_source.get(n, 0) for n in names)] for st in stats.steps])
    details = [f"{st.name}: {st.options}" + (f" ({_details(st.details)})" if st.details else "") for st in stats.steps]
    card.heading("Step options", 3)
    card.bullets(details)

    card.heading("Languages")
    card.para("Language of each row as known when it left the pipeline: identified by the language step, "
              "else declared by the row or its source (unknown when neither).")
    languages = stats.languages()
    step_names = [st.name for st in stats.steps if st.dropped_by_language]
    card.table(
        ["language", "rows in", *[f"removed by {n}" for n in step_names], "kept"],
        [[lang, c.get("in", 0), *(c.get(n, 0) for n in step_names), c.get("kept", 0)] for lang, c in languages.items()],
    )

    card.heading("Lengths")
    labels = stats.length_in.labels()
    card.table(
        [stats.unit, "input rows", "training rows (after mixing)", "validation rows"],
        [
            [label, a, b, c]
            for label, a, b, c in zip(labels, stats.length_in.counts, stats.length_train.counts,
                                      stats.length_validation.counts, strict=True)
            if a or b or c
        ],
    )
    card.para(
        f"Mean length: input {stats.length_in.mean:,.1f}, training {stats.length_train.mean:,.1f} {stats.unit}; "
        f"longest input {stats.length_in.max or 0:,}, longest training row {stats.length_train.max or 0:,}."
    )
    card.image(_plot_lengths(stats), "length histograms")

    card.heading("Examples of removed rows")
    for st in stats.steps:
        for reason, examples in st.examples.items():
            card.heading(f"{st.name}: {reason}", 3)
            card.bullets(examples)
    if stats.skips:
        card.heading("Skipped input")
        card.para(f"{stats.skipped_total:,} rows or files could not be read and were skipped (on_error: skip); "
                  f"the first {len(stats.skips)}:")
        card.bullets([s["message"] for s in stats.skips])
    if stats.outputs:
        card.heading("Files")
        card.bullets([f"{k}: {v}" for k, v in stats.outputs.items()])
    if not _matplotlib_available():
        card.para("Plots need matplotlib: pip install 'affinage[report]'.")

    style = (
        "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;"
        "text-align:left;vertical-align:top;font-size:.9rem}th{background:#f3f3f3}img{max-width:100%}"
        "li{margin:.2rem 0;font-size:.9rem}"
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(card.html)}</body></html>\n"
    )
    return "\n".join(card.md) + "\n", page


def write_card(stats: CurationStats, folder: Path, title: str = "Data card") -> None:
    markdown, page = build_card(stats, title)
    atomic_write_text(Path(folder) / "card.md", markdown)
    atomic_write_text(Path(folder) / "card.html", page)


def _details(details: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in details.items())


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to PNG in memory
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    _figure().close(fig)
    return buffer.getvalue()


def _plot_lengths(stats: CurationStats) -> bytes | None:
    if not _matplotlib_available() or not stats.length_in.total:
        return None
    plt = _figure()
    labels = stats.length_in.labels()
    used = [i for i in range(len(labels)) if stats.length_in.counts[i] or stats.length_train.counts[i]]
    lo, hi = used[0], used[-1] + 1
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = range(hi - lo)
    width = 0.4
    ax.bar([x - width / 2 for x in xs], stats.length_in.counts[lo:hi], width, label="input")
    ax.bar([x + width / 2 for x in xs], stats.length_train.counts[lo:hi], width, label="training (after mixing)")
    ax.set_xticks(list(xs), labels[lo:hi], rotation=30)
    ax.set_xlabel(stats.unit)
    ax.set_ylabel("rows")
    ax.set_title("Length histogram")
    ax.legend()
    return _png(fig)


def _plot_shares(stats: CurationStats) -> bytes | None:
    if not _matplotlib_available() or not stats.sources:
        return None
    plt = _figure()
    shares = stats.shares()
    names = list(shares)
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(names)))
    ys = range(len(names))
    h = 0.4
    ax.barh([y - h / 2 for y in ys], [100 * shares[n]["before"] for n in names], h, label="before mixing")
    ax.barh([y + h / 2 for y in ys], [100 * shares[n]["after"] for n in names], h, label="after mixing")
    for y, n in zip(ys, names, strict=True):
        target = shares[n]["target"]
        if target is not None:
            ax.plot([100 * target] * 2, [y - 0.45, y + 0.45], color="black", linewidth=1.5)
    ax.set_yticks(list(ys), names)
    has_targets = any(shares[n]["target"] is not None for n in names)
    ax.set_xlabel("% of training rows" + (" (black line: target share)" if has_targets else ""))
    ax.set_title("Share of each source")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.5 / (1 + len(names))), ncol=2, frameon=False)
    return _png(fig)


def _plot_steps(stats: CurationStats) -> bytes | None:
    if not _matplotlib_available() or not stats.steps:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.4 * len(stats.steps)))
    names = [st.name for st in stats.steps]
    ax.barh(names, [st.dropped.total() for st in stats.steps], color="#c0504d")
    ax.invert_yaxis()
    ax.set_xlabel("rows removed")
    ax.set_title("Rows removed by each step (in order)")
    return _png(fig)
