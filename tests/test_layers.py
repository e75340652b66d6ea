"""The layering data -> core -> training -> app holds: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"data": 0, "core": 1, "training": 2, "ui": 3, "pages": 4, "app": 4}
APP_ONLY = ("streamlit", "st_aggrid", "streamlit_folium", "pydeck", "altair")


def _layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def _modules() -> list[Path]:
    files = [REPO / "app.py"]
    for top in ("data", "core", "training", "ui", "pages"):
        files += sorted((REPO / top).rglob("*.py"))
    return files


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_import_climbs_a_layer(path: Path):
    rel = path.relative_to(REPO)
    own = LAYERS["app"] if rel.name == "app.py" and len(rel.parts) == 1 else LAYERS[rel.parts[0]]
    for module, line in _imports(path):
        layer = _layer(module)
        assert layer is None or layer <= own, f"{rel}:{line} imports {module} from a higher layer"
        if own <= LAYERS["training"]:
            assert module.split(".")[0] not in APP_ONLY, f"{rel}:{line} imports the app library {module}"


def test_architecture_page_lists_every_module():
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(REPO)) for p in _modules()
               if p.name != "__init__.py" and f"`{p.relative_to(REPO)}`" not in page]
    assert not missing, f"docs/ARCHITECTURE.md does not list {missing}"
