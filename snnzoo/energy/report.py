"""The energy report: per-layer MAC / AC / SynOps counts, energy in two conventions, and their outputs.

Conventions (``E_MAC``, ``E_AC`` from a preset, in pJ; every figure per image):

- ``'paper'`` (the Spikformer / Spike-driven Transformer / QKFormer papers):
  ``E = E_MAC FLOPs(first layer) + E_AC sum_{other layers l} fr_l FLOPs_l``; the first layer is the first counted
  op of the forward pass, charged as MAC when its input is real-valued (the encoding layer reading images; when its
  input holds spikes or integer spike counts, e.g. DVS frames, it is an AC layer like the others); ``fr_l`` is the
  non-zero fraction of the layer's input, averaged over T.
- ``'strict'`` (the syops-counter convention): ``E = E_MAC MACs + E_AC ACs`` with every op classified by its operands:
  only inputs whose values are all in {0, 1} give ACs (counted exactly: non-zero spikes x fan-out actually used,
  coincidences for spike x spike); anything else (images, SEW integer sums, membrane shortcuts) gives MACs.

SynOps are the exact spike-driven accumulates of the strict convention (``totals['synops'] == totals['acs']``).
"""
import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

__all__ = ['EnergyPreset', 'EnergyReport', 'PRESETS', 'CONVENTIONS', 'get_preset']


@dataclass(frozen=True)
class EnergyPreset:
    """Energy per operation in picojoules."""
    name: str
    mac_pj: float
    ac_pj: float
    source: str = 'Horowitz, "Computing\'s energy problem", ISSCC 2014 (45 nm)'


PRESETS = {
    '45nm_fp32': EnergyPreset('45nm_fp32', 4.6, 0.9),
    '45nm_fp16': EnergyPreset('45nm_fp16', 1.5, 0.4),
    '45nm_int8': EnergyPreset('45nm_int8', 0.23, 0.03),
}

CONVENTIONS = {
    'paper': "paper convention (Spikformer / SDT / QKFormer papers): E = E_MAC x FLOPs(first layer, real-valued input) "
             "+ E_AC x sum over the other layers of fr x FLOPs, fr = non-zero fraction of the layer's input",
    'strict': "strict convention (syops-counter): E = E_MAC x MACs + E_AC x ACs; only inputs with all values in "
              "{0, 1} give ACs (non-zero spikes x fan-out used; coincidences for spike x spike), any other input MACs",
}

PresetLike = Union[str, EnergyPreset, tuple]

_ROW_KEYS = ('name', 'module', 'op', 'index', 'calls', 'input_shape', 'flops', 'macs', 'acs', 'synops', 'input_fr',
             'binary_input', 'paper_macs', 'paper_acs')


def get_preset(preset: PresetLike) -> EnergyPreset:
    """A preset by name, an :class:`EnergyPreset`, or a ``(mac_pj, ac_pj)`` pair."""
    if isinstance(preset, EnergyPreset):
        return preset
    if isinstance(preset, tuple) and len(preset) == 2:
        return EnergyPreset('custom', float(preset[0]), float(preset[1]), source='user-supplied')
    if preset not in PRESETS:
        raise ValueError(f"unknown energy preset {preset!r}; valid presets are {list(PRESETS)} or a (mac_pj, ac_pj) "
                         f"pair")
    return PRESETS[preset]


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid conventions are {list(CONVENTIONS)}")
    return convention


