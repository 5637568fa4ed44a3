"""Vim ("Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model", Zhu et al.,
ICML 2024), re-implemented with the module names of the upstream code (``vim/models_mamba.py``,
``seg/backbone/vim.py``), so that its ImageNet checkpoints and its segmentation-backbone state dicts load by key.

Released settings (reference/vim_mambaout.md A2): patch 16, depth 24, d_state 16, expand 2, d_conv 4, bidirectional
"v2" mixer with the two directions averaged, RMSNorm with the residual stream kept in float32, an absolute position
embedding and one cls token in the middle of the sequence.

Two paths through the same blocks:

- classification (``forward``): patches + pos_embed, the cls token spliced in at index M // 2 (M patches), 24 blocks,
  ``norm_f`` of the residual stream, the cls token's features into ``head``.
- dense prediction (``forward_intermediates``): the upstream segmentation backbone's four taps, i.e. the mixer
  outputs of blocks 6/12/18/24 (for depth 24; ``depth * k / 4`` in general), turned into a stride-4/8/16/32 pyramid by
  ``fpn1`` (two 2x2 transposed convs with BatchNorm + GELU between), ``fpn2`` (one transposed conv), ``fpn3``
  (identity) and ``fpn4`` (2x2 max pool).

Where the pyramid lives (a design decision): ``fpn1..fpn4`` belong to the model only when features are requested:
a model built without a classifier (``num_classes=0``, or ``feature_pyramid=True``) has them from the start,
``prune_intermediate_layers`` (what the mm adapter and ``features_only`` call) adds them, and a classifier's first
``forward_intermediates`` call builds them (with a warning: an optimizer made before does not hold them).
- A classifier has none, so an upstream classification checkpoint (415 keys, 7,148,008 parameters for Ti) loads
  strictly into ``vim_t``.
- A pruned backbone has exactly the keys of upstream's ``VisionMambaSeg`` (pos_embed without a cls slot,
  patch_embed, layers, fpn1/fpn2; norm_f and head are dropped by name), so a segmentation-backbone state dict loads
  strictly into it.
- An ImageNet checkpoint has no pyramid: loaded into a backbone, the checkpoint filter keeps fpn1/fpn2 at their
  initial values (as upstream's strict=False load does), and every trunk weight is still loaded strictly.
- Pruning the head also removes the cls token and its position slot: the cls token feeds only the classifier, and
  upstream's segmentation backbone runs without it. A model that still has its cls token runs it in the middle of
  the sequence on both paths and leaves it out of the maps.

Any input size works, rectangular and odd: the image is zero-padded to a multiple of 16, the position embedding is
resized (bicubic) from its table to the runtime grid, and the levels are cropped to ceil(H / s) x ceil(W / s). Two
upstream limitations are not reproduced: its PatchEmbed asserts the training size and its segmentation backbone
assumes square grids. Two upstream bugs are avoided: the segmentation backbone's positional ``super().__init__``
call (which turns d_state into 3 and in_chans into 80; every argument here is a keyword), and the index-0 cls-token
convention of upstream's position-embedding helpers (the middle-cls checkpoints keep the cls position at index
M // 2, which ``checkpoint_filter_fn`` drops or keeps by that index).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mlla_mm.kernels.selective_scan import selective_scan
from mlla_mm.layers import DropPath
from mlla_mm.utils import check_images, log_report, strip_wrapper_prefixes

from .registry import feature_take_indices, pretrained_cfg, register_family, register_model, to_format

# Settings of the released models (reference/vim_mambaout.md A2, A4); drop_path_rate is the ImageNet one
# (vim/scripts/pt-vim-{t,s}.sh; Base has no released script, main.py's default 0.1). 'test' is a tiny variant.
VIM_ARCHS = {
    'tiny': dict(embed_dim=192, depth=24, drop_path_rate=0.0),
    'small': dict(embed_dim=384, depth=24, drop_path_rate=0.05),
    'base': dict(embed_dim=768, depth=24, drop_path_rate=0.1),
    'test': dict(embed_dim=32, depth=4, drop_path_rate=0.1),
}
NUM_LEVELS = 4


class RMSNorm(nn.Module):
    """Weight-only RMSNorm over the last dim, computed in float32 (upstream's Triton ``RMSNorm``, key ``weight``)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


def add_rms_norm(x: torch.Tensor, residual, norm: RMSNorm, residual_in_fp32: bool = True):
    """``residual + x`` then RMSNorm, as upstream's fused ``rms_norm_fn(prenorm=True)``.

    Returns (normalised sum in x's dtype, the sum: float32 when ``residual_in_fp32``, else the residual's dtype).
    ``residual=None`` (the first block) starts the residual stream at ``x``.
    """
    if residual is None:
        residual = x.float() if residual_in_fp32 else x
    else:
        residual = (residual.float() + x.float()).to(residual.dtype)
    return norm(residual).to(x.dtype), residual


class BiMambaMixer(nn.Module):
    """Upstream's ``Mamba`` with ``bimamba_type='v2'`` and ``if_divide_out=True``: two selective scans with their own
    conv1d / x_proj / dt_proj / A / D, the second over the reversed sequence, averaged and gated by SiLU(z).

    h: [B, L, C] -> [B, L, C]. With E = expand * C, R = ceil(C / 16), N = d_state:
        x, z = split(in_proj(h))                                   # [B, E, L] each
        S(x; conv, x_proj, dt_proj, A, D) = scan(u = SiLU(causal_conv1d(x)), delta = dt_proj.weight @ dt,
                                                 B, C from x_proj(u), delta_bias = dt_proj.bias, softplus)
        out = out_proj(0.5 * SiLU(z) * (S_f(x) + flip(S_b(flip(x)))))
    (upstream gates each direction with its own flipped z; flip(flip(z)) = z, so the gate factors out.)
    """

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, backend=None):
        super().__init__()
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16)
        self.d_state = d_state
        self.backend = backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        for suffix in ('', '_b'):
            self.add_module(f'conv1d{suffix}', nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner))
            self.add_module(f'x_proj{suffix}', nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module(f'dt_proj{suffix}', nn.Linear(self.dt_rank, self.d_inner))
        # Parameter order as upstream's state dict: A_log, D, A_b_log, D_b.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.A_b_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D_b = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        """Mamba's initialisation: S4D-real A = 1..N, D = 1, dt_proj weights U(+-R^-0.5) and biases softplus^-1 of a
        log-uniform dt in [dt_min, dt_max]. Upstream's model-level init zeroes ``dt_proj_b.bias`` (only
        ``dt_proj.bias`` is marked ``_no_reinit``); both directions get the dt initialisation here."""
        a_log = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1)
        for suffix in ('', '_b'):
            getattr(self, f'A{suffix}_log').copy_(a_log)
            getattr(self, f'D{suffix}').fill_(1.0)
            dt_proj = getattr(self, f'dt_proj{suffix}')
            nn.init.uniform_(dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _scan(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction: x [B, E, L] -> y [B, E, L] (D * u included, before the gate)."""
        conv = getattr(self, f'conv1d{suffix}')
        dt_proj = getattr(self, f'dt_proj{suffix}')
        # Causal depthwise conv: pad k - 1 on the left (upstream pads both sides and keeps the first L outputs).
        u = F.silu(F.conv1d(F.pad(x, (conv.kernel_size[0] - 1, 0)), conv.weight, conv.bias, groups=self.d_inner))
        projected = F.linear(u.transpose(1, 2), getattr(self, f'x_proj{suffix}').weight)  # [B, L, R + 2N]
        dt, b, c = projected.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)                              # [B, E, L], no bias
        b, c = b.transpose(1, 2).unsqueeze(1), c.transpose(1, 2).unsqueeze(1)             # [B, 1, N, L]
        return selective_scan(u, delta, -torch.exp(getattr(self, f'A{suffix}_log').float()), b, c,
                              getattr(self, f'D{suffix}'), dt_proj.bias, delta_softplus=True, backend=self.backend)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        y = self._scan(x, '') + self._scan(x.flip(-1), '_b').flip(-1)
        return self.out_proj((0.5 * y * F.silu(z)).transpose(1, 2))


