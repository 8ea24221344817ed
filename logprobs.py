"""Per-token log-probabilities of chosen tokens, without ever building the [tokens x vocab] logits.

The idea
--------
Every term of the UniAPL objective needs log pi(y_t | context) only for the token that was actually
chosen: the teacher's tokens (SFT), the rollout tokens under the policy, the old policy and the
reference (GRPO, ADV). For one row i with final hidden state h_i, head weight W [V, H], chosen
token t_i and sampling temperature T:

    z_ij      = (h_i . W_j) / T                          logits, j over the vocabulary
    lse_i     = log sum_j exp(z_ij)                       (log-sum-exp)
    logp_i    = z_{i,t_i} - lse_i                         what we return, fp32 [N]

    d logp_i / d h_i = (W_{t_i} - sum_j p_ij W_j) / T     with p_ij = exp(z_ij - lse_i)
    d logp_i / d W_j = (1[j = t_i] - p_ij) h_i / T

Memory arithmetic (why this file exists)
----------------------------------------
The obvious `log_softmax(h @ W.T / T).gather(-1, t)` materialises logits of N x V elements. With
Qwen3's V = 151,936 and 8 rollouts x 1,024 tokens = 8,192 rows, the bf16 logits alone are
8,192 x 151,936 x 2 B = 2.3 GiB. The naive path then holds several copies at once: the logits, their
fp32 upcast (2x the bytes), the log_softmax output (another fp32 copy), and in backward the softmax
gradient of the same size -- a peak near 3x the logits, i.e. 7-10 GiB for one gather.

Chunking rows in a Python loop and calling log_softmax per chunk does NOT help during training:
autograd keeps every chunk's output alive for backward, so the total is unchanged. The fix is a
custom autograd.Function that saves only its inputs and one fp32 number per row (lse_i) and
*recomputes* each logits chunk in backward. Extra memory then is O(chunk) + O(N) + O(N x H),
independent of V x N.

Design
------
* `token_logprobs(hidden, weight, targets, temperature)` -> fp32 [N]; differentiable w.r.t. hidden
  and weight. `weight` is used in place: with tied embeddings (Qwen3) it is the embedding
  Parameter, and the head's gradient adds to the embedding's own gradient.
* Forward, "torch" backend: loop over token chunks and vocabulary chunks with an online
  log-sum-exp in fp32 (running max m, running sum s; m starts at -inf, so no padded tile can win).
  Forward, "triton" backend: one kernel computes partial (max, sum) pairs over vocabulary tiles
  without writing logits to memory (out-of-range vocabulary columns are masked to -inf, the bug
  that gave peers log-probs above 0); the partials are combined in torch. The chosen token's logit
  is a row-wise dot product h_i . W_{t_i} (O(N x H)).
* Backward: vocabulary chunks outside, token chunks inside. For each (token, vocabulary) chunk the
  logits are recomputed and turned into the gradient of the loss with respect to them,

      dS_ij = (g_i / T) (1[j = t_i] - exp(z_ij - lse_i))          g_i = dL / d logp_i

  written once (the chosen-token term is inside it, so no separate scatter); then two matrix
  products add dh += dS W and dW += dS^T h. "triton": one Triton GEMM whose epilogue writes dS
  (bf16 for bf16 inputs) straight from the saved lse, then cuBLAS with fp32 accumulation for the
  two products; "torch": the same three products and a few in-place passes. dW of a vocabulary
  chunk is accumulated in fp32 and written once; dh is accumulated in fp32. Extra memory: one
  dS chunk, one fp32 dW chunk and an fp32 [N, H] -- independent of N x V.
* Precision: logits are always accumulated in fp32 (bf16 inputs are multiplied with fp32
  accumulation; fp32 inputs use full fp32, never TF32 in the kernel). bf16 log-probs would lose
  ~4e-3 absolute accuracy at this vocabulary size. On CUDA the backward matmuls take bf16 operands
  with fp32 accumulation (fp32 operands would be ~10x slower); on CPU they are fp32.
* Under autocast (training on a GPU) the decoder's last hidden state is still fp32 -- the residual
  stream and Qwen3's final RMSNorm stay fp32 -- so `sequence_logprobs` casts the selected rows to
  the autocast dtype, exactly as the model's own head would, and the Function itself runs with
  autocast off, so that no fp32 product is silently demoted to bf16.
* Temperature divides the logits before the softmax; the same T is used for the policy, the old
  policy and the reference, T = 1 for SFT, and the backward carries the 1/T factor.

`naive_token_logprobs` is the obvious version, kept for tests, teaching and the benchmark.
"""

