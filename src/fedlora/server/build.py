"""One server core from a config: the aggregator, the policy and the client ranks it names,
built the same way for every runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedlora import aggregation, policies
from fedlora.adapters import AdapterState
from fedlora.client.protocol import Evaluator
from fedlora.config import ExperimentConfig
from fedlora.outcome import Outcome
from fedlora.server.core import ServerCore
from fedlora.server.events import EventSink


def build_core(
    config: ExperimentConfig,
    initial: AdapterState,
    client_sizes: Sequence[int],
    ranks: Sequence[int],
    evaluator: Evaluator,
    log: EventSink,
    *,
    policy: policies.Policy | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> ServerCore:
    """The config's policy over clients holding ``client_sizes`` examples at ``ranks``, and
    its aggregator, in a core that starts from ``initial``."""
    aggregator = aggregation.create(
        config.server.aggregator, config.lora, config.global_rank, config.server.aggregator_options
    )
    clients = [policies.ClientInfo(c, size) for c, size in enumerate(client_sizes)]
    policy = policy or policies.create(config.server.policy, config.server, clients, config.seed)
    return ServerCore(config, aggregator, policy, initial, ranks, evaluator, log, progress)
