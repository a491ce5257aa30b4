"""Simulated shoppers: they search with a relevance dataset's queries through `/recommend`, look at the
answers the way people do, and send what they click, cart and buy to `/events` with the request's id.

Shoppers examine rank ``k`` (1-based) with probability ``examine(k) = 1 / k ** examine_decay`` (the
position bias of a results page) and click an examined product with a probability that grows with its
judged grade, ``click_floor + (1 - click_floor) * (2 ** grade - 1) / (2 ** max_grade - 1)`` (the
graded-relevance click model of Chapelle et al., 2009); an unjudged product has grade 0. A clicked product
is carted with probability ``cart_rate * grade / max_grade`` and a carted one bought with probability
``purchase_rate``. Each search draws from its own generator seeded by (seed, search number), so a seed
gives the same shoppers whatever the concurrency. Everything goes over HTTP: the simulator never touches
the database.

    report = asyncio.run(simulate(SimulationOptions(inference_url=..., key=..., project="shop",
                                                   judgments=read_judgments(path), searches=3000)))
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli.console import console, err_console, fail, load_settings
from shared.errors import ValidationFailed

Judgments = dict[str, dict[str, float]]  # query -> product id -> grade


@dataclass(frozen=True)
class ClickModel:
    examine_decay: float = 1.0
    click_floor: float = 0.02
    max_grade: float = 3.0
    cart_rate: float = 0.3
    purchase_rate: float = 0.5

    def examine(self, rank: int) -> float:
        """The chance a shopper looks at the product at ``rank`` (1: the first)."""
        return float(1.0 / rank**self.examine_decay)

    def attract(self, grade: float) -> float:
        """The chance a shopper clicks an examined product of that grade."""
        grade = min(max(grade, 0.0), self.max_grade)
        share: float = (2.0**grade - 1.0) / (2.0**self.max_grade - 1.0)
        return self.click_floor + (1.0 - self.click_floor) * share


@dataclass(frozen=True)
class SimulationOptions:
    inference_url: str
    key: str
    project: str
    judgments: Judgments
    searches: int = 1000
    shoppers: int = 4  # searches in flight at once
    rate: float = 0.0  # searches per second over all shoppers; 0: as fast as the service answers
    k: int = 10
    seed: int = 7
    model: ClickModel = field(default_factory=ClickModel)


@dataclass
class Search:
    """What one simulated shopper did."""

    number: int
    query: str
    request_id: str
    shown: list[str]
    clicks: list[str]
    carts: list[str]
    purchases: list[str]


@dataclass
class SimulationReport:
    searches: list[Search] = field(default_factory=list)
    failed: int = 0  # searches the service did not answer (after retries)
    events_refused: int = 0  # event batches /events did not take
    seconds: float = 0.0

    @property
    def clicks(self) -> int:
        return sum(len(s.clicks) for s in self.searches)

    @property
    def carts(self) -> int:
        return sum(len(s.carts) for s in self.searches)

    @property
    def purchases(self) -> int:
        return sum(len(s.purchases) for s in self.searches)


def read_judgments(path: Path) -> Judgments:
    """query -> product id -> grade, from a CSV with the columns query, product_id and grade."""
    if not path.is_file():
        raise ValidationFailed(f"no such file: {path}")
    judged: Judgments = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"query", "product_id", "grade"} - set(reader.fieldnames or [])
        if missing:
            raise ValidationFailed(f"{path.name} lacks the column(s) {', '.join(sorted(missing))}")
        for row in reader:
            try:
                grade = float(row["grade"])
            except ValueError as exc:
                raise ValidationFailed(
                    f"{path.name} row {reader.line_num}: grade {row['grade']!r} is not a number"
                ) from exc
            judged.setdefault(row["query"], {})[row["product_id"]] = grade
    if not judged:
        raise ValidationFailed(f"{path.name} holds no judgments")
    return judged


def shop(
    shown: list[str], judged: dict[str, float], model: ClickModel, rng: random.Random
) -> tuple[list[str], list[str], list[str]]:
    """(clicked, carted, bought) products of one search, in rank order."""
    clicks, carts, purchases = [], [], []
    for rank, product in enumerate(shown, start=1):
        grade = judged.get(product, 0.0)
        if rng.random() >= model.examine(rank) or rng.random() >= model.attract(grade):
            continue
        clicks.append(product)
        if rng.random() < model.cart_rate * min(grade, model.max_grade) / model.max_grade:
            carts.append(product)
            if rng.random() < model.purchase_rate:
                purchases.append(product)
    return clicks, carts, purchases


async def _post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], attempts: int = 5
) -> httpx.Response | None:
    """POST with retries on 429/503 and connection errors (honouring Retry-After); None if it never got
    through."""
    for attempt in range(attempts):
        try:
            response = await client.post(path, json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.2 * 2**attempt)
            continue
        if response.status_code in (429, 503):
            await asyncio.sleep(min(float(response.headers.get("Retry-After") or 0.2 * 2**attempt), 5.0))
            continue
        return response
    return None


async def simulate(
    options: SimulationOptions,
    progress: Callable[[int], None] | None = None,
    client: httpx.AsyncClient | None = None,
) -> SimulationReport:
    """Run ``options.searches`` searches; ``progress`` is called with each finished search's number.
    ``client``: the HTTP client to the inference service (default: one to ``options.inference_url``)."""
    if options.searches < 1 or options.shoppers < 1 or options.k < 1:
        raise ValidationFailed("searches, shoppers and k must be at least 1")
    queries = sorted(options.judgments)
    if not queries:
        raise ValidationFailed("no queries to search with")
    report = SimulationReport()
    started = time.monotonic()
    numbers: asyncio.Queue[int] = asyncio.Queue()
    for number in range(options.searches):
        numbers.put_nowait(number)
    headers = {"Authorization": f"Bearer {options.key}"}

    async def shopper(client: httpx.AsyncClient) -> None:
        while not numbers.empty():
            number = numbers.get_nowait()
            if options.rate > 0:  # searches start on a fixed schedule, whoever runs them
                await asyncio.sleep(max(0.0, started + number / options.rate - time.monotonic()))
            rng = random.Random(f"{options.seed}:{number}")
            query = queries[rng.randrange(len(queries))]
            user = f"shopper-{rng.randrange(1_000_000)}"
            answer = await _post(
                client,
                "/recommend",
                {"project": options.project, "query": query, "k": options.k, "user_id": user},
            )
            if answer is None or answer.status_code != 200:
                report.failed += 1
                continue
            body = answer.json()
            shown = [item["product_id"] for item in body["items"]]
            clicks, carts, purchases = shop(shown, options.judgments[query], options.model, rng)
            events = [
                {"event": kind, "product_id": product, "request_id": body["request_id"], "user_id": user,
                 "position": shown.index(product),
                 "event_id": f"sim-{options.seed}-{number}-{kind}-{product}"}
                for kind, products in (("click", clicks), ("cart", carts), ("purchase", purchases))
                for product in products
            ]  # fmt: skip
            if events:
                sent = await _post(client, "/events", {"project": options.project, "events": events})
                if sent is None or sent.status_code != 202:
                    report.events_refused += 1
            report.searches.append(Search(number, query, body["request_id"], shown, clicks, carts, purchases))
            if progress is not None:
                progress(number)

    if client is not None:
        client.headers.update(headers)
        await asyncio.gather(*(shopper(client) for _ in range(options.shoppers)))
    else:
        limits = httpx.Limits(max_connections=options.shoppers)
        async with httpx.AsyncClient(
            base_url=options.inference_url, headers=headers, timeout=30, limits=limits
        ) as own:
            await asyncio.gather(*(shopper(own) for _ in range(options.shoppers)))
    report.searches.sort(key=lambda s: s.number)
    report.seconds = time.monotonic() - started
    return report


class Traffic:
    """Simulated shoppers without end: batches of about five seconds of ``simulate``, each with its own
    seed, until ``stop()``; ``rate`` (searches per second) may change between batches. For the loop's
    demo, its benchmark and its tests, where shoppers go on while the platform retrains and deploys."""

    def __init__(self, options: SimulationOptions) -> None:
        if options.rate <= 0:
            raise ValidationFailed("continuous traffic needs a rate above 0 searches per second")
        self.options = options
        self.rate = options.rate
        self.searches = 0
        self.clicks = 0
        self.failed = 0
        self.events_refused = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        batch = 0
        async with httpx.AsyncClient(base_url=self.options.inference_url, timeout=30) as client:
            while not self._stopping.is_set():
                options = replace(
                    self.options,
                    seed=self.options.seed * 100_000 + batch,
                    rate=self.rate,
                    searches=max(1, int(self.rate * 5)),
                )
                report = await simulate(options, client=client)
                self.searches += len(report.searches)
                self.clicks += report.clicks
                self.failed += report.failed
                self.events_refused += report.events_refused
                batch += 1


def simulate_command(
    judgments: Annotated[
        Path, typer.Option(help="A CSV of query, product_id, grade: the queries to search with.")
    ],
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    searches: Annotated[int, typer.Option(min=1, help="How many searches in all.")] = 1000,
    shoppers: Annotated[int, typer.Option(min=1, max=256, help="Searches in flight at once.")] = 4,
    rate: Annotated[float, typer.Option(min=0, help="Searches per second (0: as fast as answered).")] = 0.0,
    k: Annotated[int, typer.Option(min=1, max=100, help="Products asked for per search.")] = 10,
    seed: Annotated[int, typer.Option(help="The same seed, the same shoppers.")] = 7,
    examine_decay: Annotated[
        float, typer.Option(min=0, help="Position bias: rank k is looked at with probability 1/k^decay.")
    ] = 1.0,
    click_floor: Annotated[
        float, typer.Option(min=0, max=1, help="The click chance of an examined product of grade 0.")
    ] = 0.02,
    max_grade: Annotated[float, typer.Option(min=1, help="The top grade of the judgments.")] = 3.0,
    cart_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Cart chance of a clicked top-grade product.")
    ] = 0.3,
    purchase_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Purchase chance of a carted product.")
    ] = 0.5,
    inference_url: Annotated[
        str | None,
        typer.Option("--inference-url", help="Default: RECFORGE_INFERENCE_URL, else this machine's port."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="A service key of the project (default: RECFORGE_SERVICE_KEY)."),
    ] = None,
) -> None:
    """Simulated shoppers search the project through /recommend with the judgments' queries, click with a
    position bias and by grade, cart and buy, and send it all to /events: impressions, online metrics and
    feedback data without real shoppers."""
    settings = load_settings()
    url = (inference_url or os.environ.get("RECFORGE_INFERENCE_URL") or
           f"http://{settings.host}:{settings.inference_port}").rstrip("/")  # fmt: skip
    secret = key or os.environ.get("RECFORGE_SERVICE_KEY")
    if not secret:
        fail(
            "give a service key of the project: --key, or RECFORGE_SERVICE_KEY "
            "(recforge keys create --role service --project P)"
        )
    try:
        judged = read_judgments(judgments)
    except ValidationFailed as exc:
        fail(exc.message)
    options = SimulationOptions(
        inference_url=url, key=secret, project=project, judgments=judged, searches=searches,
        shoppers=shoppers, rate=rate, k=k, seed=seed,
        model=ClickModel(examine_decay, click_floor, max_grade, cart_rate, purchase_rate),
    )  # fmt: skip
    with Progress(
        TextColumn("searches"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console
    ) as bar:
        task = bar.add_task("searches", total=searches)
        report = asyncio.run(simulate(options, lambda _: bar.advance(task)))
    done = len(report.searches)
    console.print(
        f"{done:,} searches in {report.seconds:.1f} s: {report.clicks:,} clicks, {report.carts:,} carts, "
        f"{report.purchases:,} purchases ({report.clicks / max(done, 1):.3f} clicks per search)"
    )
    if report.failed or report.events_refused:
        fail(f"{report.failed} searches were not answered and {report.events_refused} event batches refused")