from __future__ import annotations

import os

import torch

# Chunk sizes (rows x vocabulary columns of one recomputed logits chunk), by device. On the CPU
# small chunks that stay in cache were fastest (measured: 1024 x 1024 fp32 = 4 MiB beat 1024 x
# 8192 by ~1.5x at N=1024, H=1024, V=151,936 on 2 cores); a GPU wants larger matmuls.
DEFAULT_CHUNKS = {"cpu": (1024, 1024), "cuda": (4096, 16384)}


def naive_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The obvious reference: materialises [N, V] logits. For tests and benchmarks only."""
    logits = (hidden @ weight.T).float()                              # [N, V]
    t = torch.as_tensor(temperature, dtype=torch.float32, device=hidden.device)
    logits = logits / (t[:, None] if t.ndim else t)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # [N]


def _inv_temperature(temperature, hidden: torch.Tensor) -> torch.Tensor:
    """1/T as an fp32 vector [N], from a float or a per-row tensor."""
    n = hidden.shape[0]
    t = torch.as_tensor(temperature, dtype=_acc(hidden), device=hidden.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"token_logprobs: temperature must be a float or a tensor of shape [{n}], "
                         f"got shape {tuple(t.shape)}")
    if not bool((t > 0).all()):
        raise ValueError("token_logprobs: temperature must be > 0")
    return t.reciprocal()


def _acc(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: fp32, or float64 for float64 inputs (used by gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result; bf16/fp16 operands keep their dtype but accumulate in fp32."""
    acc = _acc(a)
    if a.dtype == acc and b.dtype == acc:
        return a @ b
    if a.is_cuda and a.dtype == b.dtype:
        try:  # torch >= 2.8 on CUDA: low-precision operands, fp32 output (no rounding of logits)
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return a.to(acc) @ b.to(acc)


