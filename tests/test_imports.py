"""The import graph: no import circles inside steerling_lite, and imports go one way, tui -> steerling_lite -> quant.

Every import statement counts, whether at module level, inside a function (a lazy import)
or under ``if TYPE_CHECKING`` (grimp reads them all from the source).
"""

from __future__ import annotations

import graphlib

import grimp
import pytest


def build_graph() -> grimp.ImportGraph:
    return grimp.build_graph("steerling_lite", "quant", "tui", exclude_type_checking_imports=False, cache_dir=None)


def import_circle(graph: grimp.ImportGraph, package: str) -> list[str] | None:
    """One circle of imports among ``package``'s modules (``[a, b, ..., a]``), or None."""
    modules = {m for m in graph.modules if m.split(".")[0] == package}
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))
    return None


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return build_graph()


def test_no_import_circles_in_steerling_lite(graph):
    circle = import_circle(graph, "steerling_lite")
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_a_circle_is_found():
    """The check above can fail: a circle added to the graph is reported, lazy or not."""
    g = build_graph()
    g.add_import(importer="steerling_lite.errors", imported="steerling_lite.runtime")
    circle = import_circle(g, "steerling_lite")
    assert circle is not None and circle[0] == circle[-1] and "steerling_lite.errors" in circle


@pytest.mark.parametrize("lower,upper", [("quant", "steerling_lite"), ("quant", "tui"), ("steerling_lite", "tui")])
def test_imports_go_one_way(graph, lower, upper):
    chains = graph.find_shortest_chains(importer=lower, imported=upper, as_packages=True)
    assert not chains, f"{lower} imports {upper}: " + "; ".join(" -> ".join(c) for c in chains)
