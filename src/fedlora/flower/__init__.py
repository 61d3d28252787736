"""The Flower runtime: a ServerApp that drives the server core over Flower's Grid, and a
ClientApp that trains LoRA adapters of any rank on its node's partition."""
