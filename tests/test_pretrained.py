"""Published weights (checkpoints/manifest.json): offline ``pretrained=True`` with sha256 checks, refusal of corrupt
and missing files, accuracy re-measured with snnzoo-eval's evaluation on the real test sets, and ``snnzoo-convert``
of an original-format checkpoint built from a reference fixture."""
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import timm
import torch
from safetensors.torch import load_file

import snnzoo
from snnzoo.data import build_dataset
from snnzoo.models import _builder
from snnzoo.models._builder import sha256_of
from snnzoo.train.loop import evaluate

CHECKPOINTS = _builder.REPO_CHECKPOINTS
MANIFEST = json.loads((CHECKPOINTS / 'manifest.json').read_text())['weights']
IDS = [w['model'] for w in MANIFEST]


@pytest.fixture
def isolated_search(tmp_path, monkeypatch):
    """Search path = an empty weights folder + an empty cache (the checkout's checkpoints/ taken out)."""
    weights, cache = tmp_path / 'weights', tmp_path / 'cache'
    weights.mkdir()
    cache.mkdir()
    monkeypatch.setattr(_builder, 'REPO_CHECKPOINTS', tmp_path / 'no_checkpoints')
    monkeypatch.setenv('SNNZOO_WEIGHTS', str(weights))
    monkeypatch.setenv('SNNZOO_CACHE', str(cache))
    return weights, cache


def test_list_pretrained_matches_manifest():
    published = snnzoo.list_pretrained()
    assert published
    assert {w['model'] for w in MANIFEST} <= {name.split('.')[0] for name in published}


@pytest.mark.parametrize('entry', MANIFEST, ids=IDS)
def test_loads_offline_with_hash(entry):
    path = CHECKPOINTS / entry['file']
    assert sha256_of(path) == entry['sha256']
    assert path.name.rsplit('-', 1)[1].startswith(entry['sha256'][:16])
    expected = load_file(str(path))
    for model in (snnzoo.create_model(entry['model'], pretrained=True),
                  timm.create_model(entry['model'], pretrained=True)):
        assert model.pretrained_cfg['file'] == entry['file']
        state = model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_corrupt_cached_copy_is_refused_and_removed(isolated_search):
    _, cache = isolated_search
    entry = MANIFEST[0]
    data = bytearray((CHECKPOINTS / entry['file']).read_bytes())
    data[-1] ^= 0xFF
    corrupt = cache / entry['file']
    corrupt.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        snnzoo.create_model(entry['model'], pretrained=True)
    assert not corrupt.exists()


def test_copy_in_weights_folder_is_used(isolated_search):
    weights, _ = isolated_search
    entry = MANIFEST[0]
    shutil.copy(CHECKPOINTS / entry['file'], weights / entry['file'])
    state = snnzoo.create_model(entry['model'], pretrained=True).state_dict()
    assert all(torch.equal(state[k], v) for k, v in load_file(str(weights / entry['file'])).items())


def test_missing_file_names_where_to_put_it(isolated_search):
    weights, cache = isolated_search
    entry = MANIFEST[0]
    with pytest.raises(FileNotFoundError) as e:
        snnzoo.create_model(entry['model'], pretrained=True)
    assert entry['file'] in str(e.value) and str(weights) in str(e.value) and str(cache) in str(e.value)


def _test_set(entry, shared_root, tmp_path_factory):
    data_cfg = dict(entry['data_config'])
    if data_cfg.get('root') is not None:
        if shared_root is None:
            pytest.skip('needs ../shared/data')
        root = shared_root / 'data' / data_cfg['root']
        if data_cfg.get('archive'):
            target = tmp_path_factory.mktemp('data')
            with tarfile.open(shared_root / 'data' / data_cfg['archive']) as tar:
                tar.extractall(target, filter='data')
            root = target / data_cfg['root']
        if not root.exists():
            pytest.skip(f'{root} is absent')
        data_cfg['root'] = str(root)
    # the manifest is data: the test set comes from its registered name and plain options, never its _target_
    opts = {k: data_cfg[k] for k in ('T', 'split_by') if k in data_cfg}
    return build_dataset(data_cfg['name'], data_cfg.get('root'), 'test', **opts)


@pytest.mark.parametrize('entry', MANIFEST, ids=IDS)
def test_accuracy_matches_manifest(entry, request, tmp_path_factory):
    """snnzoo-eval's evaluate() on the real test set reproduces the manifest's accuracy to the digits printed."""
    from conftest import shared_path
    shared_root = shared_path() if (shared_path() / 'data').is_dir() else None
    test_set = _test_set(entry, shared_root, tmp_path_factory)
    model = snnzoo.create_model(entry['model'], pretrained=True)
    loader = torch.utils.data.DataLoader(test_set, batch_size=500)
    ev = evaluate(model, loader, torch.device('cpu'))
    assert ev['n'] == entry['n_test']
    assert f"{ev['acc1'] / 100:.4f}" == f"{entry['test_acc']:.4f}"