class VimBlock(nn.Module):
    """Upstream's "add -> norm -> mixer" block: (hidden, residual) -> (mixer output, residual stream).

    residual <- residual + DropPath(hidden) (hidden itself in the first block); return mixer(RMSNorm(residual)).
    Shapes [B, L, C]; the residual stream stays float32 when ``residual_in_fp32``.
    """

    def __init__(self, dim: int, d_state: int, expand: int, d_conv: int, drop_path: float, norm_eps: float,
                 residual_in_fp32: bool, backend=None):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = BiMambaMixer(dim, d_state, expand, d_conv, backend)
        self.norm = RMSNorm(dim, norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual=None):
        if residual is not None:
            hidden = self.drop_path(hidden)
        hidden, residual = add_rms_norm(hidden, residual, self.norm, self.residual_in_fp32)
        return self.mixer(hidden), residual


class PatchEmbed(nn.Module):
    """16x16 patches: [B, 3, H, W] -> [B, C, ceil(H/16), ceil(W/16)] (zero-padded at the bottom/right); key ``proj``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return self.proj(F.pad(x, (0, -width % self.patch_size, 0, -height % self.patch_size)))


class Vim(nn.Module):
    """Vision Mamba with an ImageNet head (middle cls token).

    Args:
        embed_dim: token channels C (192 / 384 / 768 for Ti / S / B).
        depth: number of blocks.
        d_state, expand, d_conv: mixer settings (16, 2, 4 in every release).
        patch_size: 16.
        img_size: int or (H, W); sets the position-embedding table, (img_size / patch_size) patches plus the cls
            slot. Other input sizes resize it on the fly. 224 for the released classifiers; upstream's segmentation
            backbone trains a 512 table.
        num_classes: classifier size; 0 keeps the final norm and the cls-token pooling with an Identity head.
        drop_rate: dropout after the position embedding.
        drop_path_rate: stochastic depth, upstream's schedule: block i drops block i-1's mixer output with rate
            linspace(0, rate, depth)[i - 1], and the final norm's input is dropped with ``rate``.
        norm_eps: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in float32 (upstream's classifiers do).
        out_layers: the blocks whose mixer outputs become levels 0..3 (default depth * (k + 1) / 4 - 1:
            5, 11, 17, 23 for depth 24).
        feature_pyramid: build ``fpn1..fpn4`` now; None builds them when there is no classifier (num_classes=0).
        with_cp: gradient checkpointing per block.
        backend: selective-scan backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, embed_dim=192, depth=24, d_state=16, expand=2, d_conv=4, patch_size=16, img_size=224,
                 in_chans=3, num_classes=1000, drop_rate=0.0, drop_path_rate=0.0, norm_eps=1e-5,
                 residual_in_fp32=True, out_layers=None, feature_pyramid=None, with_cp=False, backend=None):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_size) != 2 or any(s < patch_size for s in img_size):
            raise ValueError(f'Vim: img_size {img_size} must be an int or (H, W), each >= patch_size {patch_size}')
        self.out_layers = tuple(out_layers) if out_layers is not None else tuple(
            depth * (k + 1) // NUM_LEVELS - 1 for k in range(NUM_LEVELS))
        if len(self.out_layers) != NUM_LEVELS or list(self.out_layers) != sorted(set(self.out_layers)) or \
                not all(0 <= b < depth for b in self.out_layers):
            raise ValueError(f'Vim: out_layers {self.out_layers} must be {NUM_LEVELS} increasing block indices in '
                             f'0..{depth - 1}')
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))  # cls slot at num_patches // 2
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList([
            VimBlock(embed_dim, d_state, expand, d_conv, rates[i], norm_eps, residual_in_fp32, backend)
            for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # 'module': the block whose mixer output becomes the level (through fpn{k + 1}), as timm names ViT levels.
        self.feature_info = [dict(num_chs=embed_dim, reduction=4 * 2 ** k, module=f'layers.{block}')
                             for k, block in enumerate(self.out_layers)]
        self._init_weights(depth)
        if feature_pyramid or (feature_pyramid is None and num_classes == 0):
            self._build_pyramid()
        self.set_grad_checkpointing(with_cp)

    @torch.no_grad()
    def _init_weights(self, depth: int):
        # As upstream: patch conv lecun-normal, pos_embed / cls_token / head trunc-normal(0.02), Linear biases 0
        # (dt biases keep Mamba's init), out_proj kaiming-uniform(a=sqrt 5) / sqrt(depth); the rest keeps PyTorch's.
        fan_in = self.patch_embed.proj.weight[0].numel()
        std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978  # std of a normal truncated at 2 std with variance 1/fan_in
        nn.init.trunc_normal_(self.patch_embed.proj.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for param in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(param, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for block in self.layers:
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=math.sqrt(5))
            block.mixer.out_proj.weight /= math.sqrt(depth)

    def _build_pyramid(self):
        """Upstream's ``fpn1..fpn4`` for patch 16 (keys ``fpn1.{0,1,3}``, ``fpn2.0``); the max pool rounds up so
        that an odd token grid still gives ceil(H / 32)."""
        dim = self.embed_dim
        pyramid = dict(
            fpn1=nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                               nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            fpn2=nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            fpn3=nn.Identity(),
            fpn4=nn.MaxPool2d(2, stride=2, ceil_mode=True))
        for name, module in pyramid.items():
            self.add_module(name, module.to(self.pos_embed.device, self.pos_embed.dtype).train(self.training))

    @property
    def has_pyramid(self) -> bool:
        return hasattr(self, 'fpn1')

    def set_grad_checkpointing(self, enable: bool = True):
        self.with_cp = enable

    def no_weight_decay(self):
        # Upstream's list (pos_embed, cls_token, dist_token, cls_token_head, cls_token_tail), of what this model has.
        return {name for name, _ in self.named_parameters() if name in ('pos_embed', 'cls_token')}

    def stage_prefixes(self):
        starts = (0,) + tuple(b + 1 for b in self.out_layers[:-1])
        return [('patch_embed.', 'pos_embed', 'cls_token')] + [
            tuple(f'layers.{i}.' for i in range(start, end + 1)) + (f'fpn{k + 1}.',)
            for k, (start, end) in enumerate(zip(starts, self.out_layers))]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _patch_pos_embed(self, grid) -> torch.Tensor:
        """The patch part of pos_embed resized (bicubic, as upstream's load-time helper) to ``grid``: [1, h*w, C]."""
        pos = self.pos_embed
        if self.cls_token is not None:
            middle = self.grid_size[0] * self.grid_size[1] // 2
            pos = torch.cat([pos[:, :middle], pos[:, middle + 1:]], dim=1)
        if tuple(grid) == self.grid_size:
            return pos
        pos = pos.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos.float(), size=tuple(grid), mode='bicubic', align_corners=False).to(pos.dtype)
        return pos.flatten(2).transpose(1, 2)

    def _embed(self, x: torch.Tensor):
        """Images -> (tokens [B, L, C], token grid (h, w), index of the cls token or None). With a cls token,
        L = h*w + 1 and it sits at h*w // 2 with the table's middle slot as its position embedding."""
        check_images(x, self.in_chans, type(self).__name__)
        x = self.patch_embed(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2) + self._patch_pos_embed(grid)
        cls_index = None
        if self.cls_token is not None:
            cls_index = x.shape[1] // 2
            cls_pos = self.pos_embed[:, self.grid_size[0] * self.grid_size[1] // 2][:, None]
            cls = (self.cls_token + cls_pos).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :cls_index], cls, x[:, cls_index:]], dim=1)
        return self.pos_drop(x), grid, cls_index

    def _block(self, block, hidden, residual):
        if self.with_cp and torch.is_grad_enabled():
            return checkpoint(block, hidden, residual, use_reentrant=False)
        return block(hidden, residual)

    def _final_norm(self, hidden, residual):
        return self.norm_f((residual.float() + self.drop_path(hidden).float()).to(residual.dtype)).to(hidden.dtype)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """The pyramid levels [B, C, ceil(H/s), ceil(W/s)] at s = 4, 8, 16, 32 (NHWC with output_fmt='NHWC'):
        the mixer outputs of blocks ``out_layers`` through fpn1..fpn4. ``norm`` is accepted for the contract and has
        no effect: the levels are mixer outputs, which the final norm (of the residual stream) does not apply to.
        Returns the maps, or (final tokens [B, L, C] as ``forward_features`` gives them, maps); see models/README.md.
        """
        take = feature_take_indices(NUM_LEVELS, indices)
        if not self.has_pyramid:
            log_report('Vim: building the feature pyramid (fpn1..fpn4) on the first forward_intermediates call; an '
                       'optimizer made before does not hold its parameters. Build the model with num_classes=0 or '
                       'feature_pyramid=True, or call prune_intermediate_layers(), before making one.', 'WARNING')
            self._build_pyramid()
        last = self.out_layers[max(take)] if stop_early else len(self.layers) - 1
        height, width = x.shape[-2:]
        hidden, (grid_h, grid_w), cls_index = self._embed(x)
        residual = None
        intermediates = []
        for i, block in enumerate(self.layers[:last + 1]):
            hidden, residual = self._block(block, hidden, residual)
            if i in self.out_layers and self.out_layers.index(i) in take:
                level = self.out_layers.index(i)
                tokens = hidden if cls_index is None else torch.cat(
                    [hidden[:, :cls_index], hidden[:, cls_index + 1:]], dim=1)
                fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w)
                stride = 4 * 2 ** level
                fmap = getattr(self, f'fpn{level + 1}')(fmap)[..., :-(-height // stride), :-(-width // stride)]
                intermediates.append(to_format(fmap, 'NCHW', output_fmt))
        if intermediates_only:
            return intermediates
        return self._final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(self, indices=None, prune_norm: bool = False, prune_head: bool = True):
        """Turn the model into a feature backbone: build fpn1..fpn4 (if absent); with ``prune_head`` remove the head,
        the cls token and its position slot; with ``prune_norm`` remove norm_f. Returns the kept level indices."""
        take = feature_take_indices(NUM_LEVELS, indices)
        if not self.has_pyramid:
            self._build_pyramid()
        if prune_head:
            self.reset_classifier(0)
            if self.cls_token is not None:
                self.pos_embed = nn.Parameter(self._patch_pos_embed(self.grid_size).detach().clone())
                self.cls_token = None
        if prune_norm:
            self.norm_f = nn.Identity()
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> normalised tokens [B, L, C] (with the cls token at index (L - 1) // 2 when present)."""
        hidden, _, _ = self._embed(x)
        residual = None
        for block in self.layers:
            hidden, residual = self._block(block, hidden, residual)
        return self._final_norm(hidden, residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # The cls token (upstream's final_pool_type='mean' is never reached); the token mean without one.
        x = x[:, (x.shape[1] - 1) // 2] if self.cls_token is not None else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _square_side(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f'Vim checkpoint: {what} has {count} patch positions, not a square grid')
    return side


def checkpoint_filter_fn(state_dict: dict, model: Vim) -> dict:
    """Map an upstream Vim state dict (classification ``VisionMamba`` or segmentation ``VisionMambaSeg``; ``module.``
    and ``backbone.`` prefixes stripped) onto ``model``'s keys.

    - pos_embed: the checkpoint's cls slot (at the middle, index M // 2, when the checkpoint has a ``cls_token``) is
      kept for a model with a cls token and dropped otherwise; the patch grid (square in every upstream file) is
      resized bicubically to the model's table.
    - dropped by name: ``cls_token`` when the model has none, ``head.*`` when it has no classifier, ``norm_f.*`` when
      it has no final norm.
    - a classification checkpoint loaded into a feature backbone leaves the pyramid (fpn1, fpn2) at the model's
      current values, which the returned dict carries, so the load stays strict for everything else. RoPE tables (``rope.*``, upstream's seg-S / det configs) are kept, so such a checkpoint
      fails loudly: this model has no RoPE.
    """
    own = model.state_dict()
    state_dict = {strip_wrapper_prefixes(k): v for k, v in state_dict.items()}
    kept, dropped = {}, []
    for key, value in state_dict.items():
        droppable = key == 'cls_token' or key.startswith(('head.', 'norm_f.'))
        if droppable and key not in own:
            dropped.append(key)
        elif key == 'pos_embed' and 'pos_embed' in own:
            kept[key] = _map_pos_embed(value, 'cls_token' in state_dict, model)
        else:
            kept[key] = value
    if dropped:
        log_report(f'checkpoint: skipped {dropped} (not part of this model)')
    pyramid = [k for k in own if k.startswith(('fpn1.', 'fpn2.'))]
    classifier_checkpoint = 'cls_token' in state_dict or 'head.weight' in state_dict
    if pyramid and classifier_checkpoint and not any(k.startswith('fpn') for k in state_dict):
        # An ImageNet checkpoint has no pyramid: it keeps its initial weights (upstream: strict=False).
        kept.update({k: own[k] for k in pyramid})
        log_report(f'checkpoint: a classification checkpoint has no feature pyramid; its {len(pyramid)} tensors '
                   f'(fpn1, fpn2) keep their initial values')
    return kept


def _map_pos_embed(pos: torch.Tensor, has_cls: bool, model: Vim) -> torch.Tensor:
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != model.embed_dim:
        raise ValueError(f'Vim checkpoint: pos_embed has shape {tuple(pos.shape)}, expected [1, N, {model.embed_dim}]')
    cls_pos = None
    if has_cls:
        middle = (pos.shape[1] - 1) // 2
        cls_pos, pos = pos[:, middle:middle + 1], torch.cat([pos[:, :middle], pos[:, middle + 1:]], dim=1)
    grid = model.grid_size
    if pos.shape[1] != grid[0] * grid[1]:  # the model's own table (any grid) passes as it is
        side = _square_side(pos.shape[1], 'pos_embed')
        log_report(f'checkpoint: resized pos_embed from a {side}x{side} to a {grid[0]}x{grid[1]} patch grid')
        pos = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos.float(), size=grid, mode='bicubic', align_corners=False).to(pos.dtype)
        pos = pos.flatten(2).transpose(1, 2)
    if model.cls_token is None:
        return pos
    if cls_pos is None:
        raise ValueError('Vim checkpoint: a segmentation-backbone state dict (no cls_token) cannot fill the cls token '
                         'of a classifier; load it into a pruned backbone (prune_intermediate_layers)')
    middle = pos.shape[1] // 2
    return torch.cat([pos[:, :middle], cls_pos, pos[:, middle:]], dim=1)


# The released ImageNet-1K checkpoints (Hugging Face repos hustvl/Vim-{tiny,small,base}-midclstok; full training
# checkpoints, weights under 'model'). The Base file name is not in upstream's README; it is the one third-party
# loaders download from that repo.
_HF = 'https://huggingface.co/hustvl/Vim-{}-midclstok/resolve/main/{}'
default_cfgs = {
    'vim_t': pretrained_cfg('vim_t_midclstok_76p1acc.pth', _HF.format('tiny', 'vim_t_midclstok_76p1acc.pth'),
                            interpolation='bicubic'),
    'vim_s': pretrained_cfg('vim_s_midclstok_80p5acc.pth', _HF.format('small', 'vim_s_midclstok_80p5acc.pth'),
                            interpolation='bicubic'),
    'vim_b': pretrained_cfg('vim_b_midclstok_81p9acc.pth', _HF.format('base', 'vim_b_midclstok_81p9acc.pth'),
                            interpolation='bicubic'),
}


def _create_vim(arch: str, **kwargs) -> Vim:
    return Vim(**{**VIM_ARCHS[arch], **kwargs})


@register_model
def vim_t(**kwargs) -> Vim:
    """Vim-Ti (middle cls token): 7,148,008 params with the 1000-class head; upstream
    ``vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``."""
    return _create_vim('tiny', **kwargs)


@register_model
def vim_s(**kwargs) -> Vim:
    """Vim-S (middle cls token): 25,796,584 params; upstream ``vim_small_patch16_224_..._with_midclstok_div2``."""
    return _create_vim('small', **kwargs)


@register_model
def vim_b(**kwargs) -> Vim:
    """Vim-B (middle cls token): 97,598,440 params; upstream ``vim_base_patch16_224_..._with_middle_cls_token_div2``."""
    return _create_vim('base', **kwargs)


@register_model
def vim_test(**kwargs) -> Vim:
    """A tiny Vim (embed 32, depth 4, one block per level) for fast CPU tests; not a released model."""
    return _create_vim('test', **kwargs)


# Upstream's segmentation (VisionMambaSeg) and detection (VisionMambaDet) backbones train with drop path 0.1 and add
# no per-output norms. Swapped into a recipe: no weight decay on norms and pos_embed; detection's AdamW has wd 0.1
# (upstream's ViTDet configs), segmentation keeps the toolkit's (the paper's App. B: lr 6e-5, wd 0.01).
register_family('Vim', Vim, archs=dict(tiny='vim_t', small='vim_s', base='vim_b', test='vim_test'),
                checkpoint_filter=checkpoint_filter_fn, mm_defaults=dict(drop_path_rate=0.1),
                swap_rules=dict(
                    custom_keys={'norm': dict(decay_mult=0.0), 'pos_embed': dict(decay_mult=0.0)},
                    adamw=dict(mmdet=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
                               mmseg=dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))))
