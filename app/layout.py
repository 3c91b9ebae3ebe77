"""The model repository on disk: which models and versions are there, and which to serve.

Layout (`VAE_MODEL_REPOSITORY`, default `models/`)::

    <repository>/<name>/<version>/model.pt, model.json    version: a positive integer
    <repository>/<name>/model.pt, model.json              the same as <name>/1/

A name is letters, digits, `_` and `-` (no `.`: the v2 protocol names `<name>.<verb>`);
other folders and files are ignored. A version counts as present only when it is
complete: both files there, `model.json` parses, and, when it declares `model_sha256`
(the exporter writes it), `model.pt` has that digest. So a half-copied folder is never
loaded; without a checksum, copy a version in under another name and rename it into
place. With `VAE_MODEL_DIR` the repository is that one artifact folder, named after it.

`VersionPolicy` is Triton's: the latest N versions (default 1), all, or specific ones.
Everything here is plain synchronous code; `app.repository` calls it off the event loop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.artifact import METADATA_FILE, MODEL_FILE, ArtifactError, file_sha256

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VERSION = re.compile(r"[1-9][0-9]{0,8}")
POLICY = re.compile(r"latest(?::([1-9][0-9]*))?|all|specific:([1-9][0-9]*(?:,[1-9][0-9]*)*)")

Stamp = tuple[int, int, int, int]  # size and mtime of model.pt, then of model.json


@dataclass(frozen=True)
class VersionFiles:
    """A complete version on disk; `stamp` changes whenever either file does."""

    directory: Path
    stamp: Stamp


@dataclass(frozen=True)
class VersionPolicy:
    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = 1  # for latest
    versions: tuple[int, ...] = ()  # for specific

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """`latest`, `latest:N`, `all` or `specific:1,3`."""
        match = POLICY.fullmatch(text.strip())
        if match is None:
            raise ValueError("must be latest, latest:N, all or specific:V1,V2,...")
        if match.group(2):
            return cls("specific", versions=tuple(sorted({int(v) for v in match[2].split(",")})))
        if text.strip() == "all":
            return cls("all")
        return cls("latest", count=int(match.group(1) or 1))

    def select(self, available: set[int]) -> set[int]:
        """The versions to serve out of those present."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return available & set(self.versions)
        return set(sorted(available)[-self.count :])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        return "all" if self.kind == "all" else "specific:" + ",".join(map(str, self.versions))


Repository = dict[str, dict[int, VersionFiles]]  # name -> version -> files


class Scanner:
    """Reads the repository's layout; remembers checksums so a poll rereads no big file."""

    def __init__(self, root: Path, *, single: bool = False) -> None:
        self.root = root
        self.single = single  # `root` is one artifact folder (VAE_MODEL_DIR)
        self._digests: dict[Path, tuple[Stamp, str]] = {}  # the last digest per file

    def scan(self) -> Repository:
        """Every model with at least one complete version."""
        if self.single:  # always tried, so that a broken artifact fails with its own reason
            files = self._complete(self.root) or VersionFiles(self.root, (0, 0, 0, 0))
            return {self.root.name: {1: files}}
        try:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError:
            return {}
        found = {
            folder.name: self.versions(folder) for folder in folders if NAME.fullmatch(folder.name)
        }
        return {name: versions for name, versions in found.items() if versions}

    def versions(self, folder: Path) -> dict[int, VersionFiles]:
        direct = self._complete(folder)
        if direct is not None:
            return {1: direct}
        found: dict[int, VersionFiles] = {}
        try:
            children = list(folder.iterdir())
        except OSError:
            return found
        for child in children:
            if VERSION.fullmatch(child.name) and (files := self._complete(child)) is not None:
                found[int(child.name)] = files
        return found

    def _complete(self, directory: Path) -> VersionFiles | None:
        model, metadata = directory / MODEL_FILE, directory / METADATA_FILE
        try:
            first, second = model.stat(), metadata.stat()
            stamp = (first.st_size, first.st_mtime_ns, second.st_size, second.st_mtime_ns)
            declared = json.loads(metadata.read_bytes()).get("model_sha256")
            if declared is not None and self._digest(model, stamp) != declared:
                return None  # model.pt is not (yet) the file model.json describes
        except (OSError, ValueError, AttributeError, ArtifactError):
            return None  # missing, unreadable, or model.json not (yet) whole JSON
        return VersionFiles(directory, stamp)

    def _digest(self, path: Path, stamp: Stamp) -> str:
        cached = self._digests.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._digests[path] = (stamp, file_sha256(path))
        return cached[1]
