"""One registry helper behind every kind of plugin (descriptors, stores, submap schemes, backends,
policies, tools), so adding one is a short file with one decorator line.

A ``Registry`` maps names to entries (usually classes). Its built-ins are imported on the first
lookup, not when the registry is created: ``geoguide --help`` imports no plugin, and a package
registry (``package=``) finds its plugins by listing the package, so a new file needs no import
line anywhere. It sits in the lowest layer and imports nothing of the project.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")

UNKNOWN = "unknown {kind} {name!r}; available: {available}"


class Registry(Generic[T]):
    """Name -> entry for one kind of plugin.

    ``key`` is the attribute a decorated entry is named by when ``register`` gets no name
    (``"name"``, ``"kind"``); ``builtins`` are modules, and ``package`` a package whose every
    public module is, imported on the first lookup (a lookup first tries the module named like
    the entry, or its ``homes`` entry: a speed hint for built-ins that share a module, never
    needed for correctness); ``error`` and ``unknown`` shape what ``get``
    raises for a name it does not know; ``label`` says how an entry is listed there.
    """

    def __init__(self, kind: str, *, key: str | None = "name", builtins: tuple[str, ...] = (),
                 package: str | None = None, error: type[Exception] = ValueError, unknown: str = UNKNOWN,
                 label: Callable[[T], str] | None = None, homes: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.homes = homes or {}
        self.key = key
        self.builtins = builtins
        self.package = package
        self.error = error
        self.unknown = unknown
        self.label = label
        self._entries: dict[str, T] = {}
        self._loaded = not builtins and package is None
        self._loading = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"

    # ------------------------------------------------------------------ adding
    def add(self, entry: U, name: str | None = None) -> U:
        """Register ``entry`` under ``name`` (default: its ``key`` attribute); returns it unchanged.

        The same entry twice is a no-op (a module imported again); a different one under a taken
        name is refused, since silently replacing a plugin would change results unnoticed.
        """
        if name is None:
            name = getattr(entry, self.key, None) if self.key else None
            if not isinstance(name, str) or not name:
                raise TypeError(f"{self.kind} {entry!r} has no name: pass one or set {self.key or 'a name'!r}")
        old = self._entries.get(name)
        if old is not None and old is not entry:
            raise ValueError(f"{self.kind} {name!r} registered twice ({old!r} and {entry!r})")
        self._entries[name] = entry  # type: ignore[assignment]  # U is the caller's T
        return entry

    def register(self, name: str | None = None) -> Callable[[U], U]:
        """Decorator form of ``add``: ``@REGISTRY.register()`` or ``@REGISTRY.register("name")``."""

        def decorate(entry: U) -> U:
            return self.add(entry, name)

        return decorate

    # ------------------------------------------------------------------ lazy built-ins
    def _modules(self) -> list[str]:
        modules = list(self.builtins)
        if self.package is not None:
            path = importlib.import_module(self.package).__path__
            modules += [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
        return modules

    def load(self) -> None:
        """Import the built-in modules (once); their decorators fill the registry.

        Another thread's lookup waits until they are all in (no spurious "unknown"); a lookup made
        by a built-in while it is imported sees what is registered so far; a failed import is raised
        again by the next lookup rather than leaving a half-filled registry that passes for full.
        """
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for module in self._modules():
                    importlib.import_module(module)
                self._loaded = True
            finally:
                self._loading = False

    def _load_named(self, name: str) -> None:
        """Import only the package module named like ``name`` ("effnet-gem" -> ``effnet_gem``), if
        there is one: a lookup then costs one module, not every plugin's imports (the descriptors'
        torch alone is 1.5-4.5 s that a cold ``locate`` on ONNX Runtime must not pay)."""
        if self.package is None or self._loaded:
            return
        stem = self.homes.get(name, name.replace("-", "_"))
        if not stem.isidentifier():  # "api.openai.com", "llama.cpp": no module of ours, the full load says so
            return
        try:
            found = importlib.util.find_spec(f"{self.package}.{stem}") is not None
        except ImportError:
            return
        if found:
            importlib.import_module(f"{self.package}.{stem}")

    # ------------------------------------------------------------------ lookups
    def get(self, name: str, *, spec: str | None = None) -> T:
        """The entry for ``name``, or ``self.error`` naming what is available; ``spec`` is the
        text the user wrote (``"pq:x"``), quoted by messages that show it. A name found in its own
        module is returned without importing the other plugins (a name registered twice is then
        caught by the full load, which ``tests/unit/test_registries.py`` makes for every registry)."""
        if name not in self._entries:
            self._load_named(name)
        if name in self._entries:
            return self._entries[name]
        self.load()
        if name not in self._entries:
            listed = [self.label(self._entries[n]) if self.label else n for n in sorted(self._entries)]
            raise self.error(self.unknown.format(kind=self.kind, name=name, spec=spec if spec is not None else name,
                                                 available=", ".join(listed)))
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted (what error messages and option help list)."""
        self.load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        self.load()
        return list(self._entries.items())

    def values(self) -> list[T]:
        self.load()
        return list(self._entries.values())

    def keys(self) -> list[str]:
        self.load()
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        self.load()
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._entries:
            self._load_named(name)
        if name in self._entries:
            return True
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load()
        return len(self._entries)
