"""ONNX text models for the inference service: sentence embeddings and sequence-classification logits.

Runtime side only: onnxruntime, tokenizers and numpy. Never imports torch or transformers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

TextInput = str | tuple[str, str]
IntArray = npt.NDArray[np.integer[Any]]
FloatArray = npt.NDArray[np.float32]
Reducer = Callable[[FloatArray, IntArray], FloatArray]

_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SMALL_INPUTS = 2  # calls of at most this many inputs run on the one-thread session (CPU)
_NUMPY_INT_TYPES: dict[str, type[np.integer[Any]]] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def providers(prefer_gpu: bool = True) -> list[str]:
    """Execution providers to ask for: CUDA first when available and preferred, then CPU."""
    available = ort.get_available_providers()
    chosen: list[str] = []
    if prefer_gpu and "CUDAExecutionProvider" in available:
        chosen.append("CUDAExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


_default_providers = providers


def _pad_token_id(tokenizer: Tokenizer, tokenizer_dir: Path) -> int:
    """The pad id of the tokenizer files: padding config, then the declared pad token, then common names."""
    padding = tokenizer.padding
    if padding is not None and "pad_id" in padding:
        return int(padding["pad_id"])
    names: list[str] = []
    for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tokenizer_dir / file_name
        if not path.is_file():
            continue
        token = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            names.append(token)
    names += ["[PAD]", "<pad>"]
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    return 0


class OnnxTextModel:
    """An exported transformer graph plus its tokenizer.

    Inputs are truncated to `max_length` tokens, sorted by length, batched and padded to the longest
    sequence of each batch; results come back in the caller's order."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_dir: Path,
        *,
        max_length: int = 128,
        threads: int | None = None,
        providers: list[str] | None = None,
        spinning: bool = True,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        if not spinning:
            # idle threads of one session would otherwise spin on cores the next session needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = providers if providers is not None else _default_providers()
        self.model_path = Path(model_path)
        self.max_length = max_length
        self.session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=requested)
        # A few short inputs (one shopper's query) run faster on one thread than handed out to several:
        # waking the pool's threads for each of the graph's small operators costs more than they save.
        # So on the CPU a second session of one thread serves inputs of up to SMALL_INPUTS.
        self._small: ort.InferenceSession | None = None
        if options.intra_op_num_threads > 1 and self.session.get_providers()[0] == "CPUExecutionProvider":
            single = ort.SessionOptions()
            single.intra_op_num_threads = 1
            single.inter_op_num_threads = 1
            single.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._small = ort.InferenceSession(
                str(self.model_path), sess_options=single, providers=["CPUExecutionProvider"]
            )

        tokenizer_dir = Path(tokenizer_dir)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.pad_id = _pad_token_id(self.tokenizer, tokenizer_dir)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        # seconds the last call spent tokenizing and padding (the rest ran the graph): a profile's split,
        # meaningful where calls do not overlap, as a model's micro-batcher runs them
        self.last_tokenize_s = 0.0

        self._input_types: dict[str, type[np.integer[Any]]] = {}
        for node in self.session.get_inputs():
            if node.name not in _KNOWN_INPUTS:
                raise ValueError(f"{self.model_path.name}: unsupported graph input {node.name!r}")
            self._input_types[node.name] = _NUMPY_INT_TYPES.get(node.type, np.int64)
        self._outputs: list[str] = [str(node.name) for node in self.session.get_outputs()]
        self._output_shapes: dict[str, list[Any]] = {
            str(node.name): list(node.shape or []) for node in self.session.get_outputs()
        }

    @property
    def provider(self) -> str:
        """The execution provider the session actually runs on."""
        return str(self.session.get_providers()[0])

    @property
    def input_names(self) -> list[str]:
        return list(self._input_types)

    def _output(self, preferred: str, rank: int) -> str:
        """`preferred` when the graph has it, else its first output of the given rank."""
        if preferred in self._outputs:
            return preferred
        for name in self._outputs:
            if len(self._output_shapes[name]) == rank:
                return name
        raise ValueError(f"{self.model_path.name} has no {preferred!r} output (outputs: {self._outputs})")

    def _feeds(self, encodings: Sequence[Encoding]) -> tuple[dict[str, IntArray], IntArray]:
        """Graph inputs for one batch, padded to its longest sequence, and the attention mask."""
        longest = max(len(encoding.ids) for encoding in encodings)
        shape = (len(encodings), longest)
        ids = np.full(shape, self.pad_id, dtype=np.int64)
        mask = np.zeros(shape, dtype=np.int64)
        types = np.zeros(shape, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = encoding.attention_mask
            types[row, :length] = encoding.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {name: arrays[name].astype(dtype, copy=False) for name, dtype in self._input_types.items()}
        return feeds, mask

    def _run(
        self,
        inputs: Sequence[TextInput],
        batch_size: int,
        output: str,
        reduce: Reducer,
    ) -> list[FloatArray]:
        """Per-input rows of `reduce(output, attention_mask)`, in the caller's order."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        started = time.perf_counter()
        encodings = self.tokenizer.encode_batch(list(inputs))
        tokenize = time.perf_counter() - started
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids), reverse=True)
        rows: list[FloatArray] = [np.empty(0, dtype=np.float32)] * len(encodings)
        session = self._small if self._small is not None and len(inputs) <= SMALL_INPUTS else self.session
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            started = time.perf_counter()
            feeds, mask = self._feeds([encodings[i] for i in chunk])
            tokenize += time.perf_counter() - started
            (result,) = session.run([output], feeds)
            reduced = reduce(np.asarray(result, dtype=np.float32), mask)
            for position, index in enumerate(chunk):
                rows[index] = reduced[position]
        self.last_tokenize_s = tokenize
        return rows

    def _width(self, output: str) -> int:
        shape = self._output_shapes.get(output, [])
        last = shape[-1] if shape else None
        return last if isinstance(last, int) else 0

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> FloatArray:
        """L2-normalised mean-pooled token embeddings, shape (n, hidden), float32."""
        output = self._output("last_hidden_state", rank=3)
        rows = self._run(texts, batch_size, output, _mean_pool_normalise)
        if not rows:
            return np.zeros((0, self._width(output)), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def classify_logits(
        self, texts: Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 64
    ) -> FloatArray:
        """Sequence-classification logits, shape (n, num_labels), for texts or (query, document) pairs."""
        output = self._output("logits", rank=2)
        rows = self._run(texts, batch_size, output, _identity)
        if not rows:
            return np.zeros((0, self._width(output)), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> FloatArray:
        """Logits of (query, document) pairs: shape (n,) for a single-score head, else (n, num_labels)."""
        logits = self.classify_logits(pairs, batch_size=batch_size)
        if logits.ndim == 2 and logits.shape[1] == 1:
            return logits[:, 0]
        return logits


def _identity(values: FloatArray, mask: IntArray) -> FloatArray:
    return values


def _mean_pool_normalise(hidden: FloatArray, mask: IntArray) -> FloatArray:
    """Mean over unmasked tokens, then L2 normalisation (as sentence-transformers' MiniLM models)."""
    weights = mask.astype(np.float32)[:, :, None]
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    normalised: FloatArray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return normalised
