"""Which way imports go (docs/architecture.md): read from the code's own import statements,
including those inside functions, so that a lazy import cannot hide a wrong direction."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crypto", "encryptor", "decryptor", "controller", "injector", "kamus")
SERVICES = ("encryptor", "decryptor", "controller", "injector")

# (importer prefix, imported prefix): never.
FORBIDDEN = [
    ("encryptor", "decryptor"),
    ("decryptor", "encryptor"),
    *(("crypto", service) for service in SERVICES),
    ("crypto", "kamus"),
    *(("kamus.server", service) for service in SERVICES),
    ("kamus.server", "kamus.cli"),
    # The command reaches the services only through the registry (kamus/server/services.py).
    *(("kamus.cli", service) for service in SERVICES),
    *(("controller", other) for other in ("encryptor", "decryptor", "injector", "kamus.cli")),
    # The injector needs no key: it never loads crypto, nor another service.
    *(("injector", other) for other in ("crypto", "encryptor", "decryptor", "controller")),
    ("injector", "kamus.cli"),
]
# Exceptions to the above: the injector writes `kamus init`'s flags, from the one list of them.
ALLOWED = [("injector.pods", "kamus.cli.formats")]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The project modules ``name`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` imports the module; `from module import name` not.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_imports_go_only_the_documented_ways(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, imported_set in graph.items()
        for imported in imported_set
        for source, target in FORBIDDEN
        if within(importer, source)
        and within(imported, target)
        and (importer, imported) not in ALLOWED
    )
    assert wrong == []


def test_no_module_imports_itself_back(graph: dict[str, set[str]]) -> None:
    """No cycle between modules (a package's ``__init__`` importing its own modules aside)."""

    def edges(name: str) -> set[str]:
        return {target for target in graph[name] if not within(name, target)}

    cycles = set()
    for start in graph:
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        seen = {start}
        while stack:
            node, path = stack.pop()
            for target in edges(node):
                if target == start:
                    cycles.add(" -> ".join((*path, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*path, target)))
    assert sorted(cycles) == []