def test_convert_original_checkpoint_reproduces_fixture(reference_dir, tmp_path):
    fx = torch.load(reference_dir / 'fixtures' / 'spikformer' / 'cifar10_e32_d1_h2_T2_img32.pt', weights_only=False)
    original = tmp_path / 'checkpoint.pth.tar'
    torch.save({'model': {'module.' + k: v for k, v in fx['state_dict'].items()}, 'epoch': 3}, original)
    meta = fx['meta']['snnzoo']
    from snnzoo.train.convert_cli import main
    assert main([meta['name'], str(original), '--tag', 'fixture', '--out', str(tmp_path),
                 '--model-args', json.dumps(meta['kwargs'])]) == 0
    (path,) = tmp_path.glob(f"{meta['name']}.fixture-*.safetensors")
    config = json.loads((tmp_path / f"{meta['name']}.fixture.config.json").read_text())
    assert config['sha256'] == sha256_of(path) and config['sha256'].startswith(path.stem.rsplit('-', 1)[1])
    model = snnzoo.create_model(meta['name'], backend='torch', **config['model_args']).double().eval()
    snnzoo.load_checkpoint(model, load_file(str(path)))
    with torch.no_grad():
        out = model(fx['input'])
    torch.testing.assert_close(out, fx['eval_output'], rtol=0, atol=1e-6)


@pytest.mark.parametrize('num_classes', [0, 3])
def test_new_classifier_keeps_backbone(num_classes):
    entry = MANIFEST[0]
    model = snnzoo.create_model(entry['model'], pretrained=True, num_classes=num_classes)
    classifier = model.pretrained_cfg['classifier']
    state = model.state_dict()
    backbone = {k: v for k, v in load_file(str(CHECKPOINTS / entry['file'])).items()
                if not k.startswith(classifier + '.')}
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    assert model.num_classes == num_classes


def test_snnzoo_eval_takes_a_published_weight_file(tmp_path):
    """The CLI on a checkpoints/ file (digits needs no shared data) prints the manifest's accuracy."""
    entry = next(w for w in MANIFEST if w['model'] == 'spikformer_1_64_digits')
    code = 'import sys; from snnzoo.train.cli import evaluate; sys.argv[0] = "snnzoo-eval"; evaluate()'
    proc = subprocess.run([sys.executable, '-c', code, f"checkpoint={CHECKPOINTS / entry['file']}", 'data=digits',
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert f"test accuracy {100 * entry['test_acc']:.2f}%" in proc.stdout + proc.stderr


CONVERTED = [w for w in MANIFEST if w.get('conversion')]


@pytest.mark.parametrize('entry', CONVERTED, ids=[w['model'] for w in CONVERTED])
def test_converted_snn_matches_manifest(entry, tmp_path_factory):
    """The published QCFS ANN converted to IF neurons (snnzoo.conversion, no calibration data needed): the 'qcfs' SNN,
    plain and with signed neurons, reproduces the manifest's accuracy on its re-check images, and the exact mode at
    T = L predicts what the ANN predicts, image by image."""
    from conftest import shared_path
    from snnzoo.conversion import convert
    from snnzoo.train.ann2snn import evenly_spaced
    conv = entry['conversion']
    shared_root = shared_path() if (shared_path() / 'data').is_dir() else None
    test_set = _test_set(entry, shared_root, tmp_path_factory)
    index = evenly_spaced(len(test_set), conv['recheck_images'])  # the test folder is stored class by class
    x = torch.stack([test_set[i][0] for i in index])
    y = torch.tensor([test_set[i][1] for i in index])
    ann = snnzoo.create_model(entry['model'], pretrained=True).eval()
    with torch.no_grad():
        ann_pred = torch.cat([ann(b).argmax(-1) for b in x.split(250)])
        pred = {}
        for name, snn in (('plain', convert(ann, None, T=conv['T'], method=conv['method'])),
                          ('signed', convert(ann, None, T=conv['T'], method=conv['method'], signed=True)),
                          ('exact', convert(ann, None, T=conv['exact_T'], method='exact'))):
            pred[name] = torch.cat([snn(b).argmax(-1) for b in x.split(16)])  # small batches: [T*B, ...] in cache
    assert f"{(pred['plain'] == y).double().mean().item():.4f}" == f"{conv['recheck_acc']:.4f}"
    assert f"{(pred['signed'] == y).double().mean().item():.4f}" == f"{conv['signed_recheck_acc']:.4f}"
    assert torch.equal(pred['exact'], ann_pred)
