"""snnzoo.export: NIR graphs run by another library (snnTorch 1.0.0 through nirtorch) on real N-MNIST and
Fashion-MNIST recordings, NIR round trips, ONNX files run by onnxruntime for every family, torch.export with
gradients, BatchNorm folding on the reference fixtures, and the snnzoo-export command."""
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn

import snnzoo
from snnzoo.export import NIRExportError, export_program, from_nir, fuse, to_nir, to_onnx
from snnzoo.layers import BaseNode, IFNode, LIFNode, MultiStep, ParametricLIFNode
from snnzoo.layers.metaformer_blocks import BNAndPad2d
from snnzoo.layers.neuron import NeuronConfig, _traceable_multistep, neuron_multistep

nir = pytest.importorskip('nir')
snn = pytest.importorskip('snntorch')
ort = pytest.importorskip('onnxruntime')


def _record_spikes(model: nn.Module) -> dict:
    """Hooks that store every snnzoo neuron layer's output ``[T, B, ...]`` under its NIR node name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, BaseNode):
            m.register_forward_hook(lambda m, i, o, key=name.replace('.', '_'): out.__setitem__(key, o))
    return out


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.5)
    return model


# ------------------------------------------------------------------------------------------- the traceable neuron

@pytest.mark.parametrize('charge', ['lif', 'plif', 'if'])
@pytest.mark.parametrize('v_reset', [0.0, None, -0.3])
def test_traceable_recurrence_bit_equal_to_eager(charge, v_reset):
    """The out-of-place recurrence used under torch.export: spikes and V[T] bit-equal to the eager torch backend,
    gradients (surrogate through spike_fn) equal to float32 rounding, for both decay modes and detach_reset."""
    torch.manual_seed(0)
    for decay_input in (True, False):
        for detach_reset in (False, True):
            cfg = NeuronConfig(charge=charge, tau=4 / 3, decay_input=decay_input, v_threshold=0.7, v_reset=v_reset,
                               detach_reset=detach_reset, surrogate='atan', alpha=2.0)
            k = torch.tensor(0.37, requires_grad=True) if charge == 'plif' else None
            x = (torch.randn(6, 3, 50) * 1.5).requires_grad_()
            for v0 in (None, torch.randn(3, 50)):
                (s1, v1), (s2, v2) = neuron_multistep(x, v0, k, cfg, 'torch'), _traceable_multistep(x, v0, k, cfg)
                assert torch.equal(s1, s2) and torch.equal(v1, v2)
                probe = torch.randn_like(s1)
                wrt = [x] + ([k] if k is not None else [])
                g1 = torch.autograd.grad((s1 * probe).sum() + v1.sum(), wrt)
                g2 = torch.autograd.grad((s2 * probe).sum() + v2.sum(), wrt)
                for a, b in zip(g1, g2):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------- NIR

def _real_test_set(name: str, data_dir, tmp_path_factory):
    from omegaconf import OmegaConf
    from snnzoo.models import _builder
    from snnzoo.train.loop import build_dataset
    entry = next(w for w in json.loads((_builder.REPO_CHECKPOINTS / 'manifest.json').read_text())['weights']
                 if w['model'] == name)
    cfg = dict(entry['data_config'])
    root = data_dir / cfg['root']
    if cfg.get('archive'):
        if not (data_dir / cfg['archive']).exists():
            pytest.skip(f"{cfg['archive']} is absent")
        target = tmp_path_factory.mktemp('data')
        with tarfile.open(data_dir / cfg.pop('archive')) as tar:
            tar.extractall(target, filter='data')
        root = target / cfg['root']
    if not root.exists():
        pytest.skip(f'{root} is absent')
    cfg['root'] = str(root)
    return build_dataset(OmegaConf.create(cfg), 'test')


def _snntorch_run(graph, frames: torch.Tensor) -> tuple:
    """Run ``graph`` imported by snnTorch's ``import_from_nir`` over ``frames [T, B, ...]``: per-step outputs and
    every snnTorch neuron's per-step spikes. snnTorch 1.0.0 maps NIR's Flatten (whose dims exclude the batch, as
    snnTorch's own exporter writes them) to ``nn.Flatten(start_dim, end_dim)`` on batched tensors, flattening the batch
    too; we shift its dims by one so that batches can be run."""
    from snntorch.import_nir import import_from_nir
    net = import_from_nir(graph)
    for m in net.modules():
        if isinstance(m, nn.Flatten) and m.start_dim >= 0:
            m.start_dim += 1
            m.end_dim += 1 if m.end_dim >= 0 else 0
    spikes, outs, state = {}, [], None
    for name, m in net.named_modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
            m.register_forward_hook(lambda m, i, o, key=name: spikes.setdefault(key, []).append(o))
    with torch.no_grad():
        for x in frames:    # nirtorch keeps the outputs that recurrent edges read one step later in ``state``
            out, state = net(x, state)
            outs.append(out)
    return torch.stack(outs), {k: torch.stack(v) for k, v in spikes.items()}


@pytest.mark.parametrize('name, n_max', [('sew_resnet_nmnist', None), ('sew_resnet_fmnist', 500)])
def test_published_weights_run_by_snntorch(name, n_max, data_dir, tmp_path_factory, capsys):
    """The published SEW-ResNets as NIR (PLIF, hard reset, SEW ADD sums, max-pools of spike counts), imported by
    snnTorch 1.0.0 and run on real test recordings / images: every layer's per-step spikes equal snnzoo's up to
    threshold ties, and the predicted classes agree on >= 99.5% of the samples."""
    test_set = _real_test_set(name, data_dir, tmp_path_factory)
    model = snnzoo.create_model(name, pretrained=True).eval()
    loader = torch.utils.data.DataLoader(test_set, batch_size=500)
    graph, agree, n, mismatched, total = None, 0, 0, 0, 0
    ours = _record_spikes(model)
    for x, _ in loader:
        if graph is None:
            graph = to_nir(model, x[:2])
        with torch.no_grad():
            logits = model(x, return_per_step=True)
        frames = x.unsqueeze(0).expand(model.T, *x.shape) if x.dim() == 4 else x.transpose(0, 1)
        theirs_out, theirs = _snntorch_run(graph, frames)
        assert set(theirs) >= set(ours)
        for key, s in ours.items():
            mismatched += (s != theirs[key]).sum().item()
            total += s.sum().item()
        agree += (logits.mean(0).argmax(1) == theirs_out.mean(0).argmax(1)).sum().item()
        n += x.shape[0]
        if n_max and n >= n_max:
            break
    capsys.readouterr()                       # snnTorch prints its threshold rescaling for every layer
    print(f"{name}: {n} samples, {agree / n:.4f} class agreement, {mismatched} of {total} spikes differ")
    assert agree / n >= 0.995
    assert mismatched <= 1e-4 * total         # threshold ties: snnTorch computes beta V + I against V_th / k


def test_round_trip_exact_and_file(tmp_path):
    """snnzoo -> NIR -> file -> snnzoo: per-step spikes of every layer and the per-step logits equal the fused model's
    bit for bit (BatchNorm folded the same way), for the published N-MNIST net (PLIF) and an MS-ResNet (LIF without
    input decay, real-valued membrane shortcuts) and a SEW-ResNet (IF, stem max-pool with padding)."""
    torch.manual_seed(0)
    cases = [(snnzoo.create_model('sew_resnet_nmnist', pretrained=True), (torch.rand(3, 8, 2, 34, 34) < 0.2).float()),
             (_randomise_bn(snnzoo.create_model('ms_resnet18', layers=[1, 1, 1, 1], T=2, num_classes=5)),
              torch.randn(3, 3, 32, 32)),
             (_randomise_bn(snnzoo.create_model('sew_resnet18', layers=[1, 1, 1, 1], T=2, num_classes=5)),
              torch.randn(3, 3, 32, 32))]
    for model, x in cases:
        model.eval()
        graph = to_nir(model, x)
        nir.write(tmp_path / 'g.nir', graph)
        back = from_nir(tmp_path / 'g.nir')
        fused = fuse(model, x)
        ref_spikes, back_spikes = _record_spikes(fused), _record_spikes(back.nodes)
        frames = x.unsqueeze(0).expand(model.T, *x.shape) if x.dim() == 4 else x.transpose(0, 1)
        with torch.no_grad():
            out, ref = back(frames), fused(x, return_per_step=True)
        assert torch.equal(out, ref)
        assert ref_spikes.keys() == {k.replace('.', '_') for k in back_spikes} and ref_spikes
        for key, s in back_spikes.items():
            assert torch.equal(s, ref_spikes[key.replace('.', '_')]), key
        assert sum(s.sum() for s in ref_spikes.values()) > 0


def _sequential(neuron, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(MultiStep(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)), neuron(),
                         MultiStep(pool), MultiStep(nn.Conv2d(8, 8, 3, stride=2)), neuron(),
                         MultiStep(nn.Flatten(), nn.Linear(8 * 3 * 3, 10)), neuron())


@pytest.mark.parametrize('neuron', [lambda: LIFNode(tau=2.0), lambda: LIFNode(tau=1.5, decay_input=False, v_threshold=0.5),
                                    lambda: ParametricLIFNode(init_tau=3.0)], ids=['lif', 'lif_no_decay_input', 'plif'])
def test_sequential_nets_run_by_snntorch(neuron):
    """Any nn.Sequential of MultiStep conv / BN / pooling / flatten / linear and neurons (hard reset to 0): snnTorch's
    import reproduces every layer's per-step spikes (ties counted) and our own import reproduces them exactly."""
    torch.manual_seed(1)
    net = _randomise_bn(_sequential(neuron, nn.AvgPool2d(2))).eval()
    for m in net.modules():
        if isinstance(m, ParametricLIFNode):
            m.w.data.fill_(0.3)
        if isinstance(m, nn.Conv2d):
            m.weight.data.mul_(3)
    x = (torch.rand(6, 4, 2, 16, 16) < 0.5).float()
    graph = to_nir(net, x)
    ours = _record_spikes(net)
    with torch.no_grad():
        net(x)
    _, theirs = _snntorch_run(graph, x)
    total = sum(s.sum().item() for s in ours.values())
    assert total > 100
    assert sum((s != theirs[k]).sum().item() for k, s in ours.items()) <= max(1, 1e-4 * total)
    back, fused = from_nir(graph), fuse(net, x)
    with torch.no_grad():
        assert torch.equal(back(x), fused(x))


def test_nonzero_reset_and_if_round_trip():
    """What snnTorch's reader cannot express (IF: it builds a Leaky with beta 0.9; a reset to V_reset != 0: it asserts
    v_leak == 0) still round-trips exactly through our reader, and the NIR parameters are the documented ones."""
    torch.manual_seed(2)
    net = _sequential(lambda: IFNode(v_threshold=0.8, v_reset=-0.2), nn.MaxPool2d(2)).eval()
    x = (torch.rand(5, 3, 2, 16, 16) < 0.5).float()
    graph = to_nir(net, x, dt=1e-3)
    node = graph.nodes['1']
    assert isinstance(node, nir.IF) and np.allclose(node.r, 1e3) and np.all(node.v_reset == np.float32(-0.2))
    assert np.all(node.v_threshold < np.float32(0.8)) and np.all(np.nextafter(node.v_threshold, 1) == np.float32(0.8))
    with torch.no_grad():
        assert torch.equal(from_nir(graph)(x), fuse(net, x)(x))
    lif = to_nir(nn.Sequential(MultiStep(nn.Linear(4, 3)), LIFNode(tau=1.25, decay_input=False, v_reset=0.1)),
                 torch.randn(2, 1, 4)).nodes['1']
    assert np.allclose(lif.tau, 1e-4 * 1.25) and np.allclose(lif.r, 1.25) and np.allclose(lif.v_leak, 0.1)


# -------------------------------------------------------------------- soft reset: converted SNNs and snnzoo neurons

def _record_outputs(modules: dict, T: int) -> dict:
    """Hooks storing the per-step output ``[T, B, ...]`` of each module of ``modules`` (name -> module) by name."""
    out = {}
    for key, m in modules.items():
        m.register_forward_hook(lambda m, i, o, key=key:
                                out.__setitem__(key, o.unflatten(0, (T, -1)) if o.shape[0] != T else o))
    return out


def _check_against_snntorch_and_round_trip(model: nn.Module, x: torch.Tensor, T: int, static: bool, types, tmp_path,
                                           capsys, chunk: int = 100) -> tuple:
    """Export ``model`` and run the graph with snnTorch and, after a file round trip, with from_nir, on ``x`` (static
    images ``[B, ...]``, fed at each of the T steps, or ``[T, B, ...]``), ``chunk`` samples at a time: returns (class
    agreement with snnTorch, spikes that differ from snnTorch's, spikes in all, over the modules of ``types``);
    asserts that the round trip reproduces every such layer's spikes and the per-step outputs bit for bit."""
    graph = to_nir(model, x[:2] if static else x[:, :2])
    nir.write(tmp_path / 'g.nir', graph)
    back = from_nir(tmp_path / 'g.nir')
    layers = {n.replace('.', '_'): m for n, m in model.named_modules() if isinstance(m, types)}
    ours, mine = _record_outputs(layers, T), _record_outputs({k: back.nodes[k] for k in layers}, T)
    agree = mismatched = total = 0
    for i in range(0, x.shape[0 if static else 1], chunk):
        xb = x[i:i + chunk] if static else x[:, i:i + chunk]
        frames = xb.unsqueeze(0).expand(T, *xb.shape) if static else xb
        with torch.no_grad():
            ref = model(xb, return_per_step=True) if static else model(xb)
            assert torch.equal(back(frames), ref)
        assert layers and all(torch.equal(s, ours[k]) for k, s in mine.items())
        theirs_out, theirs = _snntorch_run(graph, frames)
        capsys.readouterr()
        mismatched += sum((s != theirs[k]).sum().item() for k, s in ours.items())
        total += sum(s.sum().item() for s in ours.values())
        agree += (ref.mean(0).argmax(-1) == theirs_out.mean(0).argmax(-1)).sum().item()
    return agree / x.shape[0 if static else 1], mismatched, total


@pytest.fixture(scope='module')
def cifar_test_images(data_dir, tmp_path_factory):
    """N CIFAR-10 test images spread evenly over the set (every (10000 / N)-th of each class's 1000, N from
    $SNNZOO_NIR_CIFAR_IMAGES, default 40) as normalised tensors, and their labels."""
    import os
    from snnzoo.data import build_dataset
    n = int(os.environ.get('SNNZOO_NIR_CIFAR_IMAGES', 40))
    archive = data_dir / 'cifar10-jpg.tar.gz'
    if not archive.exists():
        pytest.skip(f'{archive} is absent')
    root = tmp_path_factory.mktemp('cifar')
    with tarfile.open(archive) as tar:   # the test images wanted, and one train image per class (the folder layout)
        for m in tar:
            parts = m.name.split('/')
            if m.isfile() and len(parts) == 4 and (parts[1] == 'test' and int(parts[3][:4]) % (10000 // n) == 0
                                                   or parts[3] == '0000.jpg'):
                tar.extract(m, root, filter='data')
    ds = build_dataset('cifar10', str(root / 'cifar10-jpg'), 'test')
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))])


