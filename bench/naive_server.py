"""The naive baseline server for bench/serving.py: FastAPI + torch eager, one forward pass per request,
no batching. `python bench/naive_server.py --port 8010`"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModel, AutoTokenizer

from services.trainer.device import setup_threads
from services.trainer.finetune.base import mean_pool, resolve_base_model
from shared.training import DEFAULT_BASE_MODEL


class Body(BaseModel):
    input: str | list[str]
    model: str = "naive"


def build(model_name: str) -> FastAPI:
    setup_threads()
    path = resolve_base_model(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: Body) -> dict[str, object]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        with torch.inference_mode():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
            vectors = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)
            ],
            "model": body.model,
        }

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--model", default=DEFAULT_BASE_MODEL)
    args = parser.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")
