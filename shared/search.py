"""Search over short texts (product titles): BM25 from bm25s, shared by the trainer's baselines and
the inference service's hybrid retrieval; and exact top-k by dot product over embeddings, as the
trainer and the benchmarks rank a whole catalog."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import bm25s
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _english_stemmer() -> Callable[[str], str] | None:
    """PyStemmer's English stemmer when installed, else None."""
    try:
        module = importlib.import_module("Stemmer")
    except ImportError:
        return None
    stem: Callable[[str], str] = module.Stemmer("english").stemWord
    return stem


def _top_positive(scores: FloatArray, k: int) -> IntArray:
    """Positions of the ``k`` highest positive scores, best first; ties by position, also at the cut."""
    hits = np.flatnonzero(scores > 0)
    if hits.size > k:
        values = scores[hits]
        kth = np.partition(values, hits.size - k)[hits.size - k]
        above = hits[values > kth]
        hits = np.concatenate((above, hits[values == kth][: k - above.size]))
    return hits[np.lexsort((hits, -scores[hits]))]


class BM25Index:
    """BM25 (``bm25s``, Lucene variant) over a corpus of short texts such as product titles, keyed by id.

    Text is lowercased, split into word tokens of 2+ characters, English stopwords removed, and
    stemmed when PyStemmer is installed (``stemmed`` says which). Query words absent from the corpus
    are ignored.
    """

    def __init__(self, ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        if not ids:
            raise ValueError("empty corpus")
        self.ids: list[str] = list(ids)
        self._position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        if len(self._position) != len(self.ids):
            raise ValueError("duplicate document ids")
        stemmer = _english_stemmer()
        self.stemmed = stemmer is not None
        self._tokenizer = bm25s.tokenization.Tokenizer(lower=True, stopwords="en", stemmer=stemmer)
        corpus = self._tokenizer.tokenize(
            list(texts), update_vocab=True, return_as="tuple", show_progress=False
        )
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene", backend="numpy")
        self._bm25.index(corpus, show_progress=False)
        self._ids_array = np.asarray(self.ids, dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def _token_ids(self, queries: Sequence[str]) -> list[list[int]]:
        """Vocabulary ids of each query's tokens; words not in the corpus are dropped."""
        tokens: list[list[int]] = self._tokenizer.tokenize(
            list(queries), update_vocab=False, return_as="ids", show_progress=False, allow_empty=False
        )
        return tokens

    def _scores(self, token_ids: list[int]) -> FloatArray:
        if not token_ids:
            return np.zeros(len(self.ids))
        return np.asarray(self._bm25.get_scores(token_ids), dtype=np.float64)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` documents of the whole corpus for each query, best first.

        Only documents sharing a term with the query (score > 0) are returned, so a list may be shorter
        than ``k``; ``k`` may exceed the corpus size. Equal scores are ordered by corpus position.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        # Scores come from bm25s; the top-k is selected here among positive scores, since bm25s's numpy
        # top-k (argpartition over a mostly-zero score vector) is about 25x slower on 50k docs.
        results: list[list[tuple[str, float]]] = []
        for tokens in self._token_ids(queries):
            scores = self._scores(tokens)
            top = _top_positive(scores, k)
            results.append(list(zip(self._ids_array[top].tolist(), scores[top].tolist(), strict=True)))
        return results

    def query_scores(self, query: str) -> FloatArray:
        """BM25 score of ``query`` for every document, in corpus order (0 where no term matches)."""
        return self._scores(self._token_ids([query])[0])

    def score(self, query: str, ids: Sequence[str]) -> FloatArray:
        """BM25 score of ``query`` for each of ``ids`` (e.g. a query's judged candidates), as in ``search``.

        Raises KeyError for an id not in the index.
        """
        try:
            positions = np.fromiter((self._position[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise KeyError(f"unknown document id {exc.args[0]!r}") from None
        return self._scores(self._token_ids([query])[0])[positions]


def dense_top_k(
    query_ids: Sequence[str],
    query_vectors: npt.NDArray[np.float32],
    ids: Sequence[str],
    vectors: npt.NDArray[np.float32],
    k: int,
    exclude: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Each query's ``k`` best documents by dot product (exact), as a run: query id -> doc id -> score.

    A query's ``exclude`` documents (say, what the user has already seen) are left out."""
    exclude = exclude or {}
    run: dict[str, dict[str, float]] = {}
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    k = min(k, len(ids))
    for start in range(0, len(query_ids), 256):
        scores = query_vectors[start : start + 256] @ vectors.T
        for row, qid in enumerate(query_ids[start : start + 256]):
            s = scores[row]
            for doc_id in exclude.get(qid, ()):
                if doc_id in position:
                    s[position[doc_id]] = -np.inf
            top = np.argpartition(-s, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
            run[qid] = {ids[i]: float(s[i]) for i in top if np.isfinite(s[i])}
    return run
