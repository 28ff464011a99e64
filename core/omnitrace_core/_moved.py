"""Old module paths keep importing after the core moved into rooms.

Before the media and evaluation rooms existed, their modules sat at the top of the package
(``omnitrace_core.metrics``, ``omnitrace_core.omni.loading``, ...). Documented code imports
those paths, so they stay valid: a meta-path finder resolves an old name to the module's new
home and binds both names to the *same* module object (no second copy, so monkeypatching and
``isinstance`` agree). Nothing here imports a room; a name is resolved only when imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old dotted prefix -> new dotted prefix (a prefix also maps every submodule below it).
MOVED: dict[str, str] = {
    "omnitrace_core.asr": "omnitrace_core.media.asr",
    "omnitrace_core.omni": "omnitrace_core.media.omni",
    "omnitrace_core.evaluation_data": "omnitrace_core.evaluation.data",
    "omnitrace_core.evaluation_methods": "omnitrace_core.evaluation.methods",
    "omnitrace_core.evaluation_faithfulness": "omnitrace_core.evaluation.faithfulness_eval",
    "omnitrace_core.evaluation_report": "omnitrace_core.evaluation.summary",
    "omnitrace_core.faithfulness": "omnitrace_core.evaluation.faithfulness",
    "omnitrace_core.metrics": "omnitrace_core.evaluation.metrics",
    "omnitrace_core.baselines": "omnitrace_core.evaluation.baselines",
    "omnitrace_core.selfcite": "omnitrace_core.evaluation.selfcite",
    "omnitrace_core.contextcite_peer": "omnitrace_core.evaluation.contextcite_peer",
    "omnitrace_core.engines": "omnitrace_core.evaluation.engines",
    "omnitrace_core.bench": "omnitrace_core.evaluation.bench",
    "omnitrace_core.report": "omnitrace_core.evaluation.report",
}


def new_name(old: str) -> str | None:
    """The current module path of an old one (``None``: it did not move)."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self._module: ModuleType | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self._module = importlib.import_module(self.target)
        self._spec = self._module.__spec__
        return self._module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias spec on the shared module: give it back its own
        module.__spec__ = self._spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


_FINDER = _MovedFinder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