class _ResidualANN(nn.Module):
    """conv-BN-ReLU, a residual block with an identity shortcut, avg-pool, linear-ReLU, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.pool = nn.AvgPool2d(4)
        self.fc1, self.fc2 = nn.Linear(8 * 8 * 8, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.conv(x) + x)
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.pool(x), 1))))


def test_converted_snns_on_cifar10_run_by_snntorch(cifar_test_images, tmp_path, capsys):
    """Converted SNNs (IF neurons with soft reset and initial membrane theta / 2) as NIR, imported by snnTorch 1.0.0
    and run on real CIFAR-10 test images: the published QCFS ResNet (method 'qcfs', T=8, residual additions) and a
    net with per-channel 'percentile' thresholds, an explicit spike scale on an identity shortcut and linear-layer
    neurons (T=8). Every layer's per-step spikes equal snnzoo's (ties counted and bounded), the classes agree, and
    snnzoo -> NIR file -> snnzoo is bit-exact."""
    from snnzoo.conversion import ThresholdIF, convert
    x, y = cifar_test_images
    ann = snnzoo.create_model('qcfs_resnet_cifar', pretrained=True).eval()
    torch.manual_seed(0)
    small = _randomise_bn(_ResidualANN()).eval()
    report = []
    for name, model in (('qcfs', convert(ann, None, 8, 'qcfs', backend='torch')),
                        ('percentile', convert(small, x[:16], 8, 'percentile', channelwise=True, backend='torch'))):
        agree, mismatched, total = _check_against_snntorch_and_round_trip(model, x, 8, True, ThresholdIF, tmp_path,
                                                                          capsys)
        report.append(f"{name}: {len(x)} CIFAR-10 test images, {agree:.4f} class agreement, {mismatched} of "
                      f"{total:.0f} spikes differ")
        assert total > 1000 and mismatched <= 1e-4 * total and agree >= 0.995, report[-1]
    print('\n'.join(report))
    graph = to_nir(model, x[:2])   # the shortcut's spikes times theta, and the linear layer's neurons, were written
    scale, theta = graph.nodes['body.scale0'], model.body.scale0.theta.numpy()
    assert isinstance(scale, nir.Conv2d) and np.array_equal(scale.weight[:, :, 0, 0], np.diag(theta))
    assert isinstance(graph.nodes['body.neuron2.in'], nir.Affine) and theta.shape == (8,)


@pytest.mark.parametrize('neuron', [lambda: IFNode(v_threshold=0.8, v_reset=None),
                                    lambda: LIFNode(tau=2.0, v_reset=None),
                                    lambda: LIFNode(tau=1.5, decay_input=False, v_threshold=0.5, v_reset=None),
                                    lambda: ParametricLIFNode(init_tau=3.0, v_reset=None)],
                         ids=['if', 'lif', 'lif_no_decay_input', 'plif'])
def test_soft_reset_neurons_run_by_snntorch(neuron, tmp_path, capsys):
    """snnzoo neurons with a soft reset (V - V_th after a spike) in a Sequential net: snnTorch runs the recurrent
    subgraph with every layer's spikes equal to snnzoo's up to ties (LIF: NIR charges k X + (1 - k) V, snnzoo
    V + (X - V) k; IF: the same two sums, no tie), and from_nir brings the net back bit-exact."""
    torch.manual_seed(1)
    net = _randomise_bn(_sequential(neuron, nn.AvgPool2d(2))).eval()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.mul_(3)
    x = (torch.rand(6, 4, 2, 16, 16) < 0.5).float()
    _, mismatched, total = _check_against_snntorch_and_round_trip(net, x, 6, False, BaseNode, tmp_path, capsys)
    assert total > 100 and mismatched <= max(1, 1e-4 * total)
    if isinstance(net[1], IFNode):
        assert mismatched == 0


def test_from_nir_refuses_a_changed_soft_reset_subgraph():
    net = nn.Sequential(MultiStep(nn.Linear(4, 3)), IFNode(v_reset=None))
    graph = to_nir(net, torch.randn(2, 1, 4))
    graph.edges.append(('0', '1.h'))
    with pytest.raises(ValueError, match=r"edge 0 -> 1\.h enters or leaves a soft-reset subgraph"):
        from_nir(graph)


def test_reads_a_graph_written_by_snntorch():
    """from_nir on a graph exported by snnTorch's own export_to_nir (Linear -> Leaky -> Linear -> Leaky, reset to zero):
    our network reproduces snnTorch's spikes (up to ties: snnTorch computes beta V + I, snnzoo V - V / tau + I)."""
    from snntorch.export_nir import export_to_nir
    torch.manual_seed(3)
    # per-neuron beta / threshold: with scalars, snnTorch 1.0.0 writes 0-d LIF parameters that nir 1.0.8's type
    # inference rejects
    lif1 = snn.Leaky(beta=torch.full((30,), 0.8), threshold=torch.full((30,), 0.5), init_hidden=True,
                     reset_mechanism='zero')
    lif2 = snn.Leaky(beta=torch.full((5,), 0.6), threshold=torch.full((5,), 0.5), init_hidden=True,
                     reset_mechanism='zero')
    net = nn.Sequential(nn.Linear(20, 30), lif1, nn.Linear(30, 5), lif2)
    net[2].weight.data.mul_(5)
    graph = export_to_nir(net, torch.randn(1, 20), ignore_dims=[0])
    x = torch.rand(10, 16, 20) * 4
    with torch.no_grad():
        lif1.reset_mem(), lif2.reset_mem()
        theirs = torch.stack([net(xt) for xt in x])
        ours = from_nir(graph)(x)
    assert theirs.sum() > 50
    assert (ours != theirs).sum() <= 2


