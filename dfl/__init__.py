"""dfl: decentralized, poisoning-resistant federated learning on per-node signed chains."""

__version__ = "0.1.0"
