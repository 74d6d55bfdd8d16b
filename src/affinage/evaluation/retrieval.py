"""A small retrieval index over the user's documents, for retrieval-augmented prompting baselines.

Documents (Markdown, plain text, or data files whose rows hold text or conversations) are cut into
passages (:func:`chunk_documents`), embedded by a static word-embedding model that ships inside a
PyPI package (WordLlama, Miller 2024: token embeddings distilled from a large model's input layer,
mean-pooled; the ``l2_supercat`` 256-dimension weights are in the ``wordllama`` wheel, so nothing is
downloaded at run time), and searched by cosine similarity (:class:`PassageIndex`).

The index is stored beside the run as ``embeddings.npy`` (float32, ``[passages, dim]``, unit rows)
and ``passages.jsonl``, in a folder named by a hash of everything that decides its content (the
files' bytes, the chunking, the embedding model), so a second build with the same inputs reads the
cache and a changed document builds a new index. Loading uses ``np.load(allow_pickle=False)``.

Optional extra ``rag`` (``pip install 'affinage[rag]'``); imported only when an index is built.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from affinage.errors import ConfigError, DataError

TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".rst")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEXT_FIELDS = ("text", "content", "body", "passage", "document")
"""Row fields read as a document's text, in this order, before trying the SFT formats."""
INDEX_FORMAT = 1
"""Bumped when the chunking or the files' layout change, so that older caches are not reused."""


@dataclass(frozen=True)
class Passage:
    """One retrievable piece of a document."""

    text: str
    source: str
    """The file it comes from (as the user named it, or found in a folder)."""
    title: str = ""
    """Markdown: the heading path (``Login > Locked account``); data files: ``row N``."""

    def embedding_text(self) -> str:
        # The heading carries the topic words a short section may not repeat.
        return f"{self.title}\n{self.text}" if self.title else self.text


# ----------------------------------------------------------------------------------------------
# Reading and chunking documents
# ----------------------------------------------------------------------------------------------


def resolve_documents(patterns: Sequence[str], *, where: str = "documents") -> list[Path]:
    """Files named by ``patterns``: files, folders (searched recursively for text and data files) or
    glob patterns; sorted and deduplicated. An entry that matches nothing is an error."""
    found: list[Path] = []
    for i, pattern in enumerate(patterns):
        path = Path(pattern)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + DATA_SUFFIXES)
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise ConfigError(
                f"config key '{where}[{i}]' ({pattern}) matches no file; give a file, a folder of "
                f"{'/'.join(TEXT_SUFFIXES + DATA_SUFFIXES)} files, or a glob pattern"
            )
        found += [m for m in matches if m not in found]
    return found


def read_documents(paths: Sequence[Path]) -> list[tuple[str, str, str]]:
    """``(source, title, text)`` sections of every file: Markdown by heading, text as one section,
    data files one row each (a text field, or a conversation written out turn by turn)."""
    sections: list[tuple[str, str, str]] = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in DATA_SUFFIXES:
            sections += _data_sections(path)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file; give Markdown, text or JSONL documents") from None
        if suffix in (".md", ".markdown"):
            sections += [(str(path), title, body) for title, body in markdown_sections(text)]
        else:
            sections.append((str(path), "", text))
    return [(s, t, b) for s, t, b in sections if b.strip()]


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """Split Markdown at ATX headings (``#`` to ``######``) outside fenced code blocks.

    Each section is ``(heading path, body)``, the path joining the enclosing headings with `` > ``
    (``# Login`` then ``## Locked account`` gives ``Login > Locked account``). Text before the first
    heading has an empty title.
    """
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    lines: list[str] = []
    fence: str | None = None

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append((" > ".join(t for _, t in stack), body))
        lines.clear()

    for line in text.splitlines():
        stripped = line.strip()
        marker = stripped[:3]
        if marker in ("```", "~~~"):
            fence = None if fence == marker else (fence or marker)
        heading = re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line) if fence is None else None
        if heading:
            flush()
            level = len(heading.group(1))
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, heading.group(2).strip())]
        else:
            lines.append(line)
    flush()
    return sections


