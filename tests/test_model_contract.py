"""The model contract (mlla_mm/models/README.md), checked on every registered model: a family gets this suite by
being registered. Test variants run in full; released sizes are built once to check their structure."""
import pytest
import torch

import mlla_mm
from mlla_mm.models import get_family, get_pretrained_cfg, list_families

# Models without a released checkpoint (the tiny '<family>_test' variants, ablation presets) must be CPU-cheap: they
# run the whole suite. Released sizes are checked for their pretrained cfg.
TEST_MODELS = [name for name in mlla_mm.list_models() if not get_pretrained_cfg(name)]
ODD_SIZE = (69, 99)


def _suite_models():
    """Every unreleased model; per family one ('<family>_test', else its first arch) runs by default, the others
    (ablation presets) in the slow sweep."""
    quick = set()
    for family in list_families().values():
        cheap = [m for m in family.archs.values() if m in TEST_MODELS]
        quick.add(next((m for m in cheap if m.endswith('_test')), cheap[0] if cheap else None))
    return [name if name in quick else pytest.param(name, marks=pytest.mark.slow) for name in TEST_MODELS]


SUITE = _suite_models()


def _ceil_div(size, reduction):
    return tuple(-(-s // reduction) for s in size)


def _model(name, **kwargs):
    torch.manual_seed(0)
    return mlla_mm.create_model(name, drop_path_rate=0.0, **kwargs)


def test_every_family_has_a_cheap_variant_and_known_archs():
    for family in list_families().values():
        assert set(family.archs.values()) & set(TEST_MODELS), f'{family.name} has no tiny unreleased variant'
        for model in family.archs.values():
            assert get_family(model) is family


@pytest.mark.parametrize('name', SUITE)
def test_feature_info_matches_the_intermediates_at_an_odd_size(name):
    model = _model(name).eval()
    info = model.feature_info
    assert info and all(set(i) >= {'num_chs', 'reduction', 'module'} for i in info)
    assert [i['reduction'] for i in info] == sorted(i['reduction'] for i in info)
    modules = dict(model.named_modules())
    assert all(i['module'] in modules for i in info), [i['module'] for i in info]
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, *ODD_SIZE), intermediates_only=True)
        nhwc = model.forward_intermediates(torch.randn(2, 3, *ODD_SIZE), output_fmt='NHWC', intermediates_only=True)
    assert len(maps) == len(info)
    for level, (out, out_nhwc, i) in enumerate(zip(maps, nhwc, info)):
        assert tuple(out.shape) == (2, i['num_chs'], *_ceil_div(ODD_SIZE, i['reduction'])), level
        assert out_nhwc.shape == out.permute(0, 2, 3, 1).shape, level
        assert torch.isfinite(out).all(), level


@pytest.mark.parametrize('name', SUITE)
def test_indices_stop_early_and_the_final_features(name):
    model = _model(name).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        final, maps = model.forward_intermediates(x)
    for a, b in zip(last_two, every[-2:]):
        torch.testing.assert_close(a, b)
    for a, b in zip(early, every[:2]):
        torch.testing.assert_close(a, b)
    assert len(maps) == len(every) and torch.isfinite(final).all()
    with pytest.raises(ValueError, match='subset of levels'):
        model.forward_intermediates(x, indices=[len(every)])
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(x, output_fmt='NCWH')


@pytest.mark.parametrize('name', SUITE)
def test_classifier_head_and_reset(name):
    model = _model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize('name', SUITE)
def test_gradient_reaches_every_parameter(name):
    model = _model(name, num_classes=0).train()
    model.prune_intermediate_layers(len(model.feature_info), prune_norm=True, prune_head=True)  # unused by the maps
    maps = model.forward_intermediates(torch.randn(2, 3, 37, 45), intermediates_only=True)
    sum((m * torch.linspace(-1, 1, m.numel()).view_as(m)).sum() for m in maps).backward()
    untouched = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not untouched, untouched
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('name', SUITE)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(name):
    results = []
    for enable in (False, True):
        model = _model(name, num_classes=0).train()
        model.set_grad_checkpointing(enable)
        maps = model.forward_intermediates(torch.randn(1, 3, 33, 41, generator=torch.Generator().manual_seed(1)),
                                           intermediates_only=True)
        sum((m * torch.linspace(0, 1, m.numel()).view_as(m)).sum() for m in maps).backward()
        results.append((maps, {n: p.grad for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for n, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], grad, msg=lambda m: f'{n}: {m}')


@pytest.mark.parametrize('name', SUITE)
def test_features_only_gives_nchw_maps(name):
    model = mlla_mm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, *ODD_SIZE))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [m.shape[2:] for m in maps] == [_ceil_div(ODD_SIZE, r) for r in model.feature_info.reduction()]


@pytest.mark.parametrize('name', SUITE)
def test_stage_prefixes_and_no_weight_decay_name_real_parameters(name):
    model = _model(name)
    names = [n for n, _ in model.named_parameters()]
    groups = model.stage_prefixes()
    assert len(groups) == len(model.feature_info) + 1
    for group in groups:
        assert any(n.startswith(tuple(group)) for n in names), group
    assert set(model.no_weight_decay()) <= set(names)


@pytest.mark.parametrize('name', SUITE)
def test_bad_input_names_the_problem(name):
    model = _model(name)
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\].*\(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\].*\(3, 32, 32\)'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match='floating-point'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize('name', sorted(set(mlla_mm.list_models()) - set(TEST_MODELS)))
def test_released_models_have_a_pretrained_cfg(name):
    cfg = get_pretrained_cfg(name)
    assert cfg.get('file') and cfg.get('url'), f'{name}: default_cfgs needs the upstream file name and where it is'


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match='known models: .*mlla_t.*vmamba_t'):
        mlla_mm.create_model('mlla_xl')


def test_timm_creates_our_models_with_features_only():
    import timm
    model = timm.create_model('mlla_test', features_only=True)
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert [m.shape[1] for m in model(torch.randn(1, 3, 64, 64))] == [32, 64, 128, 256]
    assert timm.create_model('vmamba_test', num_classes=3)(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_timm_registration_needs_no_import_order():
    """The issue's own command, timm imported after mlla_mm, in a fresh process."""
    import subprocess
    import sys
    code = ("import mlla_mm, timm; m = timm.create_model('mlla_t', features_only=True); "
            "print(m.feature_info.channels())")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == '[64, 128, 256, 512]'
