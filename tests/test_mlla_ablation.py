"""The MLLA ablation block (mlla_mm/models/mlla_ablation.py): every preset trains, and each switch does what its
equation says."""
import dataclasses

import pytest
import torch

import mlla_mm
from mlla_mm.models.mlla_ablation import (ABLATION_MODELS, PRESETS, AblationAttention, AblationConfig, MLLAAblation,
                                          resolve_config)

from .tolerances import assert_close


@pytest.mark.parametrize('preset', list(PRESETS))
def test_preset_trains_one_step_with_every_parameter_in_the_gradient(preset):
    torch.manual_seed(0)
    model = mlla_mm.create_model(ABLATION_MODELS[preset], num_classes=5, drop_path_rate=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = torch.randn(2, 3, 45, 67), torch.tensor([1, 3])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


def test_mlla_preset_is_mlla():
    # block_sub + LePE + CPE + RoPE is the final MLLA design: same keys, same outputs.
    reference = mlla_mm.create_model('mlla_test').eval()
    model = mlla_mm.create_model('mlla_ablation_mlla').eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 45, 67)
    with torch.no_grad():
        assert_close(model(images), reference(images), torch.float32, 'logits')


def test_tiny_size_of_the_mlla_preset_has_mlla_t_parameters():
    model = mlla_mm.create_model('mlla_ablation_mlla', size='tiny')
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in mlla_mm.create_model('mlla_t').parameters())


def _attention(preset, dim=32, heads=2, **switches):
    torch.manual_seed(1)
    return AblationAttention(dim, heads, resolve_config(preset, **switches), value_proj=True, ape_grid=8).eval()


def _copy_common(source, target):
    target.load_state_dict({k: v for k, v in source.state_dict().items() if k in ('qk.weight', 'qk.bias', 'v.weight',
                                                                               'v.bias')}, strict=False)


def test_input_gate_of_one_and_zero_shortcut_give_the_baseline():
    tokens = torch.randn(2, 5, 7, 32)
    baseline = _attention('baseline')
    gated = _attention('input_gate')
    with torch.no_grad():
        gated.gate_up.weight.zero_()  # Delta = softplus(gate_bias) = 1 with the 'unit' init
    shortcut = _attention('shortcut')
    with torch.no_grad():
        shortcut.D.zero_()
    for variant in (gated, shortcut):
        _copy_common(baseline, variant)
        with torch.no_grad():
            assert_close(variant(tokens), baseline(tokens), torch.float32, type(variant).__name__)


def test_causal_forget_gate_does_not_look_ahead():
    attention = _attention('forget_gate')
    tokens = torch.randn(1, 4, 6, 32)
    changed = tokens.clone()
    changed[:, 3, 2:] += 1.0  # the tokens after (3, 1) in raster order
    with torch.no_grad():
        out, out_changed = attention(tokens), attention(changed)
    assert_close(out_changed[:, :3], out[:, :3], torch.float32, 'rows before the change')
    assert_close(out_changed[:, 3, :2], out[:, 3, :2], torch.float32, 'tokens before the change')
    assert not torch.allclose(out_changed[:, 3, 2:], out[:, 3, 2:])


@pytest.mark.parametrize('direction', ['causal', 'bidirectional', '4-direction'])
def test_forget_gate_that_forgets_everything_returns_the_values(direction):
    # exp(g) -> 0: each token sees only itself, and the normalised output phi(q).phi(k) v / phi(q).phi(k) is v.
    attention = _attention('forget_gate', forget_gate=direction)
    with torch.no_grad():
        attention.A_log.fill_(30.0)
    tokens = torch.randn(2, 3, 5, 32)
    with torch.no_grad():
        assert_close(attention(tokens), attention.v(tokens), torch.float32, direction)


def test_bidirectional_forget_gate_sees_both_ways():
    attention = _attention('forget_gate', forget_gate='bidirectional')
    tokens = torch.randn(1, 4, 6, 32)
    changed = tokens.clone()
    changed[:, 3, 5] += 1.0  # the last token
    with torch.no_grad():
        assert not torch.allclose(attention(changed)[:, 0, 0], attention(tokens)[:, 0, 0])


def test_single_head_shares_one_small_query_key():
    attention = _attention('single_head', qk_dim=16)
    assert attention.qk.weight.shape == (32, 32) and attention.qk_heads == 1
    assert attention(torch.randn(1, 3, 4, 32)).shape == (1, 3, 4, 32)


def test_attention_norm_settings():
    tokens = torch.randn(1, 6, 6, 32)
    mean, none = _attention('baseline', attn_norm='mean'), _attention('baseline', attn_norm='none')
    with torch.no_grad():
        assert_close(none(tokens), mean(tokens) * 36, torch.float32, "'none' is 'mean' times N")


def test_ape_is_resized_to_the_runtime_grid():
    attention = _attention('ape')
    assert attention(torch.randn(1, 5, 11, 32)).shape == (1, 5, 11, 32)
    assert attention.ape.shape == (8, 8, 32)


def test_block_designs_have_their_modules():
    all_block = MLLAAblation('block_all', embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)).layers[0].blocks[0]
    assert all_block.in_proj.out_features == 128 and not hasattr(all_block, 'mlp')
    sub_block = MLLAAblation('block_sub', embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)).layers[0].blocks[0]
    assert sub_block.attn.v is None and hasattr(sub_block, 'act_proj') and sub_block.cpe1 is None


def test_no_weight_decay_names_the_ssm_parameters():
    model = mlla_mm.create_model('mlla_ablation_baseline', input_gate=True, forget_gate='causal', shortcut=True,
                                 pos=('ape',))
    names = model.no_weight_decay()
    block = 'layers.0.blocks.0.attn.'
    assert {block + n for n in ('D', 'A_log', 'decay_bias', 'gate_bias', 'ape')} <= names
    assert block + 'qk.weight' not in names


def test_switch_errors_name_the_known_values():
    with pytest.raises(KeyError, match="unknown preset 'gated'.*baseline, input_gate"):
        resolve_config('gated')
    with pytest.raises(TypeError, match=r"unknown switches \['gates'\]"):
        resolve_config('baseline', gates=True)
    with pytest.raises(ValueError, match="forget_gate='sideways'; known: none, causal, bidirectional, 4-direction"):
        AblationConfig(forget_gate='sideways')
    with pytest.raises(ValueError, match=r"unknown positional encodings \['sine'\]"):
        AblationConfig(pos=('rope', 'sine'))
    with pytest.raises(ValueError, match='forget_gate with rope'):
        AblationConfig(forget_gate='causal', pos=('rope',))
    with pytest.raises(KeyError, match="unknown size 'huge'"):
        mlla_mm.create_model('mlla_ablation_baseline', size='huge')
    assert dataclasses.replace(PRESETS['baseline'], pos='rope').pos == ('rope',)
