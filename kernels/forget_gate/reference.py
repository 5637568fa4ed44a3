"""Gated linear attention with a data-dependent decay (the MLLA paper's forget gate) in plain PyTorch.

Per batch b and head h, along a 1-D token order t = 1..N, with a log-decay g_t <= 0 per key channel:
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t          S_t: [Dk, Dv], S_0 = 0
    o_t = scale * q_t S_t
which is the masked form o_i = scale * sum_{j<=i} sum_n q_in k_jn exp(b_in - b_jn) v_j with b the inclusive cumsum
of g. No feature map and no normaliser are applied (see ``forget_gate_attention`` for how to get a denominator).

``chunked_forget_gate`` is the 'torch' backend: chunks of CHUNK tokens, everything vectorised over batch, heads and
chunks. Inside a chunk the decays are exp(b_i - b_j) of a chunk-local cumsum, formed as differences before the exp;
across chunks the states pass through a log-depth (Hillis-Steele) scan that only ever multiplies by decays <= 1.
Why: ../shared/reference/mlla_ablations.md section 4.4 -- at the paper's shallow-layer forget ~0.2 (g ~ -1.61) a
64-token span gives e^{+103}, which overflows float32, if exp(b_i - b_j) is factored as e^{b_i} e^{-b_j}; and a
global cumsum over a COCO stage-1 sequence (~60k tokens) reaches ~ -1e5, where float32 has no digits left for the
differences. So: cumulative decays in float32, chunk-local, and only exponents <= 0.

``apply_directions`` builds the bidirectional and 4-direction variants out of the causal core: the routes are stacked
along the batch (``stack_routes``), run through one causal call, mapped back and summed (``merge_routes``); the
Triton op does the same inside its forward and backward.
``naive_recurrence`` is the token-by-token definition above; tests use it as the oracle, nothing else should.
"""
import torch
import torch.nn.functional as F

CHUNK = 16
DIRECTIONS = ('causal', 'bidirectional', '4-direction')


