"""Operation counting (MAC / AC / SynOps) and energy reports for any spiking ``nn.Module``."""
