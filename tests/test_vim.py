"""Vim: upstream sizes and key layouts, strict loading of upstream classification and segmentation-backbone state
dicts, parity with the functional oracle written from the reference (fp32, rectangular input), position-embedding
resizing, any input size, and the Triton scan against the PyTorch one."""
import pytest
import torch

from mlla_mm.models import create_model, get_family
from mlla_mm.models.vim import VIM_ARCHS, BiMambaMixer, RMSNorm, Vim, add_rms_norm, checkpoint_filter_fn
from mlla_mm.utils import CheckpointMismatchError, load_state_dict_reported
from tests.oracles.vim_oracle import (resample_classifier_pos_embed, upstream_classifier_forward,
                                      upstream_seg_backbone_forward, upstream_vim_shapes, upstream_vim_state_dict)
from tests.tolerances import assert_close

# A small Vim whose taps are not one block per level: depth 8 taps blocks 1, 3, 5, 7.
ORACLE_DIM, ORACLE_DEPTH = 32, 8
RECT = (64, 96)  # a 4 x 6 patch grid


def backbone(name='vim_test', **kwargs):
    """What the mm adapter builds: no classes, then pruned to a feature backbone with all levels."""
    model = create_model(name, num_classes=0, **kwargs)
    model.prune_intermediate_layers(None, prune_norm=True, prune_head=True)
    return model


@pytest.mark.parametrize('name,arch,params', [
    ('vim_t', 'tiny', 7_148_008), ('vim_s', 'small', 25_796_584), ('vim_b', 'base', 97_598_440)])
def test_released_models_have_upstream_keys_shapes_and_sizes(name, arch, params):
    model = create_model(name)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = upstream_vim_shapes(VIM_ARCHS[arch]['embed_dim'], VIM_ARCHS[arch]['depth'])
    assert len(expected) == 415 and own == expected
    assert sum(p.numel() for p in model.parameters()) == params  # reference A2, measured upstream


def test_segmentation_backbone_has_upstream_keys_and_size():
    """VisionMambaSeg, tiny config at 512 (reference A7): 423 keys, 7,556,928 parameters (norm_f included)."""
    model = create_model('vim_t', num_classes=0, img_size=512)
    model.prune_intermediate_layers(None, prune_norm=False, prune_head=True)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == upstream_vim_shapes(192, 24, grid=(32, 32), layout='segmentation')
    assert len(own) == 423 and sum(p.numel() for p in model.parameters()) == 7_556_928


def test_upstream_classification_state_dict_loads_strictly():
    state_dict = upstream_vim_state_dict(32, 4)
    model = create_model('vim_test')
    load_state_dict_reported(model, checkpoint_filter_fn({f'module.{k}': v for k, v in state_dict.items()}, model))
    assert torch.equal(model.pos_embed, state_dict['pos_embed'])
    assert torch.equal(model.layers[3].mixer.x_proj_b.weight, state_dict['layers.3.mixer.x_proj_b.weight'])


def test_upstream_seg_backbone_state_dict_loads_strictly_into_the_pruned_backbone():
    state_dict = upstream_vim_state_dict(32, 4, grid=(32, 32), layout='segmentation')
    model = backbone(img_size=512)
    filtered = checkpoint_filter_fn({f'backbone.{k}': v for k, v in state_dict.items()}, model)
    assert 'norm_f.weight' not in filtered  # pruned with the head: dropped by name
    model.load_state_dict(filtered, strict=True)
    assert torch.equal(model.fpn1[1].running_var, state_dict['fpn1.1.running_var'])


def test_classification_checkpoint_into_the_backbone_drops_the_cls_slot_and_resizes_the_grid():
    state_dict = upstream_vim_state_dict(32, 4)  # 14 x 14 grid, cls slot at 98
    model = backbone(img_size=(64, 96))
    filtered = checkpoint_filter_fn(state_dict, model)
    assert not any(k == 'cls_token' or k.startswith(('head.', 'norm_f.')) for k in filtered)
    pyramid = {k: v.clone() for k, v in model.state_dict().items() if k.startswith('fpn')}
    assert load_state_dict_reported(model, filtered) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pyramid.items())  # new: kept at its init
    with_cls = resample_classifier_pos_embed(state_dict['pos_embed'], (4, 6))
    assert_close(model.pos_embed, torch.cat([with_cls[:, :12], with_cls[:, 13:]], dim=1), torch.float32,
                 'resized patch positions')


def test_checkpoint_filter_refuses_what_the_model_cannot_represent():
    seg = upstream_vim_state_dict(32, 4, grid=(4, 4), layout='segmentation')
    with pytest.raises(ValueError, match='no cls_token.*cannot fill the cls token'):
        checkpoint_filter_fn(seg, create_model('vim_test'))
    rope = upstream_vim_state_dict(32, 4)
    rope['rope.freqs_cos'] = torch.zeros(196, 32)  # upstream's RoPE configs: this model has no RoPE
    model = create_model('vim_test')
    with pytest.raises(CheckpointMismatchError, match='rope.freqs_cos'):
        load_state_dict_reported(model, checkpoint_filter_fn(rope, model))
    wider = upstream_vim_state_dict(64, 4)
    with pytest.raises(ValueError, match=r'pos_embed has shape \(1, 197, 64\)'):
        checkpoint_filter_fn(wider, model)


