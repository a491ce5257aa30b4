from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

ProjectRef = Field(min_length=1, max_length=200, description="The project's id or slug.")

# What one request may carry: models read at most a few hundred tokens of a text, so longer texts only
# cost memory and tokenizer time (422 names the field); a list is as long as one batch of work should be.
TEXT_CHARS = 8192
ID_CHARS = 200
Text = Annotated[str, StringConstraints(min_length=1, max_length=TEXT_CHARS)]
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=ID_CHARS)]
PROPERTIES = 32
PROPERTY_CHARS = 1000


class FilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(
        None,
        max_length=500,
        description="A category or a level above it: 'Tools' matches 'Tools > Saws'. Levels are split at "
        "'>' or '/', case is ignored; a category no product is in answers no items and a warning.",
    )
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    in_stock: bool | None = None


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = ProjectRef
    query: str | None = Field(None, min_length=1, max_length=1000)
    user_id: str | None = Field(None, min_length=1, max_length=200)
    history: list[ProductId] | None = Field(
        None, max_length=1000, description="Product ids the user saw or bought, oldest first."
    )
    k: int = Field(10, ge=1, le=200)
    filters: FilterSpec = Field(default_factory=FilterSpec)
    rerank: bool = Field(False, description="Rerank the top candidates with the deployed cross-encoder.")
    candidates: int = Field(100, ge=1, le=2000, description="How many each retriever returns before fusion.")
    retrieval: Literal["hybrid", "dense", "lexical"] = Field(
        "hybrid",
        description="For a query: dense and BM25 fused by reciprocal rank (hybrid), or one of them alone. "
        "A user's history is always matched densely.",
    )

    @model_validator(mode="after")
    def _something_to_go_on(self) -> RecommendRequest:
        if self.query is None and self.user_id is None and not self.history:
            raise ValueError("give a query, a user_id or a history")
        if self.retrieval == "lexical" and self.query is None:
            raise ValueError("lexical retrieval needs a query")
        return self


class Item(BaseModel):
    product_id: str
    title: str
    score: float


class RecommendResponse(BaseModel):
    request_id: str
    model_version: str = Field(description="The retriever version that answered (a canary or the primary).")
    reranker_version: str | None = None
    items: list[Item]
    took_ms: float
    explored: bool = Field(
        False,
        description="The items are the top k in a random order: the project explores (its "
        "exploration_percent), so that feedback can tell a position's pull from a product's.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the request asked for that the catalog lacks, e.g. a filter category no product "
        "is in (which leaves the items empty).",
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = ProjectRef
    query: str = Field(min_length=1, max_length=1000)
    product_ids: list[ProductId] | None = Field(None, min_length=1, max_length=1000)
    documents: list[Text] | None = Field(
        None, min_length=1, max_length=1000, description="Texts, instead of ids."
    )

    @model_validator(mode="after")
    def _one_of(self) -> ScoreRequest:
        if (self.product_ids is None) == (self.documents is None):
            raise ValueError("give either product_ids or documents")
        return self


class ScoreResponse(BaseModel):
    model_version: str
    scores: list[float]
    took_ms: float


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = ProjectRef
    texts: list[Text] = Field(min_length=1, max_length=1000)


class Classification(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model_version: str
    results: list[Classification]
    took_ms: float


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = ProjectRef
    query: str = Field(min_length=1, max_length=1000)
    documents: list[Text] = Field(min_length=1, max_length=1000)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    product_ids: list[ProductId] | None = Field(
        None,
        max_length=1000,
        description="The product each document describes, in the same order. Given, the ranking is logged "
        "as an impression under the request's id (X-Request-ID), so the clicks, carts and purchases sent to "
        "/events with that id count for the version that reranked.",
    )

    @model_validator(mode="after")
    def _one_id_per_document(self) -> RerankRequest:
        if self.product_ids is not None and len(self.product_ids) != len(self.documents):
            raise ValueError(
                f"product_ids has {len(self.product_ids)} ids for {len(self.documents)} documents: "
                "give one for each document"
            )
        return self


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class RerankResponse(BaseModel):
    model_version: str
    results: list[RerankResult]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. `model` is the project's id or slug."""

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)] = Field(
        description=f"A text or a list of at most 2,048 texts of at most {TEXT_CHARS:,} characters each "
        "(token arrays are not accepted)."
    )
    model: str = ProjectRef
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=ID_CHARS)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


MAX_POSITION = 100_000
MAX_PROPERTY_INT = 2**53  # integers JSON readers everywhere take exactly
EventType = Literal["impression", "click", "cart", "purchase"]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: EventType = Field(
        validation_alias=AliasChoices("event", "type"),
        description="What the shopper did (also accepted as `type`); the interactions dataset's column "
        "has the same name.",
    )
    product_id: str = Field(min_length=1, max_length=200)
    request_id: str | None = Field(
        None, max_length=64, description="The id of the request that served the product (its X-Request-ID)."
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Your id for the event: an event sent again under the same id (a retry) is stored once.",
    )
    occurred_at: AwareDatetime | None = Field(
        None,
        description="When the shopper acted, by your clock (default: when RecForge received it). Events "
        "count for the request they name whatever the time says, so a skewed clock moves no metric.",
    )
    user_id: str | None = Field(None, max_length=200)
    position: int | None = Field(
        None, ge=0, le=MAX_POSITION, description="Where the product was shown (0: first)."
    )
    value: float | None = Field(
        None, allow_inf_nan=False, ge=-1e15, le=1e15, description="An amount, e.g. a purchase's price."
    )
    properties: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description=f"At most {PROPERTIES} of them; names of at most 64 characters, texts of at most "
        f"{PROPERTY_CHARS}.",
    )

    @field_validator("properties")
    @classmethod
    def _bounded(
        cls, value: dict[str, str | int | float | bool | None]
    ) -> dict[str, str | int | float | bool | None]:
        if len(value) > PROPERTIES:
            raise ValueError(f"at most {PROPERTIES} properties")
        for name, item in value.items():
            if len(name) > 64:
                raise ValueError(f"property name {name[:20]!r}... is longer than 64 characters")
            if isinstance(item, str) and len(item) > PROPERTY_CHARS:
                raise ValueError(f"property {name!r} is longer than {PROPERTY_CHARS} characters")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_PROPERTY_INT:
                raise ValueError(f"property {name!r} is larger than {MAX_PROPERTY_INT} in magnitude")
        return value


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = ProjectRef
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events stored now.")
    duplicates: int = Field(0, description="Events whose event_id was stored before: not stored again.")
