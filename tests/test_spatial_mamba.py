"""Spatial-Mamba: released sizes, upstream-layout loading, parity with an independent oracle
(tests/oracles/spatial_mamba_oracle.py), the scan-as-states identity, and one code path for training and evaluation."""
import os
import re

import pytest
import torch
import torch.nn as nn

import mlla_mm
from mlla_mm.kernels.selective_scan import selective_scan
from mlla_mm.models.spatial_mamba import SPATIAL_MAMBA_ARCHS, StructureAwareSSM, checkpoint_filter_fn
from mlla_mm.utils import CheckpointMismatchError

from .oracles.spatial_mamba_oracle import spatial_mamba_forward, upstream_state_dict
from .tolerances import assert_close

TEST = SPATIAL_MAMBA_ARCHS['test']


def _arch(name):
    return {k: SPATIAL_MAMBA_ARCHS[name][k] for k in ('embed_dim', 'depths')}


def _set_backend(model, backend):
    for module in model.modules():
        if isinstance(module, StructureAwareSSM):
            module.backend = backend
    return model


def _loaded(seed=1, backend='torch'):
    sd = upstream_state_dict(**_arch('test'), seed=seed)
    model = mlla_mm.create_model('spatialmamba_test', drop_path_rate=0.0, backend=backend).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    return model, sd


@pytest.mark.parametrize('name, arch, params, keys', [
    ('spatialmamba_t', 'tiny', 26_748_862, 553),
    pytest.param('spatialmamba_s', 'small', 43_074_280, 931, marks=pytest.mark.slow),
    pytest.param('spatialmamba_b', 'base', 95_745_592, 931, marks=pytest.mark.slow)])
def test_released_sizes_match_upstream_and_its_layout_loads_strictly(name, arch, params, keys):
    # Parameter and key counts of upstream's SpatialMamba with the 1000-class head (reference §1.8 and §3, measured);
    # a state dict written from the documented keys and shapes loads with nothing missing or left over.
    model = mlla_mm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys
    sd = upstream_state_dict(**_arch(arch))
    assert len(sd) == keys
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    key = 'layers.2.blocks.7.self_attention.state_fusion.kernel_3_2'
    assert torch.equal(model.state_dict()[key], sd[key])


@pytest.mark.parametrize('entry', ['model', 'model_ema'])
def test_released_file_layout_loads_by_key(tmp_path, entry):
    # Upstream's trainer saves 'model' and (with EMA) 'model_ema' side by side, under a DataParallel-free model.
    sd = upstream_state_dict(**_arch('test'), seed=3)
    path = tmp_path / 'spatialmamba.pth'
    torch.save({entry: sd, 'epoch': 299}, path)
    model = mlla_mm.create_model('spatialmamba_test', pretrained=str(path))
    assert torch.equal(model.head.weight, sd['head.weight'])
    trunk = mlla_mm.create_model('spatialmamba_test', pretrained=str(path), num_classes=0)  # classifier dropped
    key = 'layers.3.blocks.0.self_attention.x_proj_weight'
    assert torch.equal(trunk.layers[3].blocks[0].self_attention.x_proj_weight, sd[key])


def test_wider_or_partial_checkpoints_fail(tmp_path):
    partial = upstream_state_dict(**_arch('test'))
    del partial['layers.1.blocks.0.self_attention.state_fusion.alpha']
    torch.save({'model': partial}, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointMismatchError, match=r'layers\.1\.blocks\.0\.self_attention\.state_fusion\.alpha'):
        mlla_mm.create_model('spatialmamba_test', pretrained=str(tmp_path / 'partial.pth'))
    wider = upstream_state_dict(embed_dim=32, depths=TEST['depths'])
    torch.save({'model': wider}, tmp_path / 'wider.pth')
    with pytest.raises(CheckpointMismatchError, match='shapes differ'):
        mlla_mm.create_model('spatialmamba_test', pretrained=str(tmp_path / 'wider.pth'))


def _check_oracle(model, sd, images, label):
    with torch.no_grad():
        features, maps = model.forward_intermediates(images)
        logits = model.forward_head(features)
    expected_maps, expected_logits = spatial_mamba_forward(sd, images, TEST['depths'])
    for i, (ours, theirs) in enumerate(zip(maps, expected_maps)):
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, torch.float32, f'stage {i} {label}')
    assert_close(logits, expected_logits, torch.float32, f'logits {label}')


@pytest.mark.parametrize('size', [(72, 104), (67, 45)])
def test_outputs_equal_oracle_fp32(size):
    model, sd = _loaded()
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    _check_oracle(model, sd, images, f'at {size}')


@pytest.mark.slow
def test_triton_backend_equals_oracle_fp32():
    # Scan and state fusion through the Triton kernels (interpreter on a CPU).
    if os.environ.get('TRITON_INTERPRET') != '1':
        pytest.skip('needs TRITON_INTERPRET=1 (tests/conftest.py) or a GPU run')
    model, sd = _loaded(backend='triton')
    _check_oracle(model, sd, torch.randn(1, 3, 67, 45, generator=torch.Generator().manual_seed(2)), 'on triton')