def _oracle_model(**kwargs):
    return Vim(embed_dim=ORACLE_DIM, depth=ORACLE_DEPTH, drop_path_rate=0.1, **kwargs).eval()


def test_classifier_matches_oracle_at_a_rectangular_size():
    state_dict = upstream_vim_state_dict(ORACLE_DIM, ORACLE_DEPTH, grid=(4, 6), num_classes=10)
    model = _oracle_model(img_size=RECT, num_classes=10)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    images = torch.randn(2, 3, *RECT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = upstream_classifier_forward(state_dict, images, ORACLE_DEPTH)
        assert_close(model(images), expected, torch.float32, 'logits')


def test_position_embedding_is_resized_at_run_time_as_the_reference_recommends():
    """A 224 classifier fed 64 x 96 images equals the oracle with the table resized by the reference's mapping."""
    state_dict = upstream_vim_state_dict(ORACLE_DIM, ORACLE_DEPTH, num_classes=10, seed=3)
    model = _oracle_model(num_classes=10)
    model.load_state_dict(state_dict, strict=True)
    resized = dict(state_dict, pos_embed=resample_classifier_pos_embed(state_dict['pos_embed'], (4, 6)))
    images = torch.randn(1, 3, *RECT, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(model(images), upstream_classifier_forward(resized, images, ORACLE_DEPTH), torch.float32,
                     'logits at 64x96')


def test_backbone_matches_oracle_at_a_rectangular_size():
    state_dict = upstream_vim_state_dict(ORACLE_DIM, ORACLE_DEPTH, grid=(4, 6), layout='segmentation', seed=4)
    model = _oracle_model(img_size=RECT, num_classes=0)
    model.prune_intermediate_layers(None, prune_norm=True, prune_head=True)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    images = torch.randn(2, 3, *RECT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = upstream_seg_backbone_forward(state_dict, images, ORACLE_DEPTH, out_indices=(1, 3, 5, 7))
        ours = model.forward_intermediates(images, stop_early=True, output_fmt='NHWC', intermediates_only=True)
    assert [tuple(m.shape) for m in expected] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    for level, (mine, ref) in enumerate(zip(ours, expected)):
        assert_close(mine.permute(0, 3, 1, 2), ref, torch.float32, f'level {level}')


@pytest.mark.parametrize('size', [(33, 45), (64, 64), (100, 150), (16, 16)])
def test_any_input_size_gives_ceil_strides(size):
    model = backbone().eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert [tuple(m.shape[2:]) for m in maps] == [(-(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)]
    assert [m.shape[1] for m in maps] == [info['num_chs'] for info in model.feature_info] == [32] * 4
    classifier = create_model('vim_test', num_classes=7).eval()
    with torch.no_grad():
        assert classifier(torch.randn(2, 3, *size)).shape == (2, 7)


def test_stop_early_and_index_selection():
    model = backbone().eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        first_two = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        final, last = model.forward_intermediates(x, indices=1)
    assert len(first_two) == 2 and all(torch.equal(a, b) for a, b in zip(first_two, every[:2]))
    assert torch.equal(last[0], every[3]) and final.shape == (1, 12, 32)


def test_pyramid_exists_only_when_features_are_requested():
    classifier = create_model('vim_test')
    assert not any(k.startswith('fpn') for k in classifier.state_dict())
    assert any(k.startswith('fpn1.') for k in create_model('vim_test', num_classes=0).state_dict())
    # A classifier asked for maps builds its pyramid, keeps its cls token on both paths and leaves it out of the maps.
    classifier.eval()
    with torch.no_grad():
        final, maps = classifier.forward_intermediates(torch.randn(1, 3, 32, 48))
    assert classifier.has_pyramid and not classifier.fpn1.training
    assert final.shape == (1, 7, 32) and maps[2].shape == (1, 32, 2, 3)
    assert classifier.forward_head(final).shape == (1, 1000)


def test_no_weight_decay_stage_prefixes_and_family():
    model = backbone()
    assert model.no_weight_decay() == {'pos_embed'}
    assert create_model('vim_test').no_weight_decay() == {'pos_embed', 'cls_token'}
    stages = create_model('vim_t').stage_prefixes()
    assert stages[1] == tuple(f'layers.{i}.' for i in range(6)) + ('fpn1.',)
    assert stages[4][-2:] == ('layers.23.', 'fpn4.')
    names = [n for n, _ in model.named_parameters()]
    prefixes = model.stage_prefixes()
    assert all(sum(n.startswith(p) for stage in prefixes for p in stage) == 1 for n in names)
    family = get_family('Vim')
    assert family.model_name('test') == 'vim_test' and family.out_norm is None


def test_residual_stream_stays_float32():
    norm = RMSNorm(8).bfloat16()
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    normed, residual = add_rms_norm(x, None, norm)
    assert normed.dtype == torch.bfloat16 and residual.dtype == torch.float32
    normed, residual = add_rms_norm(x, residual, norm)
    assert residual.dtype == torch.float32
    assert_close(residual, 2 * x.float(), torch.float32, 'residual')


def test_bad_input_raises_clear_errors():
    model = create_model('vim_test')
    with pytest.raises(ValueError, match=r'expects images \[B, 3, H, W\], got shape \(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match='out_layers'):
        create_model('vim_test', out_layers=(0, 1, 1, 3))


def test_mixer_on_triton_scan_matches_torch_scan():
    """The bidirectional mixer (d_state 16, both directions, non-contiguous B/C, reversed sequence) on the Triton
    scan (CPU interpreter) against the PyTorch scan: output and the gradients of the input and every parameter."""
    torch.manual_seed(0)
    torch_mixer = BiMambaMixer(4, backend='torch')
    triton_mixer = BiMambaMixer(4, backend='triton')
    triton_mixer.load_state_dict(torch_mixer.state_dict())
    h = torch.randn(1, 5, 4)
    outputs, grads = [], []
    for mixer in (torch_mixer, triton_mixer):
        x = h.clone().requires_grad_()
        out = mixer(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append([x.grad] + [p.grad for p in mixer.parameters()])
    assert_close(outputs[1], outputs[0], torch.float32, 'mixer output')
    names = ['input'] + [n for n, _ in torch_mixer.named_parameters()]
    for name, ours, ref in zip(names, grads[1], grads[0]):
        assert_close(ours, ref, torch.float32, f'grad of {name}')


@pytest.mark.slow
def test_triton_backend_matches_torch_backend():
    """vim_test on the Triton scan (CPU interpreter) against the PyTorch scan: the maps and the gradients of the
    input and of every parameter (about 3.5 CPU minutes under the interpreter)."""
    torch.manual_seed(0)
    torch_model = backbone(backend='torch').eval()
    triton_model = backbone(backend='triton').eval()
    triton_model.load_state_dict(torch_model.state_dict())
    x = torch.randn(1, 3, 32, 40)
    outputs, grads = [], []
    for model in (torch_model, triton_model):
        image = x.clone().requires_grad_()
        maps = model.forward_intermediates(image, intermediates_only=True)
        sum((m * torch.linspace(-1, 1, m.numel()).view_as(m)).sum() for m in maps).backward()
        outputs.append(maps)
        grads.append([image.grad] + [p.grad for p in model.parameters()])
    for level, (ours, ref) in enumerate(zip(*outputs[::-1])):
        assert_close(ours, ref, torch.float32, f'level {level}')
    names = ['input'] + [n for n, _ in torch_model.named_parameters()]
    for name, ours, ref in zip(names, grads[1], grads[0]):
        assert_close(ours, ref, torch.float32, f'grad of {name}')


@pytest.mark.parametrize('config,lr,decay,layer_scales', [
    ('configs/mmdet/mask-rcnn_vim-t_fpn_1x_coco.py', 1e-4, 0.1, True),
    ('configs/mmseg/upernet_vim-t_8xb2-160k_ade20k-512x512.py', 6e-5, 0.01, False)])
def test_config_optimizer_reproduces_upstream_layer_decay(config, lr, decay, layer_scales):
    """Detection: get_vim_lr_decay_rate's per-block scales (0.837 ** (25 - id)); segmentation: what upstream's
    LayerDecayOptimizerConstructor did to Vim (0.92 ** 25 on pos_embed / patch_embed only). No decay on norms and
    pos_embed."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    import mlla_mm.mm
    cfg = Config.fromfile(config)
    model = torch.nn.Module()
    settings = {k: v for k, v in cfg.model.backbone.items() if k != 'type'}
    model.backbone = mlla_mm.mm.BACKBONES['Vim'](**{**settings, 'arch': 'tiny', 'init_cfg': None})
    groups = {id(p): g for g in build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
              for p in g['params']}
    params = dict(model.named_parameters())

    def lr_and_decay(name):
        return groups[id(params[name])]['lr'], groups[id(params[name])]['weight_decay']

    rate = 0.837 if layer_scales else 0.92
    assert lr_and_decay('backbone.pos_embed') == pytest.approx((lr * rate ** 25, 0.0))
    assert lr_and_decay('backbone.patch_embed.proj.weight') == pytest.approx((lr * rate ** 25, decay))
    for i in (0, 11, 23):
        scale = 0.837 ** (24 - i) if layer_scales else 1.0
        assert lr_and_decay(f'backbone.layers.{i}.mixer.in_proj.weight') == pytest.approx((lr * scale, decay))
        assert lr_and_decay(f'backbone.layers.{i}.norm.weight') == pytest.approx((lr * scale, 0.0))
    assert lr_and_decay('backbone.fpn1.0.weight') == pytest.approx((lr, decay))
