"""Reading the Containerfile: its stages and their instructions, enough for the tests to check."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an ENTRYPOINT or CMD; shell form is refused."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} is not in exec form"
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def environment(self) -> dict[str, str]:
        """The ENV settings of this stage, as written (``${PATH}`` left for the caller)."""
        settings: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                name, separator, value = pair.partition("=")
                assert separator, f"ENV {pair!r} is not NAME=value"
                settings[name] = value
        return settings

    def users(self) -> list[str]:
        return [item.arguments for item in self.all("USER")]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        # Comments and blank lines end nothing, even inside a continued instruction.
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Containerfile ends inside a continued line"
    return lines


def parse_containerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """The ARGs before the first FROM (with defaults), and the stages in order."""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = words[0]
            for name, value in arguments.items():
                base = base.replace(f"${{{name}}}", value)
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=stage_name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, value = rest.partition("=")
            arguments[name] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return arguments, stages
