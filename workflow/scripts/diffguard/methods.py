"""The method registry: name -> settings class, display label and batch entry point.

A method is one module with three functions (see :class:`MethodModule`) plus an entry here
(and its name in the config schema's ``method`` enum, which a test holds equal to
:func:`method_names`). Reconstruction jobs, the speed benchmark and the traces reach a method
only through this registry and :mod:`diffguard.method_api`.

Imported while the workflow is parsed: the method modules (torch) load on first use, through
functions that import them, so that the rules' code inputs still see them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from diffguard.method_api import MethodBatch, MethodJob, MethodOutput
from diffguard.settings import CfgSettings, GdmSettings


class MethodModule(Protocol):
    """What a method module defines."""

    def check_model(self, model: Any, where: str) -> None:
        """Raise ValueError (naming ``where``) when ``model`` cannot run the method."""

    def prepare(self, settings: Any, torch_hub_dir: str | None, device: Any) -> dict[str, Any]:
        """Job-wide state built once before the first batch (:attr:`MethodJob.extras`)."""

    def run_batch(self, job: MethodJob, batch: MethodBatch, counter: Any = None) -> MethodOutput:
        """The method on one batch (see :mod:`diffguard.method_api`)."""


@dataclass(frozen=True)
class Method:
    """One registered method."""

    name: str  # the config's ``method`` value
    settings: type  # the dataclass of ``experiments.<name>.<method>``
    label: str  # display label (speed table, logs)
    conditional: bool  # whether it calls its model with class labels
    load: Callable[[], MethodModule]

    def module(self) -> MethodModule:
        return self.load()


def _gdm() -> MethodModule:
    from diffguard import gdm

    return gdm  # type: ignore[return-value]


def _cfg() -> MethodModule:
    from diffguard import cfg

    return cfg  # type: ignore[return-value]


METHODS: dict[str, Method] = {}
"""The registry, in config order; :func:`register` adds to it."""


def register(method: Method) -> Method:
    """Add ``method`` (its name and label must be new)."""
    if method.name in METHODS or any(m.label == method.label for m in METHODS.values()):
        raise ValueError(f"method {method.name!r} ({method.label}) is already registered")
    METHODS[method.name] = method
    return method


register(Method("gdm", GdmSettings, "GDM", conditional=False, load=_gdm))
register(Method("cfg", CfgSettings, "CFG", conditional=True, load=_cfg))


def method_names() -> list[str]:
    """The registered methods' names (the schema's ``method`` enum)."""
    return list(METHODS)


def get_method(name: str, where: str = "method") -> Method:
    """The registered method ``name`` (``where`` names the config key in the error)."""
    if name not in METHODS:
        raise ValueError(f"{where}: unknown method {name!r}; expected one of {method_names()}")
    return METHODS[name]


def method_by_label(label: str) -> Method:
    """The registered method whose display label is ``label`` (e.g. ``GDM``)."""
    for method in METHODS.values():
        if method.label == label:
            return method
    labels = [m.label for m in METHODS.values()]
    raise ValueError(f"unknown method {label!r}; expected one of {labels}")


def start_job(
    name: str,
    model: Any,
    classifier: Any,
    settings: Any,
    *,
    where: str = "method",
    reference: str = "auto",
    torch_hub_dir: str | None = None,
    device: Any = None,
) -> MethodJob:
    """A job of method ``name``: the settings' type checked, the method's state prepared."""
    method = get_method(name, where)
    if not isinstance(settings, method.settings):
        raise TypeError(
            f"{where}: method {name} needs {method.settings.__name__}, "
            f"got {type(settings).__name__}"
        )
    module = method.module()
    return MethodJob(
        method=name,
        model=model,
        classifier=classifier,
        settings=settings,
        entry=module.run_batch,
        where=where,
        reference=reference,
        extras=module.prepare(settings, torch_hub_dir, device),
    )