def test_scan_with_unit_C_returns_the_states():
    """With d_state 1, C = 1 and no D, the selective scan's output is the state h_t of every token (what upstream's
    "return hidden" CUDA scan gives), checked against the recurrence written out token by token."""
    gen = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 6, 40, generator=gen), torch.randn(2, 6, 40, generator=gen) - 2.0
    A, B, bias = -torch.rand(6, 1, generator=gen) - 0.5, torch.randn(2, 1, 1, 40, generator=gen), torch.randn(6)
    states = selective_scan(u, delta, A, B, torch.ones_like(B), None, bias, delta_softplus=True, output_fp32=True,
                            backend='torch')
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    h, expected = torch.zeros(2, 6), []
    for t in range(40):
        h = torch.exp(dt[..., t] * A[:, 0]) * h + dt[..., t] * B[:, 0, 0, t, None] * u[..., t]
        expected.append(h)
    assert states.dtype == torch.float32
    assert_close(states, torch.stack(expected, dim=-1), torch.float32, 'states')


def test_any_size_gives_ceil_strides_even_below_the_fusion_reach():
    model = mlla_mm.create_model('spatialmamba_test', num_classes=0).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 65, 97), intermediates_only=True)
        tiny = model.forward_intermediates(torch.randn(1, 3, 19, 9), intermediates_only=True)
    assert [tuple(m.shape[2:]) for m in maps] == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert [tuple(m.shape[2:]) for m in tiny] == [(5, 3), (3, 2), (2, 1), (1, 1)]
    assert all(torch.isfinite(m).all() for m in tiny)


def test_every_parameter_gets_a_gradient():
    model = mlla_mm.create_model('spatialmamba_test', drop_path_rate=0.0)
    model(torch.randn(2, 3, 40, 56)).square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def _train_mode(model):
    """Training mode with the BatchNorms (stem, downsampling) on their running statistics and no drop path: what
    remains differs from evaluation only where the model has a mode-dependent path, and the fusion must have none."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def test_training_and_evaluation_agree_also_after_a_fusion_update():
    model, _ = _loaded(seed=4)
    images = torch.randn(2, 3, 44, 60, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        evaluated = model.eval()(images)
        trained = _train_mode(model)(images)
    assert_close(trained, evaluated, torch.float32, 'train vs eval before the update')

    # An optimizer step on the fusion weights only (upstream's eval cache would keep the old merged kernel).
    fusion = [p for name, p in model.named_parameters() if '.state_fusion.' in name]
    optimizer = torch.optim.SGD(fusion, lr=0.5)
    _train_mode(model)(images).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        evaluated_after = model.eval()(images)
        trained_after = _train_mode(model)(images)
    assert not torch.allclose(evaluated_after, evaluated, atol=1e-3), 'the update did not change the output'
    assert_close(trained_after, evaluated_after, torch.float32, 'train vs eval after the update')
    _, expected = spatial_mamba_forward(model.state_dict(), images, TEST['depths'])
    assert_close(evaluated_after, expected, torch.float32, 'eval after the update vs the oracle on the new weights')


def test_bad_input_errors():
    model = mlla_mm.create_model('spatialmamba_test')
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\].*\(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(KeyError, match="unknown arch 'huge'.*tiny, small, base, test"):
        mlla_mm.models.get_family('SpatialMamba').model_name('huge')
    with pytest.raises(ValueError, match='d_state must be 1'):
        StructureAwareSSM(16, d_state=4)


@pytest.mark.slow
def test_stock_upernet_recipe_trains_and_validates_with_the_backbone(tmp_path):
    """Issue 12's 'done when': mmseg's UperNet recipe with --backbone spatialmamba_test trains and validates on the
    demo data in one run (64 px images, 64 px crops)."""
    from mlla_mm.utils.demo_data import make_demo_data

    from .test_tools import run
    make_demo_data(str(tmp_path / 'data'), train=4, val=2, size=64, min_radius=8, max_radius=20, log=lambda *_: None)
    ade = tmp_path / 'data' / 'ade'
    options = []
    for loader in ('train_dataloader', 'val_dataloader'):
        options += [f'{loader}.dataset.data_root={ade}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False', f'{loader}.batch_size=2']
    output = run('tools/train.py', 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py',
                 '--backbone', 'spatialmamba_test', '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options,
                 'train_dataloader.dataset.pipeline.2.scale=(128,64)',
                 'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
                 'model.data_preprocessor.size=(64,64)', 'val_dataloader.dataset.pipeline.1.scale=(128,64)',
                 'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
                 'default_hooks.checkpoint.interval=2', timeout=1200)
    assert 'swap_backbone: model.backbone: SpatialMamba (spatialmamba_test)' in output
    assert re.search(r'Iter\(train\) \[2/2\]', output), output[-3000:]
    assert re.search(r'mIoU: \d', output), output[-3000:]