_ADDMM_OUT_DTYPE = True   # torch.addmm(..., out_dtype=fp32, out=acc) works here (CUDA, torch >= 2.8)


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b in place, acc fp32 (or float64): one pass over acc, no temporary product.
    bf16/fp16 operands accumulate in fp32 (cuBLAS reads and writes acc as C with beta = 1)."""
    global _ADDMM_OUT_DTYPE
    if a.dtype == acc.dtype and b.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if a.is_cuda and a.dtype == b.dtype and _ADDMM_OUT_DTYPE:
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (TypeError, RuntimeError):
            _ADDMM_OUT_DTYPE = False          # older torch: the product, then the sum
    acc += _mm_f32(a, b)


def _target_logits(hidden, weight, targets, inv_t, token_chunk):
    """z_{i,t_i} = (h_i . W_{t_i}) / T in fp32, chunked so the upcast copies stay small."""
    out = torch.empty(hidden.shape[0], dtype=_acc(hidden), device=hidden.device)
    for n0 in range(0, hidden.shape[0], token_chunk):
        n1 = n0 + token_chunk
        h = hidden[n0:n1].to(out.dtype)                                # [n, H]
        w = weight[targets[n0:n1]].to(out.dtype)                       # [n, H]
        out[n0:n1] = (h * w).sum(-1) * inv_t[n0:n1]
    return out


def _lse_torch(hidden, weight, inv_t, token_chunk, vocab_chunk):
    """Online log-sum-exp over vocabulary chunks, fp32 [N]."""
    n, v = hidden.shape[0], weight.shape[0]
    lse = torch.empty(n, dtype=_acc(hidden), device=hidden.device)
    for n0 in range(0, n, token_chunk):
        h = hidden[n0:n0 + token_chunk]                                # [n, H]
        it = inv_t[n0:n0 + token_chunk, None]                          # [n, 1]
        m = torch.full((h.shape[0],), float("-inf"), dtype=lse.dtype, device=h.device)  # max
        s = torch.zeros(h.shape[0], dtype=lse.dtype, device=h.device)  # running sum of exp
        for v0 in range(0, v, vocab_chunk):
            z = _mm_f32(h, weight[v0:v0 + vocab_chunk].T) * it         # [n, v] fp32
            # online log-sum-exp: m' = max(m, max_j z_j);  s' = s e^(m - m') + sum_j e^(z_j - m')
            m_new = torch.maximum(m, z.max(dim=-1).values)
            s = s * torch.exp(m - m_new) + torch.exp(z - m_new[:, None]).sum(-1)
            m = m_new
        lse[n0:n0 + token_chunk] = m + torch.log(s)                   # lse = m + log s
    return lse


# ----------------------------------------------------------------------------------------------
# Triton forward: partial log-sum-exp over vocabulary tiles, logits never leave registers.
# ----------------------------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: the torch backend does everything
    triton = None

# Triton 3.9's CPU interpreter computes tl.dot on bf16 operands wrongly (seen here: errors of
# 1e10 on a 16x16 product), so under TRITON_INTERPRET=1 the kernel upcasts operands to fp32 first.
# On a GPU, bf16 operands go to the tensor cores with fp32 accumulation.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# Tile sizes. Each pipeline stage holds one [BLOCK_N, BLOCK_H] tile of hidden and one
# [BLOCK_H, BLOCK_V] tile of W in shared memory:
#     bytes = stages * (BLOCK_N * BLOCK_H + BLOCK_H * BLOCK_V) * element size
# Large tiles for Hopper (up to 228 KiB per block), smaller ones that fit the ~100 KiB of RTX
# 30/40, L4 and A10 GPUs; Triton's autotuner times them on the first call of each shape and
# skips any that does not fit. Under the interpreter: one small tile (it runs on the CPU).
TILES = [(128, 256, 64, 3, 8), (128, 128, 64, 3, 8), (64, 128, 64, 3, 4), (64, 128, 32, 3, 4)]


def triton_shared_memory_bytes(tile: tuple, element_size: int) -> int:
    block_n, block_v, block_h, stages, _ = tile
    return stages * (block_n * block_h + block_h * block_v) * element_size


def _configs():
    tiles = [(16, 32, 16, 1, 4)] if _INTERPRETED else TILES
    return [triton.Config({"BLOCK_N": n, "BLOCK_V": v, "BLOCK_H": h}, num_stages=st, num_warps=w)
            for n, v, h, st, w in tiles]


def _prune_tiles(configs, named_args, **kwargs):
    """fp32 operands: no 128 x 256 tile (its fp32 accumulator spills registers: ~37 KB per
    thread when compiled for sm_90); bf16/fp16 keep every tile."""
    if named_args["h_ptr"].dtype != torch.float32:
        return configs
    kept = [c for c in configs if c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_V"] < 128 * 256]
    return kept or configs


def n_bucket(n: int) -> int:
    """The autotuner's key for N: the next power of two, so that a call of another size class
    (a demonstration batch vs 64 rollouts) picks its own tiles, without one tuning per N."""
    return 1 << max(0, int(n) - 1).bit_length()


def check_offsets(**extents: int) -> None:
    """The kernels index with 32-bit offsets: each extent (rows x row stride, ...) must stay
    below 2**31. Qwen3's head at N = 32,768 tokens: 32,768 x 1,024 and 151,936 x 1,024 (1.6e8)."""
    for name, size in extents.items():
        if size >= 2**31:
            raise ValueError(f"logprobs: {name} = {size:,} elements overflows the Triton kernels' "
                             "32-bit offsets; pass fewer tokens per call (micro-batches) or use "
                             "backend='torch'")


if triton is not None:
    @triton.jit
    def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     IEEE: tl.constexpr):
        # h[rows] . W[cols]^T for one [BLOCK_N, BLOCK_V] tile, accumulated in fp32 over H.
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < H
            a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)         # [BN, BH]
            b = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None],
                        mask=col_ok[None, :] & k_ok[:, None], other=0.0)         # [BH, BV]
            if IEEE:  # fp32 inputs: full fp32 products, not TF32
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        return acc

    @triton.autotune(configs=_configs(), key=["H", "IEEE", "N_BUCKET"],
                     prune_configs_by={"early_config_prune": _prune_tiles})
    @triton.jit
    def _partial_lse_kernel(h_ptr, w_ptr, inv_t_ptr, max_ptr, sum_ptr, N, V, H,
                            stride_h, stride_w, vocab_per_program, N_BUCKET,
                            BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                            IEEE: tl.constexpr):
        # Program (pid_n, pid_v) reduces rows [pid_n*BLOCK_N, +BLOCK_N) over the vocabulary slice
        # [pid_v*vocab_per_program, +vocab_per_program). Row blocks vary fastest, so programs that
        # run together share one slice of W (it is read from HBM about once, then from L2).
        pid_n = tl.program_id(0)
        pid_v = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        inv_t = tl.load(inv_t_ptr + rows, mask=row_ok, other=1.0)
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        v_start = pid_v * vocab_per_program
        v_end = tl.minimum(v_start + vocab_per_program, V)     # the last slice stops at V
        for v0 in range(v_start, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < v_end
            acc = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                               BLOCK_N, BLOCK_V, BLOCK_H, IEEE)                  # [BN, BV]
            # Masked columns must be -inf, not 0: a 0 would enter the sum as exp(0 - m).
            z = tl.where(col_ok[None, :], acc * inv_t[:, None], float("-inf"))
            m_new = tl.maximum(m, tl.max(z, 1))
            # A tile entirely past V leaves m_new = -inf; guard the exp(-inf - -inf) = nan case.
            scale = tl.where(m_new == float("-inf"), 0.0, tl.exp(m - m_new))
            p = tl.where(col_ok[None, :], tl.exp(z - m_new[:, None]), 0.0)
            s = s * scale + tl.sum(p, 1)
            m = m_new
        out = pid_v * N + rows
        tl.store(max_ptr + out, m, mask=row_ok)
        tl.store(sum_ptr + out, s, mask=row_ok)


