"""Merchandising rules applied to a ranked list: hide, boost, bury, then pin."""

from __future__ import annotations

from dataclasses import dataclass

from services.inference.catalog import CatalogIndex, Mask, in_category
from shared.models.enums import RuleAction

BOOST_RANK_K = 60  # boosts scale a rank score 1 / (k + rank), so they move items by rank, not raw score


@dataclass(frozen=True)
class Rule:
    action: RuleAction
    query: str | None = None  # lowercased; None: every request
    product_id: str | None = None
    category: str | None = None  # as catalog.category_path gives it
    position: int | None = None
    weight: float | None = None

    def applies(self, query: str | None) -> bool:
        return self.query is None or (query is not None and query.strip().lower() == self.query)

    def matches(self, catalog: CatalogIndex, position: int) -> bool:
        if self.product_id is not None:
            return catalog.ids[position] == self.product_id
        if self.category is not None and catalog.categories is not None:
            return in_category(str(catalog.categories[position]), self.category)
        return False


def apply_rules(
    ranked: list[tuple[int, float]],
    catalog: CatalogIndex,
    rules: tuple[Rule, ...],
    query: str | None,
    allowed: Mask | None,
    excluded: set[int],
) -> list[tuple[int, float]]:
    active = [rule for rule in rules if rule.applies(query)]
    if not active:
        return ranked

    def hidden(position: int) -> bool:
        for rule in active:
            if rule.action == RuleAction.hide and rule.matches(catalog, position):
                return True
            if (
                rule.action == RuleAction.hide_out_of_stock
                and catalog.in_stock is not None
                and not catalog.in_stock[position]
            ):
                return True
        return False

    items = [(p, s) for p, s in ranked if not hidden(p)]
    boosts = [rule for rule in active if rule.action == RuleAction.boost]
    if boosts:
        weighted = []
        for rank, (p, s) in enumerate(items, start=1):
            factor = 1.0
            for rule in boosts:
                if rule.matches(catalog, p):
                    factor *= rule.weight or 1.0
            weighted.append((factor / (BOOST_RANK_K + rank), rank, p, s))
        weighted.sort(key=lambda row: (-row[0], row[1]))
        items = [(p, s) for _, _, p, s in weighted]
    buries = [rule for rule in active if rule.action == RuleAction.bury]
    if buries:
        buried = [any(rule.matches(catalog, p) for rule in buries) for p, _ in items]
        items = [item for item, b in zip(items, buried, strict=True) if not b] + [
            item for item, b in zip(items, buried, strict=True) if b
        ]
    pins = sorted(
        (rule for rule in active if rule.action == RuleAction.pin and rule.product_id in catalog.position),
        key=lambda rule: rule.position or 1,
    )
    for rule in pins:
        position = catalog.position[rule.product_id or ""]
        if position in excluded or hidden(position) or (allowed is not None and not allowed[position]):
            continue
        score = next((s for p, s in items if p == position), 0.0)
        items = [(p, s) for p, s in items if p != position]
        items.insert(min((rule.position or 1) - 1, len(items)), (position, score))
    return items
