"""The repository's Dockerfile, parsed into stages, for tests that check what it promises."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    """One `FROM ... AS name` stage: its instructions in order, continuation lines joined."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def args(self) -> dict[str, str]:
        """The stage's ARG defaults."""
        pairs = (args.partition("=") for args in self.all("ARG"))
        return {key.strip(): value.strip() for key, _, value in pairs}

    def user(self) -> str:
        """The final USER, its `${ARG}` references resolved with the ARG defaults."""
        return _with_env(self.last("USER"), self.args())

    def env(self) -> dict[str, str]:
        """The stage's ENV values, each `$VAR`/`${VAR}` resolved against the earlier ones."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = os.path.expandvars(_with_env(value, values))
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """A CMD, ENTRYPOINT or HEALTHCHECK in JSON (exec) form, as its argument list."""
        args = self.last(keyword)
        if keyword == "HEALTHCHECK":
            args = args[args.index("CMD") + len("CMD") :]
        command = json.loads(args)
        assert isinstance(command, list), f"{keyword} is not in JSON form"
        return command


def _with_env(value: str, env: dict[str, str]) -> str:
    for key, replacement in env.items():
        value = value.replace(f"${{{key}}}", replacement).replace(f"${key}", replacement)
    return value


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARG defaults, before the first FROM
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        found = [stage for stage in self.stages if stage.name == name]
        assert found, f"no stage named {name}"
        return found[0]

    @property
    def runtime(self) -> Stage:
        """The last stage: what `docker build .` produces and `docker run` starts."""
        return self.stages[-1]


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    preamble = Stage(name="", base="")
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=_with_env(words[0], preamble.args())))
        else:
            (stages[-1] if stages else preamble).instructions.append((keyword, args))
    return Dockerfile(args=preamble.args(), stages=stages)
