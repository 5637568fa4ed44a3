"""S6 selective scan in plain PyTorch: the ground truth that the Triton kernel is tested against.

Math (Mamba-1 S6 with grouped B/C, as VMamba's ``selective_scan_fn``; channel d belongs to group g = d // (D / G)):
    dt_t      = softplus(delta_t + delta_bias)               (softplus and bias optional)
    h_t[n]    = exp(dt_t * A[d, n]) * h_{t-1}[n] + dt_t * B[g, n, t] * u_t,      h_{-1} = 0
    y_t       = sum_n C[g, n, t] * h_t[n] + D[d] * u_t
Everything is computed in float32. The recurrence is solved without a Python loop over tokens: a Hillis-Steele
scan of (decay, input) pairs inside chunks of ``CHUNK`` tokens, the same scan over the chunk totals, then one
correction per token. Decays are products of numbers in (0, 1], so nothing overflows (unlike a log-space cumsum
with exp(-cumsum) factors). The cost is O(L log CHUNK) element-wise work and memory, usable on a CPU at 64x64 maps.
"""
import torch
import torch.nn.functional as F

CHUNK = 64


def _scan_pairs(decay: torch.Tensor, value: torch.Tensor):
    """Inclusive scan of h_t = decay_t * h_{t-1} + value_t along the last dim (h_{-1} = 0), in log2(T) steps.

    Returns (product of the decays up to t, h_t)."""
    offset = 1
    while offset < decay.shape[-1]:
        # Out of place on purpose: autograd needs every step.
        value = value + decay * F.pad(value[..., :-offset], (offset, 0))
        decay = decay * F.pad(decay[..., :-offset], (offset, 0), value=1.0)
        offset *= 2
    return decay, value


def linear_recurrence(decay: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """h_t = decay_t * h_{t-1} + value_t along the last dim, h_{-1} = 0; decay in [0, 1]. Shapes [..., L]."""
    length = decay.shape[-1]
    chunk = min(CHUNK, length)
    pad = -length % chunk
    # Padding tokens are the identity (decay 1, value 0), so they change nothing.
    decay = F.pad(decay, (0, pad), value=1.0).unflatten(-1, (-1, chunk))
    value = F.pad(value, (0, pad)).unflatten(-1, (-1, chunk))
    decay_in_chunk, h_in_chunk = _scan_pairs(decay, value)
    _, h_chunk_end = _scan_pairs(decay_in_chunk[..., -1], h_in_chunk[..., -1])
    h_chunk_start = F.pad(h_chunk_end[..., :-1], (1, 0))
    h = h_in_chunk + decay_in_chunk * h_chunk_start[..., None]
    return h.flatten(-2)[..., :length]


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                             output_fp32=False) -> torch.Tensor:
    """u, delta: [batch, dim, L]; A: [dim, N]; B, C: [batch, G, N, L]; D, delta_bias: [dim] or None.

    Returns y [batch, dim, L] in u's dtype, or float32 with ``output_fp32``."""
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    out_dtype = torch.float32 if output_fp32 else u.dtype
    u = u.float()
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    grouped = (batch, groups, dim // groups, 1, length)  # channels of one group share B and C
    decay = torch.exp(dt[:, :, None, :] * A.float()[None, :, :, None])                         # [batch, dim, N, L]
    value = ((dt * u).view(grouped) * B.float()[:, :, None]).reshape(batch, dim, n_state, length)
    h = linear_recurrence(decay, value)
    y = (h.view(batch, groups, dim // groups, n_state, length) * C.float()[:, :, None]).sum(3).view(batch, dim, length)
    if D is not None:
        y = y + u * D.float()[:, None]
    return y.to(out_dtype)