if triton is not None:
    @triton.autotune(configs=_configs(), key=["H", "IEEE", "N_BUCKET"],
                     prune_configs_by={"early_config_prune": _prune_tiles})
    @triton.jit
    def _ds_kernel(h_ptr, w_ptr, t_ptr, g_ptr, lse_ptr, inv_t_ptr, ds_ptr, N, V, H,
                   stride_h, stride_w, stride_ds, N_BUCKET,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                   IEEE: tl.constexpr):
        # dS_ij = g_i (1[j = t_i] - exp(z_ij - lse_i)) for one [BLOCK_N, BLOCK_V] tile of a chunk,
        # z = (h . W_j) / T recomputed in registers; g already holds dL/dlogp_i / T_i. Row blocks
        # vary fastest, so the programs that run together share one tile of W.
        pid_n = tl.program_id(0)
        pid_v = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok, col_ok = rows < N, cols < V
        acc = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                           BLOCK_N, BLOCK_V, BLOCK_H, IEEE)                      # [BN, BV]
        inv_t = tl.load(inv_t_ptr + rows, mask=row_ok, other=1.0)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
        t = tl.load(t_ptr + rows, mask=row_ok, other=-1)
        p = tl.exp(acc * inv_t[:, None] - lse[:, None])
        chosen = cols[None, :] == t[:, None]
        ds = g[:, None] * (tl.where(chosen, 1.0, 0.0) - p)
        tl.store(ds_ptr + rows[:, None] * stride_ds + cols[None, :], ds.to(ds_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


def _lse_triton(hidden, weight, inv_t, vocab_per_program=4096):
    """Partial (max, sum of exp) per row and vocabulary slice from the kernel, combined here."""
    if triton is None:
        raise RuntimeError("logprobs: backend='triton' needs triton (pip install triton); "
                           "use backend='torch' instead")
    n, h = hidden.shape
    v = weight.shape[0]
    hidden, weight = hidden.contiguous(), weight.contiguous()
    splits = triton.cdiv(v, vocab_per_program)
    check_offsets(hidden=n * hidden.stride(0), weight=v * weight.stride(0), partials=splits * n)
    pmax = torch.empty(splits, n, dtype=torch.float32, device=hidden.device)  # [S, N]
    psum = torch.empty(splits, n, dtype=torch.float32, device=hidden.device)  # [S, N]
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
    _partial_lse_kernel[grid](hidden, weight, inv_t.contiguous(), pmax, psum, n, v, h,
                              hidden.stride(0), weight.stride(0), vocab_per_program, n_bucket(n),
                              IEEE=hidden.dtype == torch.float32 or _INTERPRETED)
    m = pmax.max(dim=0).values                                         # [N]
    return m + torch.log((psum * torch.exp(pmax - m)).sum(0))          # [N]


def _ds_triton(h, w, t, g, lse, inv_t, out_dtype) -> torch.Tensor:
    """dS [n, v] of one chunk (see _ds_kernel), in `out_dtype`."""
    n, v = h.shape[0], w.shape[0]
    ds = torch.empty(n, v, dtype=out_dtype, device=h.device)
    h, w = h.contiguous(), w.contiguous()
    check_offsets(hidden=n * h.stride(0), weight=v * w.stride(0), ds=n * ds.stride(0))
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(v, meta["BLOCK_V"]))  # noqa: E731
    _ds_kernel[grid](h, w, t.contiguous(), g.contiguous(), lse.contiguous(), inv_t.contiguous(), ds,
                     n, v, h.shape[1], h.stride(0), w.stride(0), ds.stride(0), n_bucket(n),
                     IEEE=h.dtype == torch.float32 or _INTERPRETED)
    return ds


def _ds_torch(h, w, t, g, lse, inv_t, out_dtype) -> torch.Tensor:
    """The same dS with torch: one matrix product and three in-place passes over the chunk."""
    z = _mm_f32(h, w.T)                                                # [n, v] recomputed
    torch.addcmul(-lse[:, None], z, inv_t[:, None], out=z)             # z / T - lse
    z.exp_().mul_(-g[:, None])                                         # -g p
    chosen = (t >= 0) & (t < w.shape[0])                               # + g on the chosen token
    z.scatter_add_(1, t.clamp(0, w.shape[0] - 1)[:, None], torch.where(chosen, g, 0.0)[:, None])
    return z.to(out_dtype)


# ----------------------------------------------------------------------------------------------
# The autograd Function: forward by either backend, chunked recompute in backward.
# ----------------------------------------------------------------------------------------------

class _TokenLogprobs(torch.autograd.Function):
    # Both passes run with autocast OFF: under autocast an fp32 x fp32 matmul would silently
    # become a bf16 one, and the log-sum-exp would come from bf16 logits (measured on the CPU:
    # errors of 0.13 and log-probs above 0). The operands' own dtypes decide the precision.
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_t, backend, token_chunk, vocab_chunk):
        with torch.autocast(hidden.device.type, enabled=False):
            return _TokenLogprobs._forward(ctx, hidden, weight, targets, inv_t, backend,
                                           token_chunk, vocab_chunk)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _TokenLogprobs._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, hidden, weight, targets, inv_t, backend, token_chunk, vocab_chunk):
        if backend == "triton":
            lse = _lse_triton(hidden, weight, inv_t)                               # [N]
        else:
            lse = _lse_torch(hidden, weight, inv_t, token_chunk, vocab_chunk)      # [N]
        out = _target_logits(hidden, weight, targets, inv_t, token_chunk) - lse   # logp = z_t - lse
        ctx.save_for_backward(hidden, weight, targets, inv_t, lse)
        ctx.chunks, ctx.backend = (token_chunk, vocab_chunk), backend
        return out

    @staticmethod
    def _backward(ctx, grad_out):
        hidden, weight, targets, inv_t, lse = ctx.saved_tensors
        token_chunk, vocab_chunk = ctx.chunks
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, v = hidden.shape[0], weight.shape[0]
        acc = _acc(hidden)
        g = grad_out.to(acc) * inv_t                                   # [N]  g_i / T_i
        # On CUDA the products take bf16/fp16 operands (fp32 accumulation); elsewhere fp32.
        low = hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16)
        op_dtype = hidden.dtype if low else acc
        ds_of = _ds_triton if ctx.backend == "triton" else _ds_torch
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        for v0 in range(0, v, vocab_chunk):
            v1 = min(v0 + vocab_chunk, v)
            w = weight[v0:v1]                                          # [v, H]
            w_op = w.to(op_dtype)
            gw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
            for n0 in range(0, n, token_chunk):
                n1 = min(n0 + token_chunk, n)
                h = hidden[n0:n1]                                      # [n, H]
                # dS = (g / T) (onehot - p), the chosen-token term inside   [n, v]
                ds = ds_of(h, w, targets[n0:n1] - v0, g[n0:n1], lse[n0:n1], inv_t[n0:n1], op_dtype)
                if need_h:   # dL/dh_i += sum_j dS_ij W_j
                    _addmm_f32(grad_h[n0:n1], ds, w_op)                # [n, H]
                if need_w:   # dL/dW_j += sum_i dS_ij h_i
                    _addmm_f32(gw, ds.T, h.to(op_dtype))               # [v, H]
            if need_w:
                grad_w[v0:v1] = gw.to(weight.dtype)
        if need_h:
            grad_h = grad_h.to(hidden.dtype)
        return grad_h, grad_w, None, None, None, None, None


