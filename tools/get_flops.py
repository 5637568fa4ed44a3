"""Parameters and FLOPs of a detector / segmentor config or of a registered backbone, at one input size.

    python tools/get_flops.py configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py            # 800 x 1280 (mmdet's default)
    python tools/get_flops.py configs/mmseg/upernet_mlla-b_8xb2-160k_ade20k-512x512.py  # 512 x 2048 (mmseg's default)
    python tools/get_flops.py mlla_t --shape 224 224                                    # a backbone of mlla_mm.models
    python tools/get_flops.py timm:convnext_tiny --shape 224 224                        # a timm backbone

FLOPs follow mmengine.analysis / fvcore: one multiply-add counts as one FLOP (i.e. MACs), the convention of the
MLLA paper and of mmdet's / mmseg's get_flops. Elementwise work (activations, RoPE rotation, additions) is not counted.

The linear-attention op (mlla_mm.kernels.linear_attention) is traced through its PyTorch reference (the backend is
forced to 'torch' here), whose einsums mmengine counts: the K^T V and Q (K^T V) products and the normaliser, i.e.
2 * B * N * C * d + B * N * C MACs per call for N tokens, C channels and head dim d. The script also computes that
figure per call from the module inputs and prints both, so a backend that hides the matmuls from the tracer (Triton)
cannot silently drop them from the count.
"""
import argparse
import os

# Trace the reference implementation of the linear attention (see the module docstring). Set before mlla_mm is used.
os.environ['MLLA_MM_BACKEND'] = 'torch'

import torch  # noqa: E402
from mmengine.analysis import parameter_count  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mlla_mm.benchmark import build_subject, flop_analyzer  # noqa: E402
from mlla_mm.layers import LinearAttention  # noqa: E402

DEFAULT_SHAPES = {'mmdet': (800, 1280), 'mmseg': (512, 2048), 'backbone': (224, 224)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Count parameters and FLOPs (MACs) of a config or a backbone')
    parser.add_argument('target', help='config path, mmdet::NAME / mmseg::NAME, a registered model name '
                        '(e.g. mlla_t, vmamba_t; see mlla_mm.list_models()), a reference of tools/benchmark.py '
                        '(swin_t, convnext_t, mambaout_t) or timm:NAME')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input H W (or one value for H = W); default 800 1280 for mmdet, 512 2048 for mmseg, '
                        '224 224 for a backbone')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides, key=value')
    return parser.parse_args(argv)


class LinearAttentionCounter:
    """Analytic MACs of the linear-attention op over every LinearAttention call of a forward."""

    def __init__(self, model):
        self.macs = 0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, LinearAttention)]

    def _hook(self, module, inputs, output):
        batch, height, width, channels = inputs[0].shape
        head_dim = channels // module.num_heads
        tokens = height * width
        self.macs += 2 * batch * tokens * channels * head_dim + batch * tokens * channels

    def remove(self):
        for handle in self.handles:
            handle.remove()


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)  # a detector's proposal count after NMS, hence its RoI-head FLOPs, depends on the weights
    model, library = build_subject(args.target, args.cfg_options)
    library = library or 'backbone'
    model.eval()
    shape = args.shape or DEFAULT_SHAPES[library]
    if len(shape) == 1:
        shape = (shape[0], shape[0])
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f'--shape takes H W (or one size), got {args.shape}')
    shape = tuple(shape)
    counter = LinearAttentionCounter(model)
    with torch.no_grad():
        analyzer = flop_analyzer(model, shape, None if library == 'backbone' else library)
        total = analyzer.total()
        by_module = analyzer.by_module()
        by_op = analyzer.by_operator()
    counter.remove()
    params = parameter_count(model)
    print(f'input: 1 x 3 x {shape[0]} x {shape[1]} ({library})')
    print(f'params: {params[""] / 1e6:.2f} M' + ('' if library == 'backbone'
                                                  else f' (backbone {params["backbone"] / 1e6:.2f} M)'))
    print(f'FLOPs (MACs): {total / 1e9:.2f} G' + ('' if library == 'backbone'
                                                  else f' (backbone {by_module["backbone"] / 1e9:.2f} G)'))
    counted = by_op.get('einsum', 0)
    print(f'  of which linear attention: {counter.macs / 1e9:.3f} G analytic (2*B*N*C*d + B*N*C per call), '
          f'{counted / 1e9:.3f} G counted by the tracer (einsum)')
    if counter.macs and abs(counted - counter.macs) > 0.01 * counter.macs:
        print('  WARNING: the traced einsum count differs from the analytic linear-attention count by more than 1%')
    return dict(params=params[''], flops=total, linear_attention=counter.macs, linear_attention_traced=counted)


if __name__ == '__main__':
    main()