class EnergyReport:
    """Per-image operation counts of one model on its profiled input, and the energy they cost.

    ``rows``: one dict per (module, op, n-th call of that op in the module's forward), in execution order, with
    ``name`` (module path, '' for the model itself), ``module`` (class), ``op`` (``conv2d``, ``linear`` with a
    weight operand, ``matmul`` between two activations, ...), ``index``, ``calls``, ``input_shape`` (per batch),
    ``flops`` (MAC-equivalents as an ANN computes it), ``macs`` / ``acs`` (strict classification, exact),
    ``synops`` (= ``acs``), ``input_fr`` (non-zero fraction of the input), ``binary_input`` (counted as AC), and
    ``paper_macs`` / ``paper_acs`` (the paper convention: FLOPs of the first layer, fr x FLOPs elsewhere).
    ``totals``: sums of ``flops, macs, acs, synops, paper_macs, paper_acs``. ``images``: how many were profiled.
    """

    def __init__(self, rows: list, images: int, meta: Optional[dict] = None):
        self.rows = rows
        self.images = images
        self.meta = dict(meta or {})
        self.totals = {k: sum(r[k] for r in rows) for k in ('flops', 'macs', 'acs', 'synops', 'paper_macs',
                                                             'paper_acs')}

    @classmethod
    def from_counts(cls, rows: list, images: int, meta: Optional[dict] = None) -> 'EnergyReport':
        """Build from counts summed over ``images`` (rows carry ``flops, macs, acs, fr_flops, binary_input`` and, for
        the first row, ``integer_input``)."""
        out = []
        for i, r in enumerate(rows):
            fr = r['fr_flops'] / r['flops'] if r['flops'] else 0.0
            first_mac = i == 0 and not r['integer_input']
            row = dict(r, flops=r['flops'] / images, macs=r['macs'] / images, acs=r['acs'] / images,
                       synops=r['acs'] / images, input_fr=fr,
                       paper_macs=r['flops'] / images if first_mac else 0.0,
                       paper_acs=0.0 if first_mac else r['fr_flops'] / images)
            out.append({k: row[k] for k in _ROW_KEYS})
        return cls(out, images, meta)

    def energy_mj(self, convention: str = 'paper', preset: PresetLike = '45nm_fp32') -> float:
        """Energy per image in millijoules under ``convention`` (``'paper'`` or ``'strict'``) and ``preset``."""
        return sum(self.row_energy_mj(r, convention, preset) for r in self.rows)

    def row_energy_mj(self, row: dict, convention: str = 'paper', preset: PresetLike = '45nm_fp32') -> float:
        p = get_preset(preset)
        macs, acs = self._counts(row, convention)
        return (p.mac_pj * macs + p.ac_pj * acs) * 1e-9

    @staticmethod
    def _counts(row: dict, convention: str) -> tuple:
        if _check_convention(convention) == 'paper':
            return row['paper_macs'], row['paper_acs']
        return row['macs'], row['acs']

    def summary(self, convention: str = 'paper', preset: PresetLike = '45nm_fp32') -> str:
        """One paragraph: both conventions' energy, with the chosen one first, plus FLOPs and SynOps."""
        p = get_preset(preset)
        other = 'strict' if _check_convention(convention) == 'paper' else 'paper'
        t = self.totals
        return (f"Energy per image ({p.name}: E_MAC {p.mac_pj} pJ, E_AC {p.ac_pj} pJ): "
                f"{self.energy_mj(convention, p):.6g} mJ in the {convention} convention "
                f"({self.energy_mj(other, p):.6g} mJ in the {other} convention). "
                f"FLOPs {_fmt(t['flops'])}, MACs {_fmt(t['macs'])}, ACs / SynOps {_fmt(t['synops'])} (strict); "
                f"paper: MACs {_fmt(t['paper_macs'])}, ACs {_fmt(t['paper_acs'])}; over {self.images} images.")

    def to_markdown(self, convention: str = 'paper', preset: PresetLike = '45nm_fp32') -> str:
        """A markdown report stating its convention: a per-layer table and the totals."""
        p = get_preset(preset)
        c = _check_convention(convention)
        lines = [f"## Energy report: {self.meta.get('model', 'model')} ({c} convention, {p.name})", '',
                 f"Convention: {CONVENTIONS[c]}.", '',
                 f"Per image, over {self.images} images (first batch {self.meta.get('input_shape')}); "
                 f"E_MAC = {p.mac_pj} pJ, E_AC = {p.ac_pj} pJ ({p.source}).", '',
                 f"| # | layer | op | FLOPs | MACs ({c}) | ACs ({c}) | input fr | binary input | energy (mJ, {c}) |",
                 '|---:|---|---|---:|---:|---:|---:|:---:|---:|']
        for i, r in enumerate(self.rows):
            macs, acs = self._counts(r, convention)
            name = (r['name'] or '(model)') + (f" [{r['index']}]" if r['index'] else '')
            lines.append(f"| {i} | {name} | {r['op']} | {_fmt(r['flops'])} | {_fmt(macs)} | {_fmt(acs)} | "
                         f"{r['input_fr']:.4f} | {'yes' if r['binary_input'] else 'no'} | "
                         f"{self.row_energy_mj(r, convention, p):.4g} |")
        macs, acs = self._counts(self.totals, convention)
        lines += [f"| | **total** | | {_fmt(self.totals['flops'])} | {_fmt(macs)} | {_fmt(acs)} | | | "
                  f"**{self.energy_mj(convention, p):.4g}** |", '', self.summary(convention, p)]
        return '\n'.join(lines) + '\n'

    def __str__(self) -> str:
        return self.to_markdown()

    def to_dict(self, preset: PresetLike = '45nm_fp32') -> dict:
        presets = [get_preset(preset)] + [q for q in PRESETS.values() if q.name != get_preset(preset).name]
        return {
            'meta': self.meta, 'images': self.images, 'conventions': CONVENTIONS,
            'energy_mj': {c: {q.name: self.energy_mj(c, q) for q in presets} for c in CONVENTIONS},
            'presets': {q.name: asdict(q) for q in presets},
            'totals': self.totals, 'rows': self.rows,
        }

    def to_json(self, path: Optional[Union[str, Path]] = None, preset: PresetLike = '45nm_fp32') -> str:
        """JSON with meta, conventions, energy per convention and preset, totals and rows; written to ``path``."""
        text = json.dumps(self.to_dict(preset), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: Optional[Union[str, Path]] = None, preset: PresetLike = '45nm_fp32') -> str:
        """One line per row, plus ``energy_mj_paper_<preset>`` and ``energy_mj_strict_<preset>`` columns."""
        p = get_preset(preset)
        buf = io.StringIO()
        fields = list(_ROW_KEYS) + [f'energy_mj_paper_{p.name}', f'energy_mj_strict_{p.name}']
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator='\n')
        writer.writeheader()
        for r in self.rows:
            writer.writerow(dict(r, input_shape='x'.join(map(str, r['input_shape'])),
                                 **{fields[-2]: self.row_energy_mj(r, 'paper', p),
                                    fields[-1]: self.row_energy_mj(r, 'strict', p)}))
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()

    def plot(self, path: Union[str, Path], preset: PresetLike = '45nm_fp32') -> Path:
        """PNG: per-layer input firing rate (top) and energy in both conventions (bottom, log scale)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        p = get_preset(preset)
        labels = [f"{i}: {r['name'] or '(model)'} {r['op']}" + (f" [{r['index']}]" if r['index'] else '')
                  for i, r in enumerate(self.rows)]
        xs = range(len(self.rows))
        fig = Figure(figsize=(max(6.0, 0.28 * len(labels) + 2), 7.5), layout='constrained')
        FigureCanvasAgg(fig)
        ax_fr, ax_e = fig.subplots(2, 1, sharex=True)
        colors = {True: 'tab:blue', False: 'tab:orange'}
        ax_fr.bar(xs, [r['input_fr'] for r in self.rows], color=[colors[r['binary_input']] for r in self.rows])
        ax_fr.set_ylabel('input non-zero fraction')
        ax_fr.set_title(f"{self.meta.get('model', 'model')}: per-layer firing rate and energy")
        ax_fr.legend(handles=[Patch(color=colors[True], label='binary input (spikes)'),
                              Patch(color=colors[False], label='real-valued input')])
        width = 0.4
        for shift, conv in ((-width / 2, 'paper'), (width / 2, 'strict')):
            ax_e.bar([x + shift for x in xs], [self.row_energy_mj(r, conv, p) * 1e6 for r in self.rows], width,
                     label=f"{conv} ({self.energy_mj(conv, p):.4g} mJ total)")
        ax_e.set_yscale('symlog', linthresh=1e-3)
        ax_e.set_ylabel(f'energy per image (nJ, {p.name})')
        ax_e.legend()
        ax_e.set_xticks(list(xs), labels, rotation=90, fontsize=7)
        fig.savefig(path, dpi=120)
        return Path(path)

    def save(self, out_dir: Union[str, Path], stem: str = 'energy', convention: str = 'paper',
             preset: PresetLike = '45nm_fp32', plot: bool = True) -> dict:
        """Write ``<stem>.md``, ``.csv``, ``.json`` (and ``.png``) into ``out_dir``; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {'markdown': out / f'{stem}.md', 'csv': out / f'{stem}.csv', 'json': out / f'{stem}.json'}
        paths['markdown'].write_text(self.to_markdown(convention, preset))
        self.to_csv(paths['csv'], preset)
        self.to_json(paths['json'], preset)
        if plot:
            paths['png'] = self.plot(out / f'{stem}.png', preset)
        return paths


def _fmt(v: float) -> str:
    """A count for humans: 1234567 -> '1.235 M'."""
    for scale, unit in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(v) >= scale:
            return f'{v / scale:.4g} {unit}'
    return f'{v:.4g}'
