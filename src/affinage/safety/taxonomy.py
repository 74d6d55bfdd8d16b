"""What counts as unsafe: a configurable list of hazard categories, each with a short definition.

The definitions are written into classification prompts (self-reflection), used to name the
categories a trained classifier predicts, and to choose the safe alternative a refusal offers.
Each category maps to the MLCommons AI Safety hazard categories that Llama Guard 3 uses (S1..S14,
Inan et al. 2023, "Llama Guard"; MLCommons AILuminate v1.0 taxonomy), so a Llama Guard model can
serve as the judge and public data labelled with S-codes can be imported.

A taxonomy YAML file holds a list of categories::

    categories:
      - name: criminal
        title: Illegal and criminal activity
        definition: Helping plan or commit crimes such as theft, fraud, drug trafficking ...
        mlcommons: [S2]
      - ...

``Taxonomy.load(path)`` reads it; ``Taxonomy.default().subset(["violence", "self_harm"])`` keeps
some categories of the default one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinage.errors import ConfigError

# The MLCommons hazard categories in the order and with the codes Llama Guard 3 uses.
MLCOMMONS_HAZARDS: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Category:
    """One hazard category."""

    name: str
    """Short identifier (lowercase, underscores) the classifier answers with, e.g. ``self_harm``."""
    title: str
    definition: str
    """One or two sentences, written into classification prompts."""
    mlcommons: tuple[str, ...] = ()
    """MLCommons / Llama Guard 3 hazard codes (``S1``..``S14``) this category covers."""


DEFAULT_CATEGORIES: tuple[Category, ...] = (
    Category(
        "criminal",
        "Illegal and criminal activity",
        "Helping plan or commit crimes: theft, burglary, fraud and scams, forgery, drug production or "
        "trafficking, money laundering, evading the police.",
        ("S2", "S3"),
    ),
    Category(
        "hate",
        "Hate and harassment",
        "Demeaning, threatening or dehumanising people for a protected attribute (origin, religion, "
        "gender, sexuality, disability), bullying or harassing someone, or defaming a real person.",
        ("S10", "S5"),
    ),
    Category(
        "violence",
        "Violence and weapons",
        "Helping hurt or kill people or animals; making or acquiring weapons or explosives; chemical, "
        "biological, radiological or nuclear weapons; cyber attacks such as malware or breaking into "
        "computer systems.",
        ("S1", "S9", "S14"),
    ),
    Category(
        "self_harm",
        "Self-harm",
        "Encouraging, glorifying or giving methods for suicide, self-injury or disordered eating.",
        ("S11",),
    ),
    Category(
        "child_sexual",
        "Sexual content involving minors",
        "Any sexual or sexualised content involving people under 18, or helping someone approach "
        "children for sexual purposes.",
        ("S4",),
    ),
    Category(
        "privacy",
        "Privacy violations",
        "Revealing, finding or collecting personal information about a private person (home address, "
        "phone number, identity documents, health data), stalking or doxxing.",
        ("S7",),
    ),
    Category(
        "expert_advice",
        "Unqualified expert advice",
        "Specific medical, legal or financial advice that should come from a qualified professional, "
        "such as a diagnosis, a prescription, a dosage beyond the label, or guaranteed investment advice.",
        ("S6",),
    ),
)


@dataclass
class Taxonomy:
    """An ordered list of categories with lookup by name and by MLCommons code."""

    categories: list[Category] = field(default_factory=lambda: list(DEFAULT_CATEGORIES))

    def __post_init__(self) -> None:
        if not self.categories:
            raise ConfigError("a safety taxonomy needs at least one category")
        seen: set[str] = set()
        for c in self.categories:
            if not _NAME.match(c.name):
                raise ConfigError(
                    f"taxonomy category name {c.name!r} must be lowercase letters, digits and underscores, "
                    "starting with a letter (e.g. self_harm)"
                )
            if c.name in seen:
                raise ConfigError(f"taxonomy category {c.name!r} is listed twice")
            seen.add(c.name)
            unknown = [code for code in c.mlcommons if code not in MLCOMMONS_HAZARDS]
            if unknown:
                raise ConfigError(
                    f"taxonomy category {c.name!r}: unknown MLCommons code(s) {unknown}; "
                    f"valid: {', '.join(MLCOMMONS_HAZARDS)}"
                )
            if not c.definition.strip():
                raise ConfigError(f"taxonomy category {c.name!r} needs a definition")

    # ------------------------------------------------------------------ building

    @classmethod
    def default(cls) -> Taxonomy:
        return cls(list(DEFAULT_CATEGORIES))

    @classmethod
    def from_rows(cls, rows: Any, where: str = "taxonomy") -> Taxonomy:
        """Build from a list of ``{name, title, definition, mlcommons}`` mappings."""
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{where}: 'categories' must be a non-empty list of categories")
        categories = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                raise ConfigError(
                    f"{where}: category {i} must be a mapping with at least 'name' and 'definition', got {row!r:.80}"
                )
            extra = set(row) - {"name", "title", "definition", "mlcommons"}
            if extra:
                raise ConfigError(
                    f"{where}: category {row['name']!r} has unknown key(s) {sorted(extra)}; "
                    "valid: name, title, definition, mlcommons"
                )
            codes = row.get("mlcommons") or []
            if isinstance(codes, str):
                codes = [codes]
            categories.append(
                Category(
                    name=row["name"],
                    title=str(row.get("title") or row["name"].replace("_", " ").capitalize()),
                    definition=str(row.get("definition") or ""),
                    mlcommons=tuple(str(c).upper() for c in codes),
                )
            )
        return cls(categories)

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        """Read a taxonomy YAML file (``categories: [...]``)."""
        from affinage.config import read_yaml

        raw = read_yaml(path)
        if set(raw) != {"categories"}:
            raise ConfigError(f"{path}: a taxonomy file holds one key, 'categories'; found {sorted(raw)}")
        return cls.from_rows(raw["categories"], where=str(path))

    @classmethod
    def from_settings(cls, file: str | None = None, include: list[str] | None = None) -> Taxonomy:
        """The taxonomy a config describes: a file (or the default), restricted to ``include``."""
        taxonomy = cls.load(file) if file else cls.default()
        return taxonomy.subset(include) if include else taxonomy

    def subset(self, names: list[str]) -> Taxonomy:
        for n in names:
            self.get(n)  # raises on an unknown name
        return Taxonomy([c for c in self.categories if c.name in set(names)])

    # ------------------------------------------------------------------ lookup

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def get(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise ConfigError(f"unknown safety category {name!r}; the taxonomy has: {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.categories)

    def __len__(self) -> int:
        return len(self.categories)

    def to_mlcommons(self, name: str) -> list[str]:
        return list(self.get(name).mlcommons)

    def from_mlcommons(self, code: str) -> str | None:
        """Our category covering an MLCommons code (``S9`` -> ``violence``), or None."""
        code = code.strip().upper()
        for c in self.categories:
            if code in c.mlcommons:
                return c.name
        return None

    def normalise(self, label: str) -> str | None:
        """Map a category written by a classifier or a dataset to one of ours, or None.

        Accepts our names (any case, spaces or dashes for underscores), titles, and MLCommons codes.
        """
        text = label.strip().strip(".,;:'\"`*").lower()
        if not text:
            return None
        key = re.sub(r"[\s-]+", "_", text)
        for c in self.categories:
            if key == c.name or text == c.title.lower():
                return c.name
        if re.fullmatch(r"s\d{1,2}", text):
            return self.from_mlcommons(text)
        return None

    def parse_categories(self, text: str) -> list[str]:
        """Every category named in free text (a verdict's second line), in order of appearance.

        Matches our names and MLCommons codes as whole words: ``"unsafe\\nviolence, S11"`` ->
        ``["violence", "self_harm"]``.
        """
        found: list[tuple[int, str]] = []
        lowered = text.lower()
        for c in self.categories:
            for pattern in (c.name, c.name.replace("_", " "), c.name.replace("_", "-")):
                m = re.search(rf"(?<![a-z0-9_]){re.escape(pattern)}(?![a-z0-9_])", lowered)
                if m:
                    found.append((m.start(), c.name))
                    break
        for m in re.finditer(r"(?<![a-z0-9])s(\d{1,2})(?![0-9])", lowered):
            name = self.from_mlcommons(f"S{m.group(1)}")
            if name is not None:
                found.append((m.start(), name))
        ordered = [name for _, name in sorted(found)]
        return list(dict.fromkeys(ordered))

    def prompt_block(self) -> str:
        """The category list written into a classification prompt: ``- name: definition`` lines."""
        return "\n".join(f"- {c.name}: {c.definition}" for c in self.categories)

    def to_rows(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "title": c.title, "definition": c.definition, "mlcommons": list(c.mlcommons)}
            for c in self.categories
        ]