def test_inexpressible_operations_are_named():
    attn = snnzoo.create_model('spikformer_4_384_cifar', embed_dim=32, depth=1, num_heads=2, T=2)
    with pytest.raises(NIRExportError, match=r'block\.0\.attn \(SpikingSelfAttention\).*attention matmul'):
        to_nir(attn, torch.randn(2, 3, 32, 32))
    sdt = snnzoo.create_model('sdt_2_512_cifar', embed_dim=32, depth=1, num_heads=2, T=2)
    with pytest.raises(NIRExportError, match='SpikeDrivenSelfAttention'):
        to_nir(sdt, torch.randn(2, 3, 32, 32))
    for connect_f, op in (('AND', 'mul'), ('IAND', 'rsub')):
        model = snnzoo.create_model('sew_resnet18', layers=[1, 1, 1, 1], T=2, connect_f=connect_f).eval()
        with pytest.raises(NIRExportError, match=rf'torch\.{op} of activations.*\(in layer1\.0\)'):
            to_nir(model, torch.randn(2, 3, 32, 32))
    from snnzoo.conversion import convert
    ann = snnzoo.create_model('qcfs_resnet_cifar', widths=(4, 8), layers=(1, 1), stem_width=4, L=4).eval()
    with pytest.raises(NIRExportError, match=r"body\.neuron0 \(BurstIF, conversion method 'exact'\).*method='qcfs'"):
        to_nir(convert(ann, None, T=4, method='exact'), torch.rand(2, 3, 8, 8))
    with pytest.raises(NIRExportError, match=r"body\.neuron0 \(SignedIF\) has no NIR export.*signed=False"):
        to_nir(convert(ann, None, T=4, method='qcfs', signed=True), torch.rand(2, 3, 8, 8))
    real_max = nn.Sequential(MultiStep(nn.Conv2d(2, 2, 3), nn.MaxPool2d(2)), LIFNode())
    with pytest.raises(NIRExportError, match='MaxPool2d 0.1 of real values'):
        to_nir(real_max, torch.randn(2, 1, 2, 8, 8))


