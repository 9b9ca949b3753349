"""Operation counting (MAC / AC / SynOps) and energy reports for any spiking ``nn.Module``.

    report = snnzoo.energy.profile(model, x)          # x: [B, ...]; figures per image
    report.energy_mj('paper', '45nm_fp32'); report.energy_mj('strict', '45nm_int8')
    print(report.to_markdown('strict')); report.save('out/', stem='spikformer')

See :mod:`snnzoo.energy.counter` for what is counted and how, and :mod:`snnzoo.energy.report` for the conventions.
"""
from .counter import Profiler, profile
from .report import CONVENTIONS, PRESETS, EnergyPreset, EnergyReport, get_preset

__all__ = ['profile', 'Profiler', 'EnergyReport', 'EnergyPreset', 'PRESETS', 'CONVENTIONS', 'get_preset']
