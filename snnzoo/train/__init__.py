"""The Hydra training and evaluation entry points (``snnzoo-train``, ``snnzoo-eval``)."""