def default_backend(device: torch.device) -> str:
    """'triton' on CUDA when triton imports, else 'torch'. UNIAPL_LOGPROBS_BACKEND overrides."""
    forced = os.environ.get("UNIAPL_LOGPROBS_BACKEND")
    if forced:
        return forced
    return "triton" if (device.type == "cuda" and triton is not None) else "torch"


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float | torch.Tensor = 1.0, backend: str = "auto",
                   token_chunk: int | None = None,
                   vocab_chunk: int | None = None) -> torch.Tensor:
    """log softmax(hidden @ weight.T / T)[targets] as fp32 [N], never materialising [N, V].

    (float64 inputs give a float64 result, so that torch.autograd.gradcheck can check it.)

    hidden [N, H] (fp32/bf16/fp16), weight [V, H] (the LM head, possibly tied), targets [N] int64,
    temperature a float or a per-row tensor [N]. backend: 'auto' | 'torch' | 'triton' | 'naive'.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"token_logprobs: need hidden [N, H] and weight [V, H], got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"token_logprobs: targets must have shape [{hidden.shape[0]}], got "
                         f"{tuple(targets.shape)}")
    if backend == "auto":
        backend = default_backend(hidden.device)
    if backend == "naive":
        return naive_token_logprobs(hidden, weight, targets, temperature)
    if backend not in ("torch", "triton"):
        raise ValueError(f"token_logprobs: unknown backend {backend!r} "
                         "(choose auto, torch, triton or naive)")
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0 * hidden.sum() + 0 * weight.sum()
    if weight.dtype != hidden.dtype:
        # bf16 hidden rows (see sequence_logprobs) meet the head's fp32 Parameter (the
        # optimizer's master copy): cast it the way autocast casts F.linear's weight. The cast
        # is differentiable, so the gradient still reaches the Parameter.
        weight = weight.to(hidden.dtype)
    if backend == "triton" and hidden.dtype == torch.float64:
        raise ValueError("token_logprobs: the triton backend takes fp32/bf16/fp16, not float64")
    default_t, default_v = DEFAULT_CHUNKS.get(hidden.device.type, DEFAULT_CHUNKS["cuda"])
    token_chunk, vocab_chunk = token_chunk or default_t, vocab_chunk or default_v
    inv_t = _inv_temperature(temperature, hidden)
    return _TokenLogprobs.apply(hidden, weight, targets.long(), inv_t, backend,
                                int(token_chunk), int(vocab_chunk))


# ----------------------------------------------------------------------------------------------
# The model-level entry point used by sft.py, grpo.py and uniapl.py
# ----------------------------------------------------------------------------------------------

def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      score_mask: torch.Tensor, temperature: float = 1.0,
                      backend: str = "auto") -> torch.Tensor:
    """log pi(input_ids[b, t] | input_ids[b, :t]) where score_mask[b, t], else 0: fp32 [B, T-1].

    The result is aligned with input_ids[:, 1:]. Only rows whose next token is scored reach the
    head: the decoder's last hidden states are gathered at those positions first.
    """
    # Position ids from the mask, so a left-padded row gets the same positions it had while it
    # was generated (HF generate derives them the same way); right padding is unaffected.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)           # [B, T]
    # Through the model's own forward (so that FSDP's and any wrapper's hooks run), asking for
    # the last hidden states and the logits of one position only: never [B, T, V].
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]                # after the final norm: what the head reads  [B, T, H]
    select = score_mask[:, 1:].bool()                                            # [B, T-1]
    h = hidden[:, :-1][select]                                                   # [N, H]
    targets = input_ids[:, 1:][select]                                           # [N]
    # the head of the model itself (under a DDP wrapper: of its module); tied to the input
    # embedding in Qwen3, so the gradient reaches the embedding
    head = getattr(model, "module", model).get_output_embeddings().weight
    if head.numel() == 0:
        raise RuntimeError("logprobs: the LM head's weight is empty here -- DeepSpeed ZeRO-3 partitions "
                           "it outside the model's forward, and this path reads it after the forward; "
                           "use ZeRO-2 or FSDP (torchrun train.py --fsdp)")
    if torch.is_autocast_enabled(h.device.type):
        # The residual stream (and Qwen3's final RMSNorm output) stays fp32 under autocast; the
        # model's own head would multiply in the autocast dtype with fp32 accumulation. Do the
        # same: bf16 operands (tensor cores, the Triton kernel's fast path), fp32 log-sum-exp.
        h = h.to(torch.get_autocast_dtype(h.device.type))
    lp = token_logprobs(h, head, targets, temperature, backend=backend)          # [N] fp32
    out = torch.zeros(select.shape, dtype=lp.dtype, device=lp.device)
    return out.masked_scatter(select, lp)                                        # [B, T-1]
