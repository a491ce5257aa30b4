"""A deterministic sample shop: a catalog of product types, brands and attributes, and search queries
with graded judgments that use synonyms and misspellings, so a fine-tuned model has something to learn
that word overlap (BM25) misses.

    from services.cli.sample_shop import generate
    shop = generate(products=2000, queries=1000, seed=7)
    shop.write(Path("demo-data"))  # catalog.csv, judgments.csv
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

# product type -> (department, words a shopper may use for it, price range)
TYPES: dict[str, tuple[str, tuple[str, ...], tuple[float, float]]] = {
    "cordless drill": ("Tools", ("power drill", "drill driver", "battery drill"), (49, 249)),
    "circular saw": ("Tools", ("skill saw", "power saw", "wood saw"), (59, 229)),
    "hammer": ("Tools", ("claw hammer", "framing hammer", "mallet"), (9, 49)),
    "tape measure": ("Tools", ("measuring tape", "tape rule", "ruler tape"), (5, 29)),
    "ceiling fan": ("Lighting", ("overhead fan", "fan with light", "room fan"), (79, 399)),
    "floor lamp": ("Lighting", ("standing lamp", "torchiere", "reading lamp"), (29, 179)),
    "led bulb": ("Lighting", ("light bulb", "lamp bulb", "energy saving bulb"), (3, 19)),
    "pendant light": ("Lighting", ("hanging light", "island light", "drop light"), (39, 249)),
    "kitchen faucet": ("Plumbing", ("sink faucet", "kitchen tap", "pull down faucet"), (59, 349)),
    "toilet": ("Plumbing", ("commode", "water closet", "wc"), (129, 499)),
    "shower head": ("Plumbing", ("rain shower", "showerhead", "shower spray"), (19, 149)),
    "garden hose": ("Outdoor", ("water hose", "yard hose", "hose pipe"), (15, 89)),
    "lawn mower": ("Outdoor", ("grass cutter", "push mower", "yard mower"), (149, 599)),
    "patio chair": ("Outdoor", ("deck chair", "outdoor chair", "lawn chair"), (29, 199)),
    "deck stain": ("Paint", ("wood stain", "deck sealer", "exterior stain"), (19, 69)),
    "interior paint": ("Paint", ("wall paint", "room paint", "latex paint"), (25, 79)),
    "paint brush": ("Paint", ("brush", "trim brush", "angled brush"), (4, 24)),
    "area rug": ("Flooring", ("carpet", "floor rug", "living room rug"), (39, 399)),
    "laminate flooring": ("Flooring", ("laminate floor", "floating floor", "wood look floor"), (19, 59)),
    "storage shelf": ("Storage", ("shelving unit", "garage shelf", "utility shelf"), (39, 199)),
}
BRANDS = (
    "Acme",
    "Bolt",
    "Crestline",
    "Dunmore",
    "Everwell",
    "Foxridge",
    "Granite",
    "Harbor",
    "Ironwood",
    "Juniper",
)
# attribute value -> the words shoppers use for it besides the catalog's own
COLORS = {
    "black": ("onyx", "jet"), "white": ("ivory", "snow"), "red": ("crimson", "scarlet"),
    "blue": ("navy", "cobalt"), "gray": ("charcoal", "slate"), "bronze": ("oil rubbed", "copper tone"),
    "chrome": ("silver", "polished"), "green": ("olive", "emerald"),
}  # fmt: skip
MATERIALS = {
    "steel": ("metal", "stainless"), "aluminum": ("aluminium", "alloy"), "wood": ("wooden", "timber"),
    "plastic": ("poly", "resin"), "brass": ("gold tone", "solid brass"),
    "fiberglass": ("fibreglass", "composite"),
}  # fmt: skip
SIZES = {
    "small": ("mini", "little"), "compact": ("slim", "space saving"), "standard": ("regular", "classic"),
    "large": ("xl", "big"), "heavy duty": ("pro", "industrial"),
}  # fmt: skip
ATTRIBUTES = {"color": COLORS, "material": MATERIALS, "size": SIZES}
FILLERS = ("for home", "best", "cheap", "", "", "", "near me", "on sale")


@dataclass(frozen=True)
class Product:
    product_id: str
    kind: str
    brand: str
    color: str
    material: str
    size: str
    price: float
    in_stock: bool

    @property
    def title(self) -> str:
        words = (self.size, self.color, self.material, self.kind)
        return " ".join([self.brand, *(w.title() for w in words)])

    @property
    def category(self) -> str:
        return f"{TYPES[self.kind][0]} > {self.kind.title()}"


@dataclass(frozen=True)
class Shop:
    products: list[Product]
    judgments: list[tuple[str, str, int]]  # (query, product id, grade 0..3)

    def catalog_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["product_id", "title", "brand", "category", "price", "in_stock"])
        for p in self.products:
            writer.writerow(
                [p.product_id, p.title, p.brand, p.category, f"{p.price:.2f}", "yes" if p.in_stock else "no"]
            )
        return out.getvalue()

    def judgments_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["query", "product_id", "grade"])
        writer.writerows(self.judgments)
        return out.getvalue()

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        catalog, judgments = directory / "catalog.csv", directory / "judgments.csv"
        catalog.write_text(self.catalog_csv(), encoding="utf-8")
        judgments.write_text(self.judgments_csv(), encoding="utf-8")
        return catalog, judgments


def misspell(word: str, rng: random.Random) -> str:
    """One typing slip: a dropped, doubled or swapped letter."""
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    slip = rng.randrange(3)
    if slip == 0:
        return word[:i] + word[i + 1 :]
    if slip == 1:
        return word[:i] + word[i] + word[i:]
    return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]


def _grade(product: Product, kind: str, wanted: dict[str, str]) -> int:
    """3: the type with every attribute asked for; 1: the type, other attributes; 0: another type."""
    if product.kind != kind:
        return 0
    return 3 if all(getattr(product, name) == value for name, value in wanted.items()) else 1


def generate(products: int = 2000, queries: int = 1000, seed: int = 7, others_per_query: int = 10) -> Shop:
    """The same arguments always give the same shop.

    Queries name a type and one or two attributes (brand, size, color, material), often in other words
    than the catalog's. Every product of the query's type is judged (3 when it has every attribute asked
    for, else 1), beside ``others_per_query`` products of other types (0), half of them from the same
    department. So the whole-catalog view leaves no relevant product unjudged."""
    if products < len(TYPES) or queries < 1 or others_per_query < 1:
        raise ValueError(f"need at least {len(TYPES)} products, 1 query and 1 other product per query")
    rng = random.Random(seed)
    kinds = list(TYPES)
    catalog = []
    for i in range(products):
        kind = kinds[i % len(kinds)]
        low, high = TYPES[kind][2]
        catalog.append(
            Product(
                product_id=f"P{i:05d}",
                kind=kind,
                brand=rng.choice(BRANDS),
                color=rng.choice(list(COLORS)),
                material=rng.choice(list(MATERIALS)),
                size=rng.choice(list(SIZES)),
                price=round(rng.uniform(low, high), 2),
                in_stock=rng.random() < 0.9,
            )
        )
    by_kind: dict[str, list[Product]] = {}
    for product in catalog:
        by_kind.setdefault(product.kind, []).append(product)
    judgments: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    while len(seen) < queries:
        kind = rng.choice(kinds)
        target = rng.choice(by_kind[kind])
        asked = rng.sample(["brand", "size", "color", "material"], rng.choice((1, 2, 2)))
        wanted = {name: getattr(target, name) for name in asked}
        words = []
        for name in ("brand", "size", "color", "material"):  # half the time in the shopper's own words
            if name in wanted:
                value = wanted[name]
                said = ATTRIBUTES[name][value] if name in ATTRIBUTES else ()
                words.append(rng.choice(said) if said and rng.random() < 0.5 else value)
        noun = kind if rng.random() < 0.4 else rng.choice(TYPES[kind][1])  # most shoppers use another word
        words += [noun, rng.choice(FILLERS)]
        text = " ".join(w.lower() for w in words if w)
        if rng.random() < 0.25:
            parts = text.split()
            j = rng.randrange(len(parts))
            parts[j] = misspell(parts[j], rng)
            text = " ".join(parts)
        if text in seen:
            continue
        seen.add(text)
        department = TYPES[kind][0]
        near = [p for p in catalog if p.kind != kind and TYPES[p.kind][0] == department]
        far = [p for p in catalog if TYPES[p.kind][0] != department]
        hard = rng.sample(near, min(len(near), others_per_query // 2))
        picks = [*by_kind[kind], *hard, *rng.sample(far, others_per_query - len(hard))]
        for product in picks:
            judgments.append((text, product.product_id, _grade(product, kind, wanted)))
    return Shop(catalog, judgments)
