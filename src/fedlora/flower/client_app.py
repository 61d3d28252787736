"""The ClientApp: trains the adapter it is sent, at whatever rank, on its node's partition.

The node's ``partition-id`` (its ``--node-config``) picks the partition, made by the same
partitioner and seed as the simulator; the job's batches and seed are derived from the
experiment seed and the job id exactly as the simulator derives them, so a job trains the same
on either runtime. The data and the backbone are built once per process and kept resident for
every later message of the same experiment. A node is sent the experiment without the server's
own readouts (``eval.choices``, ``eval.generate``: the server reads the global at the start and
the end), so it needs no questions file and builds no reader. A job that fails is answered with
Flower's error content, so the server counts it lost and carries on.

A deployed ClientApp is a new process per message (Flower 1.42), so this module imports only
flwr and light fedlora modules: when the node config names a ``resident-socket`` and a
resident trainer listens there (``fedlora serve-node``, :mod:`fedlora.flower.resident`), the
job is handed to it and the model stays loaded between messages; otherwise (no such key, or
nothing listening) the job trains here, importing torch and loading the model in this process.
The reply says which (:class:`~fedlora.flower.records.ResultFields`: ``served``, ``pid``,
``loads``, and ``train_s``, the seconds of training alone), and the server logs it with the
job's arrival.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedlora.flower.records import JobFields, ResultFields
from fedlora.flower.resident import ask

if TYPE_CHECKING:
    from fedlora.config import ExperimentConfig
    from fedlora.experiment import Prepared

EXPERIMENT = "experiment"  # the config record that carries the experiment's config as JSON
PARTITION_KEY = "partition-id"
RANK_KEY = "rank"  # node config: the LoRA rank this node trains (clients.rank_by: node)
RESIDENT_KEY = "resident-socket"  # node config: the Unix socket of the node's resident trainer


class KeptExperiment:
    """The experiment this process last trained for: its data and backbone, prepared on its
    first job and kept for every later one; ``loads`` counts the preparations."""

    def __init__(self) -> None:
        self.config_json: str | None = None
        self.prepared: Prepared | None = None
        self.loads = 0

    def __call__(self, config_json: str) -> Prepared:
        if self.prepared is None or config_json != self.config_json:
            from fedlora.config import ExperimentConfig
            from fedlora.experiment import prepare

            self.prepared = None  # a new experiment replaces the last one's model
            self.prepared = prepare(ExperimentConfig.model_validate_json(config_json))
            self.config_json = config_json
            self.loads += 1
        return self.prepared


kept = KeptExperiment()  # this process's


def node_experiment(config: ExperimentConfig) -> str:
    """The experiment as JSON for the nodes: ``config`` less what only the server does (the
    readouts of the global at the start and the end)."""
    readouts = config.eval.model_copy(update={"choices": None, "generate": None})
    return config.model_copy(update={"eval": readouts}).model_dump_json()


def put_experiment(content: RecordDict, config_json: str) -> None:
    content.config_records[EXPERIMENT] = ConfigRecord({"config": config_json})


def partition_of(context: Context) -> int:
    if PARTITION_KEY not in context.node_config:
        raise ValueError(
            f"node {context.node_id} has no {PARTITION_KEY!r} in its node config"
            " (start the SuperNode with --node-config 'partition-id=K')"
        )
    return int(context.node_config[PARTITION_KEY])


def train_content(content: RecordDict, partition: int, served: str = "in-app") -> RecordDict:
    """Train the job ``content`` describes on ``partition``; the reply's content, which says
    it was ``served`` by this process (``"in-app"``: a ClientApp's, ``"resident"``: a resident
    trainer's)."""
    from fedlora.client.protocol import plan_job
    from fedlora.flower.records import get_state, put_state

    fields = JobFields.get(content)
    if fields.client != partition:
        raise ValueError(
            f"job {fields.job} is for client {fields.client}, this node holds partition {partition}"
        )
    prepared = kept(str(content.config_records[EXPERIMENT]["config"]))
    clients = len(prepared.data.client_train)
    if not 0 <= partition < clients:
        raise ValueError(f"{PARTITION_KEY} {partition} is outside the {clients} clients")
    batches, seed = plan_job(prepared.learner, prepared.config.seed, fields.client, fields.job)
    start = time.perf_counter()
    result = prepared.learner.train(get_state(content), batches, seed)
    where = (served, os.getpid(), kept.loads, time.perf_counter() - start)
    reply = RecordDict()
    put_state(reply, result.state)
    ResultFields(fields.job, result.examples, result.loss, *where).put(reply)
    return reply


app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    """Which partition (client id) this node holds, and the rank it trains if its node config
    says (``clients.rank_by: node``): the server maps clients to nodes by the partition."""
    said = ConfigRecord({"id": partition_of(context)})
    if RANK_KEY in context.node_config:
        said[RANK_KEY] = int(context.node_config[RANK_KEY])
    return Message(RecordDict({PARTITION_KEY: said}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    try:
        partition = partition_of(context)
        reply = None
        if RESIDENT_KEY in context.node_config:
            socket_path = Path(str(context.node_config[RESIDENT_KEY]))
            reply = ask(socket_path, message.content, partition, message.metadata.ttl)
        if reply is None:  # no resident trainer listens: train here, loading the model
            reply = train_content(message.content, partition)
        return Message(reply, reply_to=message)
    except Exception as error:  # any failure is a lost job for the server, never a crash here
        reason = f"{type(error).__name__}: {error}"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
