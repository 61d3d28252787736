"""fedlora: federated LoRA fine-tuning across clients that differ in compute, bandwidth and data."""

__version__ = "0.1.0"
