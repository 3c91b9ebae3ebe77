"""The served models: every loaded version, its state, and rollouts that drop nothing.

A version's life::

    loading ──> ready ──> unloading ──> (gone)
       └──────> failed    (the one-line reason is kept, and shown in GET /models)

`ModelRepository.sync` reads the layout (`app.layout`), then per model loads what the
version policy asks for and is not loaded yet, each in the background of the serving
one: the artifact is loaded off the event loop, verified and warmed up through its own
lane of the shared batcher. Only then does it turn `ready`, and from that moment new
requests resolve to it: requests resolve to the newest ready version, so the swap is
one assignment. A request holds its version (`acquire` / `release`) for its whole
life, so what was accepted finishes on the version it started on; a replaced version
turns `unloading`, waits for its requests, leaves the batcher and is dropped. A failed
load changes nothing that serves. `sync` runs at start-up, on every poll
(`VAE_POLL_S`) and for the admin routes, one at a time.

The table of versions (`VersionTable`) is plain synchronous bookkeeping; this module's
async part only loads, waits and wakes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from anyio import to_thread

from app.artifact import ModelMetadata
from app.batching import Batcher, wait_for
from app.config import Settings
from app.errors import ModelUnavailableError, UnknownModelError
from app.images import warm_up_codecs
from app.inference import Inference
from app.layout import Repository, Scanner, VersionFiles
from app.metrics import Metrics
from app.runtime import ModelRuntime, StartupError, warm_up

logger = logging.getLogger("vae.repository")

State = Literal["loading", "ready", "unloading", "failed"]


@dataclass(eq=False)
class ModelVersion:
    """One load of one version; a reload of the same version is a newer `generation`."""

    name: str
    version: int
    files: VersionFiles
    generation: int
    state: State = "loading"
    reason: str | None = None  # why it failed
    runtime: ModelRuntime | None = None
    model: Inference | None = None
    in_use: int = 0  # requests that resolved to this version and have not finished
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def metadata(self) -> ModelMetadata | None:
        return None if self.runtime is None else self.runtime.metadata

    def acquire(self) -> Inference:
        assert self.model is not None
        self.in_use += 1
        self.idle.clear()
        return self.model

    def release(self) -> None:
        self.in_use -= 1
        if self.in_use == 0:
            self.idle.set()


class VersionTable:
    """Every live `ModelVersion` per model name."""

    def __init__(self) -> None:
        self._models: dict[str, list[ModelVersion]] = {}

    def names(self) -> list[str]:
        return sorted(name for name, versions in self._models.items() if versions)

    def versions(self, name: str) -> list[ModelVersion]:
        return sorted(self._models.get(name, ()), key=lambda v: (v.version, v.generation))

    def add(self, entry: ModelVersion) -> None:
        self._models.setdefault(entry.name, []).append(entry)

    def discard(self, entry: ModelVersion) -> None:
        versions = self._models.get(entry.name, [])
        if entry in versions:
            versions.remove(entry)

    def serving(self, name: str, version: int | None = None) -> ModelVersion | None:
        """The newest ready load of `version` (of any version when None)."""
        ready = [
            entry
            for entry in self._models.get(name, ())
            if entry.state == "ready" and (version is None or entry.version == version)
        ]
        return max(ready, key=lambda entry: (entry.version, entry.generation), default=None)


class ModelRepository:
    """Loads, serves and unloads the repository's models on one shared batcher."""

    def __init__(self, settings: Settings, batcher: Batcher, metrics: Metrics) -> None:
        single = settings.model_dir is not None
        root = settings.model_dir if settings.model_dir is not None else settings.model_repository
        self.root = root
        self.default = root.name if single else settings.default_model
        self.table = VersionTable()
        self._settings, self._batcher, self._metrics = settings, batcher, metrics
        self._scanner = Scanner(root, single=single)
        self._policy = settings.policy
        self._chosen: set[str] | None = set(settings.models) or None  # None: every model
        self._unloaded: set[str] = set()  # by an admin; polling leaves them alone
        self._on_disk: Repository = {}
        self._lock = asyncio.Lock()
        self._generations = itertools.count(1)
        self._unloading: set[asyncio.Task[None]] = set()
        self._starting = False  # the start-up error reports the default model's failure

    def resolve(self, name: str | None, version: int | None = None) -> ModelVersion:
        """The version a request is served by: 404 if unknown, 503 if it is not ready."""
        name = self.default if name is None else name
        entry = self.table.serving(name, version)
        if entry is not None:
            return entry
        self.resolve_name(name)
        if version is None:
            raise ModelUnavailableError(f"model {name!r} has no ready version; retry later")
        live = [e for e in self.table.versions(name) if e.version == version]
        if live:
            why = f": {live[-1].reason}" if live[-1].reason else "; retry later"
            raise ModelUnavailableError(
                f"version {version} of model {name!r} is {live[-1].state}{why}"
            )
        if version in self._on_disk.get(name, {}):
            raise UnknownModelError(
                f"version {version} of model {name!r} is not loaded (version policy {self._policy})"
            )
        raise UnknownModelError(f"model {name!r} has no version {version}")

    def resolve_name(self, name: str) -> None:
        """404 for a name the repository does not know."""
        if not self.known(name):
            raise UnknownModelError(f"no model named {name!r}")

    def known(self, name: str) -> bool:
        return name in self._on_disk or bool(self.table.versions(name))

    def names(self) -> list[str]:
        """Every model on disk or loaded, sorted."""
        return sorted(set(self._on_disk) | set(self.table.names()))

    def wanted(self, name: str) -> bool:
        if name in self._unloaded:
            return False
        return self._chosen is None or name in self._chosen

    async def start(self) -> None:
        """The first sync; the default model must come up, or start-up fails."""
        if self._chosen is not None and self.default not in self._chosen:
            raise StartupError(f"VAE_DEFAULT_MODEL={self.default} is not among VAE_MODELS")
        self._starting = True
        try:
            await self.sync()
        finally:
            self._starting = False
        if self.table.serving(self.default) is None:
            failed = [e.reason for e in self.table.versions(self.default) if e.reason]
            if failed:
                raise StartupError(failed[-1])
            raise StartupError(f"the default model {self.default!r} is not in {self.root}")

    async def sync(self, only: str | None = None) -> None:
        """Rescan the layout and bring one model (`only`) or all of them in line with it."""
        async with self._lock:
            self._on_disk = await to_thread.run_sync(self._scanner.scan)
            names = [only] if only is not None else self.names()
            for name in names:
                await self._sync_model(name)

    async def load(self, name: str) -> ModelVersion:
        """An admin's load (or reload) of `name`: what its newest version's load gave."""
        async with self._lock:
            self._on_disk = await to_thread.run_sync(self._scanner.scan)
        if name not in self._on_disk:
            raise UnknownModelError(f"no model named {name!r} in {self.root}")
        self._unloaded.discard(name)
        if self._chosen is not None:
            self._chosen.add(name)
        await self.sync(only=name)
        versions = self.table.versions(name)
        if not versions:  # its files went between the two scans
            raise UnknownModelError(f"no model named {name!r} in {self.root}")
        return versions[-1]

    async def unload(self, name: str) -> None:
        """An admin's unload: every version drains and goes; polling will not bring it back."""
        self.resolve_name(name)
        self._unloaded.add(name)
        await self.sync(only=name)
        await self.settle()

    async def settle(self) -> None:
        """Wait for every version that is unloading to be gone."""
        while self._unloading:
            await asyncio.gather(*self._unloading, return_exceptions=True)

    async def close(self) -> None:
        """At shutdown, once the batcher has drained: stop the unloads still waiting."""
        for task in list(self._unloading):
            task.cancel()
        await asyncio.gather(*self._unloading, return_exceptions=True)

    async def poll(self, interval_s: float) -> None:
        """Sync every `interval_s` until cancelled; a failing sync is logged, not fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:
                logger.exception("the repository poll failed; polling goes on")

    def entries(self) -> Iterator[ModelVersion]:
        for name in self.table.names():
            yield from self.table.versions(name)

    async def _sync_model(self, name: str) -> None:
        files = self._on_disk.get(name, {}) if self.wanted(name) else {}
        chosen = self._policy.select(set(files))
        for version in sorted(chosen):
            if not self._has_load_of(name, files[version]):
                await self._load(name, version, files[version])
        self._retire_replaced(name, files, chosen)

    def _has_load_of(self, name: str, files: VersionFiles) -> bool:
        """A load of exactly these files is ready, loading, or failed (not retried)."""
        return any(
            entry.files == files and entry.state != "unloading"
            for entry in self.table.versions(name)
        )

    def _retire_replaced(self, name: str, files: dict[int, VersionFiles], chosen: set[int]) -> None:
        """Unload what the policy no longer serves, once something it does serve is ready.

        A version whose files are gone, or a model no longer wanted, goes at once; a
        version the policy dropped goes only when a chosen one is ready (a failed new
        version leaves the old one serving); a reloaded version goes when its new load
        is ready.
        """
        entries = self.table.versions(name)
        replacement_ready = any(e.state == "ready" and e.version in chosen for e in entries)
        for entry in entries:
            current = files.get(entry.version) == entry.files
            if entry.state == "failed":
                if not (current and entry.version in chosen):
                    self.table.discard(entry)
                continue
            if entry.state != "ready":
                continue
            newer = self.table.serving(name, entry.version)
            if (
                entry.version not in files
                or (entry.version not in chosen and replacement_ready)
                or (newer is not None and newer is not entry)
            ):
                self._retire(entry)

    async def _load(self, name: str, version: int, files: VersionFiles) -> None:
        entry = ModelVersion(name, version, files, next(self._generations))
        self.table.add(entry)
        try:
            runtime = await to_thread.run_sync(ModelRuntime.load, files.directory, self._settings)
            lane = self._batcher.lane(
                runtime.run, plan=runtime.plan, model=name, version=str(version)
            )
            try:
                await warm_up(lane.submit, runtime)
                await to_thread.run_sync(warm_up_codecs, runtime.metadata)
            except BaseException:
                await self._batcher.retire(lane, timeout=0)
                raise
        except Exception as exc:
            self._fail(entry, exc)
            return
        entry.runtime, entry.model = runtime, Inference(lane, runtime.metadata, self._metrics)
        entry.state = "ready"
        self._metrics.model_loaded.labels(name, str(version)).set(1)
        logger.info("model ready", extra={"fields": self._fields(entry)})

    def _fail(self, entry: ModelVersion, exc: Exception) -> None:
        entry.state = "failed"
        entry.reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self._metrics.load_failures.labels(entry.name, str(entry.version)).inc()
        if not (self._starting and entry.name == self.default):
            logger.error("model load failed", extra={"fields": self._fields(entry)})

    def _retire(self, entry: ModelVersion) -> None:
        entry.state = "unloading"
        task = asyncio.create_task(self._unload(entry), name=f"unload-{entry.name}-{entry.version}")
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def _unload(self, entry: ModelVersion) -> None:
        """Wait for the version's requests (bounded by the drain budget), then drop it."""
        budget = self._settings.drain_timeout_s
        drained = await wait_for(entry.idle, budget)
        if entry.model is not None:
            drained &= await self._batcher.retire(entry.model.lane, timeout=budget)
        self.table.discard(entry)
        if self.table.serving(entry.name, entry.version) is None:
            self._metrics.model_loaded.remove(entry.name, str(entry.version))
        entry.runtime = entry.model = None  # the last references: its memory goes with them
        logger.info("model unloaded", extra={"fields": {**self._fields(entry), "drained": drained}})

    def _fields(self, entry: ModelVersion) -> dict[str, object]:
        fields = {"model": entry.name, "version": entry.version, "dir": str(entry.files.directory)}
        return fields if entry.reason is None else {**fields, "reason": entry.reason}
