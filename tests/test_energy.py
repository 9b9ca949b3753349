"""snnzoo.energy: operation counts against hand-computed numbers and independent float64 recomputations.

References used here never call the profiler's own arithmetic: ACs of a conv on spikes are the sum of a float64
convolution of the spike mask with an all-ones kernel (every product a non-zero spike takes part in), coincidences
of a spike x spike matmul are the sum of the float64 product of the two 0/1 matrices, and FLOPs are the textbook
formulas.
"""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnzoo
from snnzoo.energy import PRESETS, EnergyReport, Profiler, profile
from snnzoo.layers import LIFNode, MultiStep

E = {'45nm_fp32': (4.6, 0.9), '45nm_fp16': (1.5, 0.4), '45nm_int8': (0.23, 0.03)}   # SPEC section 6, pJ


def spikes(*shape, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


def rows_by_op(report, op):
    return [r for r in report.rows if r['op'] == op]


def ones_kernel_acs(mask, conv):
    """Reference ACs: sum of conv(mask, ones) = every (output, weight tap) product that reads a non-zero input."""
    w = torch.ones_like(conv.weight, dtype=torch.float64)
    if isinstance(conv, nn.ConvTranspose2d):
        out = F.conv_transpose2d(mask.double(), w, None, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                 conv.dilation)
    else:
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[mask.dim() - 2]
        out = fn(mask.double(), w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.sum().item()


@pytest.fixture(params=['host', 'device'])
def stats_path(request, monkeypatch):
    """Run a test on the CPU fast path and on the sync-free path that GPUs use (forced here on the CPU)."""
    if request.param == 'device':
        monkeypatch.setattr('snnzoo.energy.counter._HOST_DEVICES', ())
    return request.param


class Single(nn.Module):
    """A model that is one layer applied to its input (the layer's row is then the paper's first layer)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def test_real_conv_stride_padding_macs():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    r = profile(Single(conv), torch.randn(2, 3, 9, 9))
    (row,) = r.rows
    flops = 8 * 5 * 5 * 3 * 3 * 3        # C_out H_out W_out C_in k k per image, H_out = (9 + 2 - 3) // 2 + 1 = 5
    assert (row['name'], row['op'], row['module']) == ('layer', 'conv2d', 'Conv2d')
    assert row['flops'] == flops and row['macs'] == flops and row['acs'] == 0
    assert not row['binary_input'] and row['input_fr'] == 1.0
    assert row['paper_macs'] == flops and row['paper_acs'] == 0     # the first layer, real-valued input
    assert r.energy_mj('paper') == pytest.approx(flops * 4.6e-9, rel=1e-12)
    assert r.energy_mj('strict') == pytest.approx(flops * 4.6e-9, rel=1e-12)


def test_binary_conv_padding_hand_counted():
    # all-ones 3x3 map, 3x3 kernel, padding 1: an output reads 4 (corner), 6 (edge) or 9 (centre) real inputs
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    r = profile(Single(conv), torch.ones(1, 1, 3, 3))
    (row,) = r.rows
    assert row['acs'] == 2 * (4 * 4 + 4 * 6 + 9) == 98
    assert row['flops'] == 2 * 9 * 9 and row['macs'] == 0 and row['binary_input']
    # a binary input to the first layer is not charged as MAC in the paper convention either: fr x FLOPs
    assert row['paper_macs'] == 0 and row['paper_acs'] == 162


@pytest.mark.parametrize('conv, shape', [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (3, 4, 11, 10)),
    (nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2), (2, 4, 9, 12)),
    (nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 7, 7)),
    (nn.Conv1d(3, 5, 4, stride=3, padding=2), (2, 3, 17)),
    (nn.Conv3d(2, 3, 3, stride=(1, 2, 2), padding=1), (2, 2, 4, 6, 5)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 5, 6)),
])
def test_binary_conv_exact_acs(conv, shape, stats_path):
    x = spikes(*shape, seed=1)
    r = profile(Single(conv), x)
    (row,) = r.rows
    B = shape[0]
    assert row['acs'] == pytest.approx(ones_kernel_acs(x, conv) / B, rel=1e-12)
    assert row['macs'] == 0 and row['binary_input']
    out = conv(x)
    if isinstance(conv, nn.ConvTranspose2d):
        flops = x[0].numel() * conv.weight.shape[1] * conv.weight[0, 0].numel()
    else:
        flops = out[0].numel() * conv.weight[0].numel()
    assert row['flops'] == flops
    assert row['input_fr'] == pytest.approx(x.double().mean().item(), rel=1e-12)


def test_binary_linear(stats_path):
    x = spikes(4, 10, seed=2)
    fc = nn.Linear(10, 7)
    r = profile(Single(fc), x)
    (row,) = r.rows
    assert row['op'] == 'linear' and row['flops'] == 70
    assert row['acs'] == x.sum().item() * 7 / 4 and row['macs'] == 0
    # [B, T, N, D] input (flattened to a matrix inside aten), no bias (mm instead of addmm)
    x = spikes(2, 3, 5, 10, seed=3)
    r = profile(Single(nn.Linear(10, 7, bias=False)), x)
    (row,) = r.rows
    assert row['flops'] == 3 * 5 * 10 * 7 and row['acs'] == x.sum().item() * 7 / 2


class Product(nn.Module):
    """x [B, 2, n, k]: x[:, 0] @ x[:, 1]^T, a functional matmul between two activations."""

    def forward(self, x):
        return x[:, 0] @ x[:, 1].transpose(-2, -1)


def test_spike_spike_matmul_coincidences(stats_path):
    a = torch.tensor([[1., 1., 0.], [0., 1., 1.]])
    b = torch.tensor([[1., 1., 0.], [0., 1., 1.]])      # b^T = [[1, 0], [1, 1], [0, 1]]
    r = profile(Product(), torch.stack([a, b])[None])
    (row,) = r.rows
    assert row['op'] == 'matmul' and row['flops'] == 2 * 3 * 2
    assert row['acs'] == 6          # a @ b^T = [[2, 1], [1, 2]]: 6 coinciding pairs of spikes
    x = spikes(3, 2, 6, 9, p=0.4, seed=4)
    r = profile(Product(), x)
    (row,) = r.rows
    reference = (x[:, 0].double() @ x[:, 1].double().transpose(-2, -1)).sum().item()
    assert row['acs'] == pytest.approx(reference / 3, rel=1e-12) and row['macs'] == 0
    assert row['flops'] == 6 * 9 * 6


def test_spike_real_matmul(stats_path):
    class SpikeTimesReal(nn.Module):
        def forward(self, x):
            return (x > 0).float() @ x.transpose(-2, -1)      # spikes [n, k] @ real [k, n]

    x = torch.randn(2, 5, 8)
    r = profile(SpikeTimesReal(), x)
    (row,) = r.rows
    assert row['acs'] == (x > 0).sum().item() * 5 / 2 and row['macs'] == 0
    assert row['input_fr'] == pytest.approx((x > 0).float().mean().item())


class ConvLIF(nn.Module):
    """conv -> BN -> LIF -> (SEW sum of two spike trains when ``sew``) -> linear; input [B, C, H, W], T = 2."""

    def __init__(self, sew=False):
        super().__init__()
        self.sew = sew
        self.conv = MultiStep(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.lif = LIFNode(v_threshold=0.5)
        self.lif2 = LIFNode(v_threshold=1.0)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def features(self, x):
        h = self.conv(x.unsqueeze(0).repeat(2, 1, 1, 1, 1))
        s = self.lif(h)
        return s + self.lif2(h) if self.sew else s

    def forward(self, x):
        return self.fc(self.features(x).flatten(2)).mean(0)


def test_paper_first_layer_rule_conv_lif_linear(stats_path):
    torch.manual_seed(0)
    m = ConvLIF().eval()
    x = torch.randn(3, 2, 6, 6) * 2
    with torch.no_grad():
        s = m.features(x)
    assert 0 < s.mean() < 1
    conv_flops, fc_flops = 2 * 4 * 36 * 2 * 9, 2 * 144 * 5      # per image, T = 2
    fr = s.double().mean().item()
    r = profile(m, x)
    conv, fc = r.rows
    assert (conv['name'], fc['name']) == ('conv.0', 'fc')
    assert conv['flops'] == conv_flops and fc['flops'] == fc_flops
    assert fc['input_fr'] == pytest.approx(fr, rel=1e-12) and fc['binary_input']
    assert fc['acs'] == pytest.approx(s.sum().item() * 5 / 3, rel=1e-12)
    paper = 4.6e-9 * conv_flops + 0.9e-9 * fr * fc_flops
    strict = 4.6e-9 * conv_flops + 0.9e-9 * s.sum().item() * 5 / 3
    assert r.energy_mj('paper') == pytest.approx(paper, rel=1e-12)
    assert r.energy_mj('strict') == pytest.approx(strict, rel=1e-12)
    assert r.totals['synops'] == pytest.approx(fc['acs'], rel=1e-12)


def test_integer_sew_sum_strict_mac_paper_ac(stats_path):
    torch.manual_seed(0)
    m = ConvLIF(sew=True).eval()
    x = torch.randn(3, 2, 6, 6) * 2
    with torch.no_grad():
        sew = m.features(x)
    assert (sew == 2).any() and (sew == 1).any()          # really integer-valued, not binary
    fr = (sew != 0).double().mean().item()
    r = profile(m, x)
    fc = r.rows[-1]
    assert fc['name'] == 'fc' and not fc['binary_input']
    assert fc['macs'] == fc['flops'] and fc['acs'] == 0                    # strict: MAC
    assert fc['paper_macs'] == 0 and fc['paper_acs'] == pytest.approx(fr * fc['flops'], rel=1e-12)   # paper: AC
    assert fc['input_fr'] == pytest.approx(fr, rel=1e-12)


def test_integer_input_to_the_first_layer_is_not_the_paper_mac_layer(stats_path):
    s1, s2 = spikes(4, 12, seed=6), spikes(4, 12, p=0.5, seed=7)
    x = s1 + s2                                              # a SEW sum of two spike maps fed straight to a layer
    fc = nn.Linear(12, 3)
    r = profile(Single(fc), x)
    (row,) = r.rows
    fr = (x != 0).double().mean().item()
    assert row['macs'] == row['flops'] == 36 and row['acs'] == 0 and not row['binary_input']
    assert row['paper_macs'] == 0 and row['paper_acs'] == pytest.approx(fr * 36, rel=1e-12)
    assert r.energy_mj('paper') == pytest.approx(0.9e-9 * fr * 36, rel=1e-12)
    assert r.energy_mj('strict') == pytest.approx(4.6e-9 * 36, rel=1e-12)


def test_autocast_weights_stay_weights():
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 5))
    x = spikes(3, 2, 6, 6, seed=8)
    ref = profile(m, x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        r = profile(m, x)
    assert [row['op'] for row in r.rows] == ['conv2d', 'linear']
    for a, b in zip(ref.rows, r.rows):
        assert (a['flops'], a['macs'], a['acs']) == (b['flops'], b['macs'], b['acs'])


@pytest.mark.parametrize('preset', list(E))
def test_presets(preset):
    assert (PRESETS[preset].mac_pj, PRESETS[preset].ac_pj) == E[preset]
    torch.manual_seed(0)
    r = profile(ConvLIF(sew=True), torch.randn(2, 2, 6, 6) * 2)
    e_mac, e_ac = E[preset]
    t = r.totals
    assert r.energy_mj('paper', preset) == pytest.approx((e_mac * t['paper_macs'] + e_ac * t['paper_acs']) * 1e-9)
    assert r.energy_mj('strict', preset) == pytest.approx((e_mac * t['macs'] + e_ac * t['acs']) * 1e-9)
    assert r.energy_mj('strict', (e_mac, e_ac)) == pytest.approx(r.energy_mj('strict', preset))


def test_bad_convention_and_preset():
    r = profile(Single(nn.Linear(3, 2)), torch.randn(1, 3))
    with pytest.raises(ValueError, match='valid conventions'):
        r.energy_mj('papers')
    with pytest.raises(ValueError, match='valid presets'):
        r.energy_mj('paper', '7nm')
    with pytest.raises(ValueError, match='real input batch'):
        profile(Single(nn.Linear(3, 2)), torch.empty(1, 3, device='meta'))


class Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MultiStep(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.lif = LIFNode(stateful=True)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 25, 3)

    def forward(self, x):
        s = self.lif(self.conv(x.unsqueeze(0).repeat(2, 1, 1, 1, 1)))
        return self.fc(self.drop(s.flatten(2))).mean(0)


def test_state_and_outputs_untouched():
    torch.manual_seed(0)
    m = Stateful()
    x = torch.randn(3, 2, 5, 5)
    m.train()
    m(x)                                   # non-trivial BN statistics and a membrane state
    m.drop.eval()                          # mixed train/eval flags must come back as they were
    state = {k: v.clone() for k, v in m.state_dict().items()}
    v = m.lif.v.clone()
    modes = {n: mod.training for n, mod in m.named_modules()}
    with Profiler(m) as p:
        out = p(x)
    r = p.report()
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(torch.equal(state[k], t) for k, t in m.state_dict().items())
    assert torch.equal(m.lif.v, v)
    assert not m.conv[0]._forward_pre_hooks and not m.conv[0]._forward_hooks
    m.eval()
    expected = m(x)                        # one eval forward from the same membrane state
    m.lif.v = v.clone()
    assert torch.equal(out, expected)
    assert r.rows[0]['name'] == 'conv.0'


def test_functional_ops_attributed_to_their_module():
    class Attention(nn.Module):
        def __init__(self, dim=8):
            super().__init__()
            self.qk = nn.Linear(dim, 2 * dim)
            self.w = nn.Parameter(torch.randn(dim, dim))
            self.proj = nn.Conv1d(dim, dim, 1)

        def forward(self, x):
            q, k = ((self.qk(x) > 0).float()).chunk(2, -1)
            a = torch.einsum('bnd,bmd->bnm', q, k)            # no module runs this: a hook-based counter misses it
            y = F.linear(a @ q, self.w)                       # nor these
            return F.conv1d(y.transpose(1, 2), self.proj.weight)     # a child's weight, its forward not called

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()

        def forward(self, x):
            return self.attn(x)

    x = torch.randn(2, 5, 8)
    r = profile(Net(), x)
    names = [(row['name'], row['op'], row['index']) for row in r.rows]
    assert names == [('attn.qk', 'linear', 0), ('attn', 'matmul', 0), ('attn', 'matmul', 1), ('attn', 'linear', 0),
                     ('attn.proj', 'conv1d', 0)]
    assert r.rows[1]['flops'] == 5 * 8 * 5 and r.rows[2]['flops'] == 5 * 5 * 8 and r.rows[3]['flops'] == 5 * 8 * 8


def test_batches_and_outputs(tmp_path):
    torch.manual_seed(0)
    m = ConvLIF()
    xs = [torch.randn(2, 2, 6, 6) * 2 for _ in range(3)]
    r_all = profile(m, [(x, torch.zeros(2)) for x in xs])
    r_cat = profile(m, torch.cat(xs))
    assert r_all.images == 6 and r_all.rows[1]['calls'] == 3
    for a, b in zip(r_all.rows, r_cat.rows):
        assert a['flops'] == b['flops'] and a['acs'] == pytest.approx(b['acs'], rel=1e-12)
    md = r_all.to_markdown('strict', '45nm_int8')
    assert 'strict convention' in md and '45nm_int8' in md and '| conv.0 | conv2d |' in md
    assert 'paper convention' in r_all.to_markdown() and 'paper convention' in str(r_all)
    paths = r_all.save(tmp_path, 'net', plot=False)
    data = json.loads(paths['json'].read_text())
    assert data['energy_mj']['strict']['45nm_fp16'] == pytest.approx(r_all.energy_mj('strict', '45nm_fp16'))
    assert set(data['conventions']) == {'paper', 'strict'} and len(data['rows']) == 2
    lines = paths['csv'].read_text().splitlines()
    assert lines[0].startswith('name,module,op') and 'energy_mj_paper_45nm_fp32' in lines[0] and len(lines) == 3


def test_time_major_model_batch_dim():
    conv = MultiStep(nn.Conv2d(2, 3, 3, padding=1))                # takes [T, B, C, H, W]
    x = spikes(4, 5, 2, 6, 6, seed=5)
    r = profile(Single(conv), x, batch_dim=1)
    (row,) = r.rows
    assert r.images == 5 and row['flops'] == 4 * 3 * 36 * 2 * 9
    assert row['acs'] == pytest.approx(ones_kernel_acs(x.flatten(0, 1), conv[0]) / 5, rel=1e-12)


def test_plot_writes_png(tmp_path):
    pytest.importorskip('matplotlib')
    r = profile(ConvLIF(), torch.randn(1, 2, 6, 6))
    path = r.plot(tmp_path / 'energy.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def _require(name):
    if name not in snnzoo.list_models():
        pytest.skip(f"{name} is not registered")


def test_spikformer_attention_counts_equal_analytic():
    _require('spikformer_4_384_cifar')
    torch.manual_seed(0)
    T, C, h = 2, 64, 4
    m = snnzoo.create_model('spikformer_4_384_cifar', embed_dim=C, depth=1, num_heads=h, T=T, backend='torch')
    for mod in m.modules():                   # untrained BNs barely fire: sharpen them so every stage spikes
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_var.fill_(0.02)
    attn = m.block[0].attn
    captured = {}
    for name in ('q', 'k', 'v'):
        getattr(attn, f'{name}_lif').register_forward_hook(
            lambda mod, args, out, name=name: captured.__setitem__(name, out.clone()))
    x = torch.randn(2, 3, 32, 32)
    r = profile(m, x)
    q, k, v = (captured[n] for n in 'qkv')               # [T, B, C, N]
    N, d, B = q.shape[-1], C // h, x.shape[0]
    assert 0 < q.mean() < 1 and 0 < k.mean() < 1 and 0 < v.mean() < 1
    matmuls = [row for row in r.rows if row['name'] == 'block.0.attn' and row['op'] == 'matmul']
    assert len(matmuls) == 2 and all(row['binary_input'] for row in matmuls)
    # Q K^T V evaluated as Q (K^T V) (d < N): V^T K then (V^T K) Q^T, each T h d d N MACs per image
    assert d < N
    assert [row['flops'] for row in matmuls] == [T * h * d * d * N] * 2
    qt, kt, vt = (t.reshape(T, B, h, d, N).double() for t in (q, k, v))
    coincidences = (vt @ kt.transpose(-2, -1)).sum().item()          # spike x spike
    spike_real = qt.sum().item() * d                                 # integer V^T K times spikes Q^T: nnz x d
    assert matmuls[0]['acs'] == pytest.approx(coincidences / B, rel=1e-12)
    assert matmuls[1]['acs'] == pytest.approx(spike_real / B, rel=1e-12)
    for name in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
        (row,) = [row for row in r.rows if row['name'] == f'block.0.attn.{name}']
        assert row['flops'] == T * N * C * C
    assert r.rows[0]['name'] == m.pretrained_cfg['first_conv'] and r.rows[0]['paper_macs'] == r.rows[0]['flops']


def test_cli_writes_report(tmp_path, capsys):
    _require('spikformer_4_384_cifar')
    from snnzoo.energy.cli import main
    main(['spikformer_4_384_cifar', '--model-args', 'embed_dim=32', 'depth=1', 'num_heads=2', 'T=1',
          '--batch-size', '2', '--convention', 'strict', '--out', str(tmp_path), '--no-plot', '--device', 'cpu'])
    out = capsys.readouterr().out
    assert 'strict convention' in out and 'paper convention' in out
    assert {p.suffix for p in tmp_path.iterdir()} == {'.md', '.csv', '.json'}
    data = json.loads((tmp_path / 'spikformer_4_384_cifar.json').read_text())
    assert data['meta']['model'] == 'spikformer_4_384_cifar' and data['images'] == 2
    assert isinstance(EnergyReport(data['rows'], data['images']).energy_mj(), float)
    with pytest.raises(SystemExit, match='did you mean spikformer_4_384_cifar'):
        main(['spikformer_4_384_cifr'])


def test_energy_imports_neither_models_nor_train():
    import ast
    from pathlib import Path

    import snnzoo.energy
    root = Path(snnzoo.energy.__file__).parent
    for path in root.glob('*.py'):
        if path.name == 'cli.py':       # the command line builds registered models: it is an entry point
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [('.' * node.level) + (node.module or '')]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not any(bad in name for bad in ('models', 'train', 'matplotlib.pyplot')), (path.name, name)