def _data_sections(path: Path) -> list[tuple[str, str, str]]:
    from affinage.data.formats import to_example
    from affinage.data.io import read_rows

    out = []
    for number, row in read_rows(path):
        where = f"{path}, row {number}"
        text = next((row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
        if text is None:
            try:
                example = to_example(row, "auto", where, require_assistant=False)
            except DataError as exc:
                raise DataError(
                    f"{exc}. A document row needs a text field ({', '.join(TEXT_FIELDS)}) or a conversation"
                ) from None
            text = example.text if example.messages is None else "\n".join(
                f"{m['role']}: {m['content']}" for m in example.messages if m["role"] != "system"
            )
        out.append((str(path), f"row {number}", text))
    return out


def split_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters: whole paragraphs packed together
    while they fit, a longer paragraph cut at sentence ends, a longer sentence at spaces."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        para = para.strip()
        if not para:
            continue
        if len(para) <= max_chars:
            pieces.append(para)
            continue
        for sentence in re.split(r"(?<=[.!?;:])\s+", para):
            while len(sentence) > max_chars:
                cut = sentence.rfind(" ", 0, max_chars + 1)
                cut = cut if cut > 0 else max_chars
                pieces.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if sentence:
                pieces.append(sentence)
    chunks: list[str] = []
    for piece in pieces:
        # Paragraphs join with a blank line, sentences of one paragraph would have read as one: both fit.
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks


def chunk_documents(paths: Sequence[Path], *, chunk_chars: int) -> list[Passage]:
    """Every document section split into passages of at most ``chunk_chars`` characters.

    A section never shares a passage with another one, so a passage keeps one heading."""
    return [
        Passage(text=piece, source=source, title=title)
        for source, title, body in read_documents(paths)
        for piece in split_text(body, chunk_chars)
    ]


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


WORDLLAMA_CONFIG = "l2_supercat"
WORDLLAMA_DIM = 256


@functools.lru_cache(maxsize=1)
def _wordllama() -> Any:
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError:
        raise ConfigError(
            "retrieval-augmented prompting (prompting.mode=rag, or few-shot selection=similar) needs the "
            "embedding model of the 'wordllama' package, which is not installed: pip install 'affinage[rag]'"
        ) from None
    # The wheel holds weights/ and tokenizers/ beside its code; pointing the cache there finds both
    # (its own lookup of the packaged tokenizer uses another folder name and would try the network).
    package = Path(wordllama.__file__).parent
    try:
        return WordLlama.load(WORDLLAMA_CONFIG, dim=WORDLLAMA_DIM, cache_dir=package, disable_download=True)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"the wordllama package has no bundled '{WORDLLAMA_CONFIG}' model ({exc}); reinstall it: "
            "pip install --force-reinstall 'wordllama>=0.4'"
        ) from None


def embedder_id() -> str:
    """Names the embedding model and its version, part of the index's cache key."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("wordllama")
    except PackageNotFoundError:
        ver = "missing"
    return f"wordllama-{ver}/{WORDLLAMA_CONFIG}-{WORDLLAMA_DIM}"


def embed(texts: Sequence[str], *, batch_size: int = 64) -> Any:
    """Unit-length embeddings ``[len(texts), 256]`` (float32) of ``texts``.

    A text with no known token (empty, or only unknown characters) gets the zero vector, which is
    similar to nothing (cosine 0), instead of the NaN a division by its zero norm would give.
    """
    import numpy as np

    model = _wordllama()
    if not texts:
        return np.zeros((0, WORDLLAMA_DIM), dtype=np.float32)
    vectors = np.asarray(model.embed(list(texts), norm=False, batch_size=batch_size), dtype=np.float32)  # [N, D]
    vectors = np.nan_to_num(vectors, nan=0.0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [N, 1]
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def cosine_top_k(queries: Any, keys: Any, k: int) -> list[list[tuple[int, float]]]:
    """For each row of ``queries`` ``[Q, D]``, the ``k`` rows of ``keys`` ``[N, D]`` with the highest
    dot product (the cosine, rows being unit length), best first; ties go to the lower index."""
    import numpy as np

    if len(keys) == 0:
        return [[] for _ in range(len(queries))]
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(keys, dtype=np.float32).T  # [Q, N]
    k = min(k, scores.shape[1])
    out = []
    for row in scores:
        order = np.lexsort((np.arange(len(row)), -row))[:k]  # by score descending, then index
        out.append([(int(i), float(row[i])) for i in order])
    return out


# ----------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------


@dataclass
class PassageIndex:
    passages: list[Passage]
    embeddings: Any
    """``[len(passages), dim]`` float32, unit rows."""
    path: Path | None = None
    """The folder it was saved to or read from."""
    cached: bool = False
    """True when it was read from an earlier build instead of embedded now."""

    def search(self, queries: Sequence[str], top_k: int) -> list[list[tuple[Passage, float]]]:
        """The ``top_k`` passages most similar to each query, best first, with their cosine."""
        hits = cosine_top_k(embed(queries), self.embeddings, top_k)
        return [[(self.passages[i], score) for i, score in row] for row in hits]


def index_key(paths: Sequence[Path], *, chunk_chars: int) -> str:
    """SHA-256 of the index's inputs: format, embedding model, chunk size, each file's name and bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": INDEX_FORMAT, "embedder": embedder_id(), "chunk_chars": chunk_chars}).encode())
    for path in paths:
        digest.update(str(path).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_index(documents: Sequence[str], *, chunk_chars: int, cache_dir: str | Path | None = None) -> PassageIndex:
    """Chunk and embed ``documents`` (files, folders, globs), or read the index a previous call with
    the same inputs saved under ``cache_dir/<hash>/``. Without ``cache_dir`` nothing is written."""
    import numpy as np

    from affinage.data.io import write_jsonl
    from affinage.utils.fs import atomic_directory, atomic_write_text

    paths = resolve_documents(documents)
    _wordllama()  # fail early, naming the extra, before reading anything
    folder = Path(cache_dir) / index_key(paths, chunk_chars=chunk_chars)[:16] if cache_dir else None
    if folder is not None and (folder / "index.json").is_file():
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        passages = [Passage(**json.loads(line)) for line in (folder / "passages.jsonl").read_text("utf-8").splitlines()]
        if len(passages) == len(embeddings):
            return PassageIndex(passages, embeddings, folder, cached=True)
    passages = chunk_documents(paths, chunk_chars=chunk_chars)
    if not passages:
        raise DataError(f"the documents {', '.join(map(str, paths))} hold no text to retrieve from")
    embeddings = embed([p.embedding_text() for p in passages])  # [P, D]
    if folder is not None:
        with atomic_directory(folder) as tmp:
            np.save(tmp / "embeddings.npy", embeddings, allow_pickle=False)
            write_jsonl(tmp / "passages.jsonl", (asdict(p) for p in passages))
            meta = {"embedder": embedder_id(), "chunk_chars": chunk_chars, "passages": len(passages),
                    "dim": int(embeddings.shape[1]), "files": [str(p) for p in paths]}
            atomic_write_text(tmp / "index.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return PassageIndex(passages, embeddings, folder, cached=False)


def format_passages(hits: Iterable[tuple[Passage, float]]) -> str:
    """The retrieved passages as the model reads them: numbered, each with its source and heading."""
    blocks = []
    for n, (p, _) in enumerate(hits, 1):
        where = Path(p.source).name + (f" ({p.title})" if p.title else "")
        blocks.append(f"[{n}] {where}\n{p.text}")
    return "\n\n".join(blocks)