# --------------------------------------------------------------------------------------------------------- ONNX

FAMILIES = {
    'spikformer': ('spikformer_4_384_cifar', dict(embed_dim=32, depth=1, num_heads=2, T=2), (3, 32, 32)),
    'spikingformer': ('spikingformer_4_384_cifar', dict(embed_dim=32, depth=1, num_heads=2, T=2), (3, 32, 32)),
    'sdt': ('sdt_2_512_cifar', dict(embed_dim=32, depth=1, num_heads=2, T=2), (3, 32, 32)),
    'meta_spikeformer': ('meta_spikeformer_8_384', dict(embed_dim=(8, 16, 32, 48), depth=(1, 1, 1, 1), num_heads=2,
                                                        T=2, num_classes=10), (3, 32, 32)),
    'qkformer': ('qkformer_4_384_cifar', dict(embed_dim=32, depth=3, num_heads=2, T=2), (3, 32, 32)),
    'sew_resnet': ('sew_resnet18', dict(layers=[1, 1, 1, 1], T=2, num_classes=5), (3, 32, 32)),
    'ms_resnet': ('ms_resnet18', dict(layers=[1, 1, 1, 1], T=2, num_classes=5), (3, 32, 32)),
    'sew_resnet_dvs': ('sew_resnet_nmnist', dict(pretrained=True), (8, 2, 34, 34)),
}


