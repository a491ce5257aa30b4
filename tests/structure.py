"""The import rules `make check-structure` enforces, as an import-linter contract type of our own.

import-linter's built-in contracts say who may not import whom (pyproject.toml, [tool.importlinter]);
``acyclic_modules`` adds that no module imports itself through others, whatever the packages involved.
Each direct import ``a -> b`` inside the packages is looked up in grimp's graph for a chain back from
``b`` to ``a``; every circle found is printed once, as the modules that make it."""

from __future__ import annotations

from typing import Any

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class AcyclicModulesContract(Contract):
    type_name = "acyclic_modules"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        roots = [str(p) for p in self.packages]  # type: ignore[attr-defined]
        inside = {m for m in graph.modules if any(m == r or m.startswith(f"{r}.") for r in roots)}
        circles: list[tuple[str, ...]] = []
        seen: set[frozenset[str]] = set()
        for importer in sorted(inside):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if imported not in inside or imported == importer:
                    continue
                back = graph.find_shortest_chain(importer=imported, imported=importer)
                if back and frozenset(back) not in seen:
                    seen.add(frozenset(back))
                    circles.append((importer, *back))
        return ContractCheck(kept=not circles, warnings=[], metadata={"circles": circles})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for circle in check.metadata["circles"]:
            output.print_error(" -> ".join(circle), bold=False)
            output.new_line()
