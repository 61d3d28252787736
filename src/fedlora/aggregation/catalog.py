"""The aggregator names ``server.aggregator`` accepts, known without importing torch.

Each name maps to the module that registers its class; :func:`fedlora.aggregation.create`
imports that module on first use, so ``fedlora list`` and config validation stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedlora.registry import Registry

if TYPE_CHECKING:
    from fedlora.aggregation.base import Aggregator

registry: Registry[Aggregator] = Registry(
    "server.aggregator",
    modules={
        "fedavg": "fedlora.aggregation.fedavg",
        "zeropad": "fedlora.aggregation.fedavg",
        "reppad": "fedlora.aggregation.fedavg",
        "hetlora": "fedlora.aggregation.fedavg",
        "fedsa": "fedlora.aggregation.fedavg",
        "fedex": "fedlora.aggregation.fedex",
        "flora": "fedlora.aggregation.flora",
        "hlora": "fedlora.aggregation.hlora",
        "flexlora": "fedlora.aggregation.hlora",
        "raflora": "fedlora.aggregation.raflora",
    },
)

# What each aggregator is, and whose paper, in one line (``fedlora list``).
DESCRIPTIONS = {
    "fedavg": "mean of A and of B, same-rank clients only (FedIT: Zhang et al., ICASSP 2024)",
    "zeropad": "pad every client to the global rank with zeros, then average A and B",
    "reppad": "pad with replicated components instead of zeros (Byun & Lee, NAACL 2025)",
    "hetlora": "zero-padding, results weighted by their norms, optional local rank"
    " self-pruning (HetLoRA: Cho et al., EMNLP 2024)",
    "fedsa": "share A only, each client keeps its B (FedSA-LoRA: Guo et al., ICLR 2025)",
    "fedex": "FedIT's means plus the exact residual in the frozen weights (FedEx-LoRA: Singhal"
    " et al., ACL 2025)",
    "flora": "stack the clients' factors, fold the exact sum into the base (FLoRA: Wang et al.,"
    " NeurIPS 2024)",
    "hlora": "best global-rank SVD approximation of the exact sum (HLoRA)",
    "flexlora": "the same merge as hlora (FlexLoRA: Bai et al., NeurIPS 2024)",
    "raflora": "hlora's merge with each rank partition averaged over the clients that have it,"
    " against rank collapse (raFLoRA: Wu et al., arXiv 2602.13486, 2026)",
}


def available() -> list[str]:
    """The aggregator names (the values ``server.aggregator`` accepts)."""
    return registry.available()


def describe(name: str) -> str:
    """One line: what the aggregator ``name`` does and whose paper it follows."""
    return DESCRIPTIONS[name]