@pytest.mark.slow   # 25-110 s per family on a loaded 2-core machine: torch.export and the ONNX translation
@pytest.mark.parametrize('family', list(FAMILIES))
def test_onnx_matches_eager_with_dynamic_batch(family, tmp_path):
    """One ONNX file per family (T unrolled, batch symbolic) run by onnxruntime at batch 1 and 7: logits within 1e-5
    of eager; the file stores each weight once (initializer values <= 1.1x the model's parameters and buffers)."""
    import onnx
    name, kwargs, shape = FAMILIES[family]
    torch.manual_seed(0)
    model = _randomise_bn(snnzoo.create_model(name, **kwargs)).eval()
    path = to_onnx(model, tmp_path / f'{family}.onnx', sample=torch.randn(2, *shape))
    proto = onnx.load(str(path))
    stored = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert stored <= 1.1 * sum(t.numel() for t in list(model.parameters()) + list(model.buffers()))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        if family == 'sew_resnet_dvs':
            x = (x > 1).float()
        with torch.no_grad():
            ref = model(x)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == tuple(ref.shape)
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kw', [dict(method='qcfs', signed=True), dict(method='exact')], ids=['signed', 'exact'])
def test_converted_snn_to_onnx(kw, tmp_path):
    """A converted network (signed IF or accumulate-then-fire neurons; the IF neurons of 'qcfs' are snnzoo's IFNode,
    exported in every family) as ONNX: onnxruntime's logits at batch 1 and 5 within 1e-5 of eager (the input check is
    skipped while exporting, as in every family)."""
    from snnzoo.conversion import convert
    torch.manual_seed(0)
    ann = _randomise_bn(snnzoo.create_model('qcfs_resnet_cifar', widths=(4, 8), layers=(1, 1), stem_width=4, L=4,
                                            num_classes=5)).eval()
    snn = convert(ann, None, T=4, backend='torch', **kw)
    path = to_onnx(snn, tmp_path / 'snn.onnx', sample=torch.randn(2, 3, 16, 16))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            ref = snn(x)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)