def naive_recurrence(q, k, v, g, scale=1.0):
    """The recurrence token by token in float32 (test oracle only). q, k, g: [B, N, H, Dk]; v: [B, N, H, Dv]."""
    batch, tokens, heads, dim_k = q.shape
    q, k, v, g = (t.float() for t in (q, k, v, g))
    state = q.new_zeros(batch, heads, dim_k, v.shape[-1])
    outputs = []
    for t in range(tokens):
        state = g[:, t].exp()[..., None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(scale * torch.einsum('bhk,bhkv->bhv', q[:, t], state))
    return torch.stack(outputs, dim=1)


def _scan_states(local, log_decay):
    """Inclusive scan S_c = exp(log_decay_c) * S_{c-1} + local_c over dim 2 (the chunks), in log2(chunks) steps.

    local: [B, H, C, Dk, Dv]; log_decay: [B, H, C, Dk] (<= 0). Each step combines every chunk with the one 2^s
    before it: the decay of the span is a sum of log-decays (<= 0), so the factor exp(.) is <= 1 and never overflows.
    """
    chunks = local.shape[2]
    step = 1
    while step < chunks:
        earlier = F.pad(local[:, :, :-step], (0, 0, 0, 0, step, 0))
        earlier_decay = F.pad(log_decay[:, :, :-step], (0, 0, step, 0))
        local = local + log_decay.exp()[..., None] * earlier
        log_decay = log_decay + earlier_decay
        step *= 2
    return local


def chunked_forget_gate(q, k, v, g, scale=1.0):
    """The causal recurrence, chunked and vectorised. q, k, g: [B, N, H, Dk]; v: [B, N, H, Dv].

    Returns float32 [B, N, H, Dv]. Differentiable by autograd. Memory: the [CHUNK, CHUNK, Dk] decay tile of every
    chunk is materialised, CHUNK = 16 times the size of q (and kept for backward).
    """
    batch, tokens, heads, dim_k = q.shape
    dim_v = v.shape[-1]
    chunks = -(-tokens // CHUNK)
    pad = chunks * CHUNK - tokens

    def split(x):
        # Padding tokens at the end (k = v = q = 0, g = 0) come after every real token, so they change nothing.
        x = F.pad(x.float(), (0, 0, 0, 0, 0, pad))
        return x.view(batch, chunks, CHUNK, heads, x.shape[-1]).permute(0, 3, 1, 2, 4)  # [B, H, C, T, D]

    q, k, v, g = split(q), split(k), split(v), split(g)
    b = g.cumsum(dim=3)                                                       # chunk-local, fp32, <= 0
    b_last = b[:, :, :, -1]                                                   # [B, H, C, Dk]

    causal = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device).tril()[..., None]
    difference = b[..., :, None, :] - b[..., None, :, :]                      # b_i - b_j: [B, H, C, T, T, Dk]
    decay = torch.where(causal, difference, torch.full_like(difference, -float('inf'))).exp()
    scores = torch.einsum('bhcin,bhcjn,bhcijn->bhcij', q, k, decay)
    out = scores @ v

    local = (k * (b_last[:, :, :, None] - b).exp()).transpose(-1, -2) @ v      # [B, H, C, Dk, Dv]
    states = _scan_states(local, b_last)                                      # state after each chunk
    entering = F.pad(states[:, :, :-1], (0, 0, 0, 0, 1, 0))                   # state before each chunk
    out = out + (q * b.exp()) @ entering
    out = scale * out.permute(0, 2, 3, 1, 4).reshape(batch, chunks * CHUNK, heads, dim_v)
    return out[:, :tokens]


def routes(direction, hw):
    """The scan routes of ``direction``: (to_route, from_route, reversed) for [B, N, ...] tensors. The forward
    routes come first; a reversed route runs its forward route backwards."""
    identity, flip = (lambda x: x), (lambda x: x.flip(1))
    if direction == 'causal':
        return [(identity, identity, False)]
    if direction == 'bidirectional':
        return [(identity, identity, False), (flip, flip, True)]
    height, width = hw

    def column_major(x):
        return x.unflatten(1, (height, width)).transpose(1, 2).flatten(1, 2)

    def from_column_major(x):
        return x.unflatten(1, (width, height)).transpose(1, 2).flatten(1, 2)

    return [(identity, identity, False), (column_major, from_column_major, False),
            (flip, flip, True), (lambda x: column_major(x).flip(1), lambda x: from_column_major(x.flip(1)), True)]


def stack_routes(x, route_list, gates=False):
    """The routes of x stacked along the batch: [R * B, N, ...]. For gates (``gates=True``) a reversed route's step t
    applies the gate of the token crossed in the forward route, g[t - 1] (0 at the first step, which has no state)."""
    return torch.cat([F.pad(to(x)[:, :-1], (0, 0, 0, 0, 1, 0)) if gates and rev else to(x)
                      for to, _, rev in route_list])


def merge_routes(y, route_list, batch, gates=False):
    """Sum over routes of each route's [B, N, ...] slice of y mapped back to token order: the adjoint of
    ``stack_routes`` (so it also maps route gradients back, with ``gates`` for the gate shift)."""
    out = 0
    for (_, back, rev), part in zip(route_list, y.split(batch)):
        if gates and rev:
            part = F.pad(part[:, 1:], (0, 0, 0, 0, 0, 1))
        out = out + back(part)
    return out


def apply_directions(causal_core, q, k, v, g, scale, direction, hw):
    """Run ``direction`` through ``causal_core(q, k, v, g, scale)`` (float32 in and out; one call, routes stacked in
    the batch). Each (route, reversed route) pair has the symmetric decay exp(-|b_i - b_j|) (see ``stack_routes``);
    the current token's term scale * (q_i . k_i) v_i is subtracted once per extra route so that it counts once."""
    dtype = v.dtype
    q, k, v, g = (t.float() for t in (q, k, v, g))
    route_list = routes(direction, hw)
    if len(route_list) == 1:
        return causal_core(q, k, v, g, scale).to(dtype)
    out = causal_core(*(stack_routes(x, route_list) for x in (q, k, v)), stack_routes(g, route_list, gates=True),
                      scale)
    out = merge_routes(out, route_list, q.shape[0])
    out = out - (len(route_list) - 1) * scale * (q * k).sum(-1, keepdim=True) * v
    return out.to(dtype)


def forget_gate_reference(q, k, v, g, scale=1.0, direction='causal', hw=None):
    """The 'torch' backend; same arguments and result as ``forget_gate_attention`` (without the checks)."""
    return apply_directions(chunked_forget_gate, q, k, v, g, scale, direction, hw)
