"""Client side: the resident backbone and local training."""
