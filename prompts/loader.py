"""Versioned prompt templates: ``prompts/templates/<task>/<version>.md``.

A template file is a small front-matter header between ``---`` lines (``id``, ``version``,
``purpose``, ``variables``) and a body with ``{variable}`` placeholders. Published files are never
edited: an ablation adds ``perceive/v2.md`` and runs record the id and ``sha256`` they used, so a
result can always be traced to the exact text that produced it.

Placeholders are ``{identifier}`` only; any other brace (JSON examples such as ``{"lat": 48.8}``)
is literal text, so bodies can show JSON without escaping. The consequence: a literal
``{word}`` cannot appear in a body.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from geoguide.core.errors import GeoguideError

TEMPLATES_DIR = Path(str(resources.files("geoguide.prompts") / "templates"))

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ID = re.compile(r"^[a-z][a-z0-9_-]*/v[0-9][A-Za-z0-9_.-]*$")


class PromptError(GeoguideError, ValueError):
    """A template is malformed or rendered with the wrong variables."""


@dataclass(frozen=True)
class PromptTemplate:
    id: str  # "perceive/v1"
    version: str  # "v1"
    purpose: str
    variables: tuple[str, ...]
    text: str  # the body, placeholders unfilled
    sha256: str  # of the whole file, header included

    @property
    def task(self) -> str:
        return self.id.split("/", 1)[0]

    def render(self, **values: object) -> str:
        """Fill every placeholder; missing or unexpected variables are errors, not silent blanks."""
        missing = sorted(set(self.variables) - values.keys())
        extra = sorted(values.keys() - set(self.variables))
        if missing or extra:
            raise PromptError(
                f"prompt {self.id}: missing variables {missing or '[]'}, unexpected {extra or '[]'}; "
                f"expected exactly {list(self.variables)}"
            )
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.text)


def _parse_header(header: str, where: str) -> dict[str, str | tuple[str, ...]]:
    """YAML-like ``key: value`` lines; ``[a, b]`` is a list. Enough for our headers, no PyYAML."""
    fields: dict[str, str | tuple[str, ...]] = {}
    for lineno, line in enumerate(header.splitlines(), start=2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PromptError(f"{where}:{lineno}: expected 'key: value', got {line!r}")
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            fields[key.strip()] = tuple(v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip())
        else:
            fields[key.strip()] = value.strip("'\"")
    return fields


def parse_template(source: str, where: str = "<string>") -> PromptTemplate:
    """Parse and check one template file's text (exposed so tests can check drafts)."""
    if not source.startswith("---\n"):
        raise PromptError(f"{where}: a template starts with a '---' front-matter line")
    end = source.find("\n---\n", 4)
    if end < 0:
        raise PromptError(f"{where}: front matter is not closed by a '---' line")
    fields = _parse_header(source[4:end], where)
    body = source[end + len("\n---\n") :].strip("\n") + "\n"
    for key in ("id", "version", "purpose", "variables"):
        if key not in fields:
            raise PromptError(f"{where}: front matter lacks {key!r}")
    pid, version, variables = fields["id"], fields["version"], fields["variables"]
    if isinstance(variables, str):  # "variables: none" or a single bare name
        variables = () if variables in ("", "none", "[]") else (variables,)
    if not isinstance(pid, str) or not _ID.match(pid):
        raise PromptError(f"{where}: id {pid!r} is not '<task>/v<N>'")
    if pid.split("/", 1)[1] != version:
        raise PromptError(f"{where}: id {pid!r} and version {version!r} disagree")
    used = set(_PLACEHOLDER.findall(body))
    if used != set(variables):
        raise PromptError(
            f"{where}: placeholders in the body {sorted(used)} differ from declared variables {sorted(variables)}"
        )
    return PromptTemplate(
        id=pid,
        version=str(version),
        purpose=str(fields["purpose"]),
        variables=tuple(variables),
        text=body,
        sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
    )


@cache
def _load(prompt_id: str, root: str) -> PromptTemplate:
    path = Path(root) / f"{prompt_id}.md"
    if not _ID.match(prompt_id) or not path.is_file():
        raise PromptError(f"unknown prompt {prompt_id!r}; available: {', '.join(list_prompts(Path(root)))}")
    template = parse_template(path.read_text(encoding="utf-8"), str(path))
    if template.id != prompt_id:
        raise PromptError(f"{path}: header id {template.id!r} does not match its path {prompt_id!r}")
    return template


def load_prompt(prompt_id: str, root: Path | None = None) -> PromptTemplate:
    """``load_prompt("perceive/v1")``; ``root`` points at another templates folder (a user's own)."""
    return _load(prompt_id, str(root or TEMPLATES_DIR))


def list_prompts(root: Path | None = None) -> list[str]:
    """All template ids under ``root``, sorted: ``["chat/v1", "perceive/v1", ...]``."""
    base = root or TEMPLATES_DIR
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.glob("*/*.md"))