def test_torch_export_with_gradients():
    """A training program (train-mode BatchNorm, surrogate gradients): its parameter gradients equal eager's."""
    torch.manual_seed(0)
    model = snnzoo.create_model('sew_resnet18', layers=[1, 1, 1, 1], T=2, num_classes=5).train()
    x = torch.randn(4, 3, 32, 32)
    program = export_program(model, x, train=True).module()
    probe = torch.randn(4, 5)
    (model(x) * probe).sum().backward()
    (program(x) * probe).sum().backward()
    exported = dict(program.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(exported[name].grad, p.grad, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------- fusion

FIXTURES = ['sew_resnet/sew_resnet18_add_l1111_T2_64', 'sew_resnet/sew_resnet_gesture_add_T4',
            'ms_resnet/ms_resnet18_l1111_T2_64', 'spikformer/cifar10_e32_d1_h2_T2_img32',
            'sdt_v1/sdt_2_512_cifar_small', 'qkformer/cifar_e64_d3_t2_img32_nc10',
            'meta_spikeformer/meta_spikeformer_8_384_small', 'spikingformer/cifar10_e32_d1_h2_T2_img32']


@pytest.mark.parametrize('fixture', FIXTURES)
def test_fuse_on_reference_fixtures(fixture, load_fixture):
    """fuse() folds every BatchNorm of the fixture's model (float32); the spikes of every neuron layer on the
    fixture's input equal the unfused model's except at threshold ties, counted and bounded (1e-4 of the spikes)."""
    from reference_check import fixture_model
    fx = load_fixture(fixture)
    model = fixture_model(fx).float().eval()
    x = fx['input'].float()
    fused = fuse(model, x)
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    left = {n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    # all folded but Meta-SpikeFormer's BNAndPad2d, whose statistics also fill the padding border
    assert bns and left == {n for n in bns if isinstance(model.get_submodule(n.rpartition('.')[0]), BNAndPad2d)}
    a, b = _record_spikes(model), _record_spikes(fused)
    with torch.no_grad():
        out_a, out_b = model(x), fused(x)
    total = sum(s.sum().item() for s in a.values())
    ties = sum((s != b[k]).sum().item() for k, s in a.items())
    assert total > 0 and ties <= 1e-4 * total, f'{ties} of {total} spikes differ'
    if ties == 0:
        torch.testing.assert_close(out_a, out_b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------- CLI

def test_cli_writes_nir(tmp_path, capsys):
    from snnzoo.train.export_cli import main
    model = snnzoo.create_model('sew_resnet_fmnist', pretrained=True).eval()
    main(['sew_resnet_fmnist', '--pretrained', '--format', 'nir', '--out', str(tmp_path / 'f.nir')])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(from_nir(tmp_path / 'f.nir')(x.expand(2, *x.shape)).mean(0), model(x),
                                   atol=1e-5, rtol=0)
    with pytest.raises(SystemExit):
        main(['spikformer_4_384_cifar', '--format', 'nir', '--out', str(tmp_path / 's.nir')])
    assert 'attention matmul' in capsys.readouterr().err
    from snnzoo.conversion import convert   # a converted network: its per-step logits, bit for bit
    main(['qcfs_resnet_cifar', '--pretrained', '--convert', 'qcfs', '--T', '4', '--format', 'nir',
          '--out', str(tmp_path / 'q.nir')])
    snn_ = convert(snnzoo.create_model('qcfs_resnet_cifar', pretrained=True).eval(), None, 4, 'qcfs')
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_nir(tmp_path / 'q.nir')(x.expand(4, *x.shape)), snn_(x, return_per_step=True))
    with pytest.raises(SystemExit):
        main(['qcfs_resnet_cifar', '--convert', 'exact', '--format', 'nir', '--out', str(tmp_path / 'e.nir')])
    assert "BurstIF, conversion method 'exact'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_writes_onnx_from_a_checkpoint(tmp_path):
    from snnzoo.train.export_cli import main
    model = snnzoo.create_model('sew_resnet_fmnist', pretrained=True).eval()
    x = torch.randn(2, 1, 28, 28)
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    main(['sew_resnet_fmnist', '--checkpoint', str(tmp_path / 'w.safetensors'), '--format', 'onnx',
          '--out', str(tmp_path / 'f.onnx')])
    session = ort.InferenceSession(str(tmp_path / 'f.onnx'), providers=['CPUExecutionProvider'])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], model(x).numpy(),
                                   atol=1e-5, rtol=0)
