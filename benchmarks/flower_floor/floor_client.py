"""A ClientApp that imports only flwr (and numpy, which flwr imports) and answers every job at
once with an adapter of the shapes it was sent: Flower's own cost per message, for
``benchmarks/runtime_overhead.py``. Its arrays are new and all distinct (the sent ones plus
noise), as a trained update's are: Flower stores objects by content and pushes only those the
receiver lacks, so an echo of the very arrays sent would travel back for free, and arrays
made equal (LoRA's zero B factors plus 1) would travel once per shape.
fedlora's record names are written out here (``fedlora.flower.records``,
``fedlora.flower.client_app``) so that nothing of fedlora is imported."""

from __future__ import annotations

import os

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    return Message(RecordDict({"partition-id": ConfigRecord({"id": partition})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    sent, reply, noise = message.content, RecordDict(), np.random.default_rng()
    for name in ("adapter", "frozen"):  # the factors it was sent, plus noise: new, distinct
        arrays = sent.array_records[name]  # (Flower does not carry again what it holds)
        sent_arrays = {k: a.numpy() for k, a in arrays.items()}
        reply.array_records[name] = ArrayRecord(
            {k: Array(a + noise.random(a.shape, dtype=a.dtype)) for k, a in sent_arrays.items()}
        )
        reply.config_records[f"{name}.alphas"] = sent.config_records[f"{name}.alphas"]
    job = sent.config_records["job"]["job"]
    result = {"job": job, "examples": 1, "loss": 0.0, "served": "floor", "pid": os.getpid()}
    result["train_s"] = 0.0  # nothing trained: all of its update is Flower's
    reply.config_records["result"] = ConfigRecord(result)  # type: ignore[arg-type]
    return Message(reply, reply_to=message)
