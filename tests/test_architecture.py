"""The shape of the code, checked: imports flow one way, no reaching into private names, no asserts.

These read the source (``ast``), so they fail the moment someone adds an upward import, even one
inside a function or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "guide_engine"
INTEGRATIONS = ROOT / "guide_integrations"

LAYERS = [
    "errors",
    "schema_errors",
    "tags",
    "alignment",
    "tools",
    "options",
    "constraints",
    "markup_masks",
    "plots",
    "attention",
    "influence",
    "kv_cache",
    "decoding",
    "loading",
    "engine",
    "registry",
    "pay_attention_pipeline",
    "cli",
]
"""guide_engine's modules, lowest first: each may import only modules before it.

``plots`` is a leaf (it draws anything shaped like an Influence result, see
``plots.InfluenceData``), so it sits low and ``InfluenceResult.plot`` can call it.
"""


def library_files() -> list[Path]:
    return sorted([*ENGINE.rglob("*.py"), *INTEGRATIONS.rglob("*.py")])


def engine_imports(path: Path) -> set[str]:
    """guide_engine modules imported anywhere in ``path`` (top level, functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and path.parent == ENGINE:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("guide_engine."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("guide_engine."))
    return found


def test_every_engine_module_has_a_layer():
    modules = {p.stem for p in ENGINE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS), "add new modules to LAYERS (and the docs' architecture page)"


@pytest.mark.parametrize("module", LAYERS)
def test_engine_modules_import_only_lower_layers(module):
    allowed = set(LAYERS[: LAYERS.index(module)])
    upward = engine_imports(ENGINE / f"{module}.py") - allowed
    assert not upward, f"guide_engine.{module} imports {sorted(upward)}, which are not below it"


def test_the_engine_never_imports_the_integrations_or_their_frameworks():
    for path in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [
                n
                for n in names
                if n.split(".")[0] in ("guide_integrations", "langchain", "langchain_core", "llama_index")
            ]
            assert not bad, f"{path.name} imports {bad}"


DOCUMENTED_PRIVATE = {"_dynamo"}
"""Underscore names that a library documents as the place to reach: torch's compiler settings
(``torch._dynamo.config.recompile_limit``, which ``kv_cache`` raises) have no public setter."""


def private_reaches(path: Path) -> list[str]:
    """``obj._name`` on anything but ``self``/``cls``/``super()``, and ``from x import _name``, in one file.

    ``super()._hook(...)`` is allowed: it is how a subclass extends the hooks a framework's base
    class is made to have overridden (transformers' ``Pipeline._forward``, LlamaIndex's ``_get_prompt``).
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        private = (
            node.attr.startswith("_") and not node.attr.startswith("__") if isinstance(node, ast.Attribute) else False
        )
        if isinstance(node, ast.Attribute) and private and node.attr not in DOCUMENTED_PRIVATE:
            owner = node.value
            via_super = isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
            if not via_super and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.ImportFrom):
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


def test_no_module_reaches_into_private_names():
    reaches = [r for path in library_files() for r in private_reaches(path)]
    assert not reaches, "private names used from outside their object or module:\n" + "\n".join(reaches)


def test_library_code_has_no_assert_statements():
    """``assert`` vanishes under ``python -O``: library code raises real errors instead."""
    asserts = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in library_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert not asserts, f"assert statements in library code: {asserts}"


def test_importing_the_engine_loads_no_optional_dependency():
    optional = ("matplotlib", "typer", "rich", "gguf")
    code = f"import sys, guide_engine; print(sorted(m for m in {optional!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------- integrations

INTEGRATION_LAYERS = {
    "core": ["settings", "prompts", "results", "packages", "__init__"],
    "vllm": ["__init__", "codec", "model_files", "renderer", "middleware", "heads", "model", "serve"],
    "langchain": [
        "options",
        "events",
        "messages",
        "templates",
        "outputs",
        "tools",
        "structured",
        "outcomes",
        "runs",
        "batching",
        "chat_model",
        "__init__",
    ],
    "llama_index": [
        "options",
        "span_handlers",
        "events",
        "provenance",
        "templates",
        "messages",
        "structured",
        "embeddings",
        "base",
        "__init__",
    ],
}
"""Each integration package's modules, lowest first: each may import only modules before it in its
own package, plus ``guide_integrations.core`` (what the wrappers share, which imports no other
package). ``__init__`` re-exports (last), except vLLM's, which holds the plugin's names and
registers its classes by their dotted paths (first)."""

TOP_LEVEL = {"cli": {"vllm"}}
"""``guide_integrations``'s own modules and the packages each may import: ``cli`` (the installed
``guide`` command) starts the vLLM server for ``guide serve``."""


def integration_imports(path: Path) -> set[str]:
    """``guide_integrations`` modules that ``path`` imports, as dotted names below the package ("langchain.options")."""
    package = path.parent.relative_to(INTEGRATIONS).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if node.module:
                    found.add(".".join(parts))
                else:  # ``from . import x``: x is a module, or a name of the package's __init__
                    for alias in node.names:
                        module = INTEGRATIONS.joinpath(*parts, f"{alias.name}.py")
                        found.add(".".join([*parts, alias.name]) if module.exists() else ".".join([*parts, "__init__"]))
            elif node.module and node.module.startswith("guide_integrations."):
                found.add(node.module.removeprefix("guide_integrations."))
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            found.update(n.removeprefix("guide_integrations.") for n in names if n.startswith("guide_integrations."))
    return found


def test_every_integration_module_has_a_layer():
    for package, layers in INTEGRATION_LAYERS.items():
        modules = {p.stem for p in (INTEGRATIONS / package).glob("*.py")}
        assert modules == set(layers), f"add guide_integrations/{package}'s modules to INTEGRATION_LAYERS"
    top = {p.stem for p in INTEGRATIONS.glob("*.py")} - {"__init__"}
    assert top == set(TOP_LEVEL)


@pytest.mark.parametrize(
    "package,module", [(package, module) for package, layers in INTEGRATION_LAYERS.items() for module in layers]
)
def test_integration_modules_import_only_lower_layers_and_core(package, module):
    """No upward or sideways edge, not even under TYPE_CHECKING: a package never reaches its model class."""
    layers = INTEGRATION_LAYERS[package]
    allowed = {f"{package}.{lower}" for lower in layers[: layers.index(module)]}
    allowed |= set() if package == "core" else {"core", *(f"core.{name}" for name in INTEGRATION_LAYERS["core"])}
    allowed |= {package} if module == "__init__" else set()  # ``from . import x`` inside __init__ itself
    imported = integration_imports(INTEGRATIONS / package / f"{module}.py")
    wrong = sorted(imported - allowed - {f"{package}.{module}"})
    assert not wrong, f"guide_integrations.{package}.{module} imports {wrong}, which are not below it"


@pytest.mark.parametrize("module", sorted(TOP_LEVEL))
def test_top_level_integration_modules_import_what_they_may(module):
    imported = {name.split(".")[0] for name in integration_imports(INTEGRATIONS / f"{module}.py")}
    assert imported <= TOP_LEVEL[module], f"guide_integrations.{module} imports {sorted(imported)}"


def test_the_vllm_plugin_uses_only_the_engines_public_names():
    """The plugin runs inside vLLM's processes: it may depend on the engine's API, nothing behind it."""
    import importlib

    reaches = []
    for path in sorted((INTEGRATIONS / "vllm").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "guide_engine":
                public = importlib.import_module(node.module).__all__
                reaches += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name not in public]
            elif isinstance(node, ast.Import):
                reaches += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("guide_engine")]
    assert not reaches, f"the vLLM plugin reaches past the engine's __all__: {reaches}"
