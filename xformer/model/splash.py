"""TPU fused attention: the Pallas splash attention kernel, and when to use it.

`model.attention_impl` "splash" runs self- and cross-attention through
`jax.experimental.pallas.ops.tpu.splash_attention` (flash-style: no [T, S] logits in HBM):
causal or bidirectional, packed rows through segment ids. "auto" (the accelerator configs'
default) takes it on TPU when it applies and XLA attention otherwise; `choose` says which and
why, and the run logs it. The kernel has no logit-bias input (ALiBi, T5 buckets, KERPLE: XLA) and
tiles the sequence in blocks of 128 tokens (row lengths must be multiples). One-token decode
steps always take XLA. Off TPU the kernel runs in Pallas' interpret mode (numerics tests).

The kernel module's pallas_calls declare no cost estimate, so libtpu's cost model would count
them as free; `xformer.splash_cost` gives them one (installed on import here), and
`xformer.compile` prices them like any other op.
"""

from __future__ import annotations

import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from xformer import positional
from xformer.model import splash_cost
from xformer.runtime import compat

BLOCK = 128  # Splash tiles: row lengths must be multiples of this.
splash_cost.install(sk)
Array = jax.Array


def why_not(posemb: str, lengths: tuple[int, ...]) -> str | None:
  """Why splash cannot compute this model's attention at these row lengths (None: it can)."""
  if positional.BIAS in positional.get(posemb).HOOKS:
    return f"posemb={posemb!r} adds a logit bias, which the splash kernel has no input for"
  odd = [n for n in lengths if n % BLOCK]
  if odd:
    return f"row lengths {odd} are not multiples of its {BLOCK}-token blocks"
  return None


def choose(impl: str, posemb: str, lengths: tuple[int, ...], platform: str) -> tuple[str, str]:
  """The concrete attention of model.attention_impl="auto" ("splash" or "xla") and why."""
  if impl != "auto":
    return impl, "model.attention_impl"
  if platform != "tpu":
    return "xla", f"auto on {platform}: splash is a TPU kernel"
  reason = why_not(posemb, lengths)
  if reason:
    return "xla", f"auto on TPU, but {reason}"
  return "splash", "auto on TPU"


# The kernels read q, k and v with the sequence as the minor dimension ([H, T] tiles): a head
# dimension of 64 as the minor one fills half of a TPU tile's 128 lanes, and the projections
# into and out of that layout cost more than the attention itself (benchmarks/README.md).
_LAYOUT = {f"{n}_layout": sk.QKVLayout.SEQ_MINOR for n in "qkv"}


# The name of the kernel's residuals (its output and log-sum-exp) for remat policies:
# model.remat="minimal" saves them, so the backward pass does not run the forward kernel again.
SAVED_NAME = "splash_residuals"


def _block(n: int) -> int:
  return next(b for b in (512, 256, 128) if n % b == 0)


def _kernel(q_len: int, kv_len: int, heads: int, causal: bool, interpret: bool):
  shape = (q_len, kv_len)
  mask = sm.MultiHeadMask([sm.CausalMask(shape) if causal else sm.FullMask(shape)] * heads)
  bq, bkv = _block(q_len), _block(kv_len)
  # Keys in one block: the dkv kernel also forms dq, whole (one backward kernel, and QK^T and
  # dO V^T computed once, not again by a dq kernel). With more kv blocks the fused kernel
  # writes a partial dq per kv block, summed afterwards in the input dtype: a dq kernel then.
  dq = {"use_fused_bwd_kernel": True} if kv_len == bkv else {"block_q_dq": bq,
                                                             "block_kv_dq": bkv}
  sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                        block_kv_dkv=bkv, block_kv_dkv_compute=bkv, **dq, **_LAYOUT)
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret, residual_checkpoint_name=SAVED_NAME)


def attention(q: Array, k: Array, v: Array, q_segments: Array, kv_segments: Array, *,
              causal: bool, scale: float | None = None) -> Array:
  """softmax(scale q k^T) v over keys in the query's segment (and not after it: causal).

  Heads come first, as the kernel computes them: the caller projects straight into this layout
  (no transposes around the kernel).

  Args:
    q: [B, N, T, H]; k, v: [B, N, S, H]. q_segments [B, T], kv_segments [B, S]: segment ids
      (0: padding; padding queries get finite, meaningless outputs).
    scale: multiplies the logits; None: 1 / sqrt(H). A caller that folds the scale into the
      query projection's weight passes 1.0.
  Returns:
    [B, N, T, H] in q's dtype.
  """
  mesh = jax.sharding.get_abstract_mesh()
  platform = compat.mesh_platform(mesh) if not mesh.empty else jax.default_backend()
  interpret = platform != "tpu"
  # Padding queries must see some key (a row with none is undefined in the kernel): in
  # cross-attention let them see the row's first source segment.
  q_segments = jnp.where(q_segments == 0, kv_segments[:, :1], q_segments) if not causal else (
      q_segments)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  if scale != 1.0:
    q = (q * scale).astype(q.dtype)

  def per_shard(q, k, v, qs, ks):  # [b, n, T, H] ...: vmapped over rows.
    # Built per trace for this shard's heads (its mask tables become constants of the trace).
    kernel = _kernel(q.shape[2], k.shape[2], q.shape[1], causal, interpret)
    # (bf16 at jax_default_matmul_precision="highest": Mosaic refuses.)
    one = lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sk.SegmentIds(q=qs, kv=ks))
    return jax.vmap(one)(q, k, v, qs, ks)  # [b, n, T, H]

  if mesh.empty or mesh.size == 1:
    return per_shard(q, k, v, q_segments, kv_segments)
  # A Pallas kernel is opaque to XLA's partitioner: run it per shard (rows over the batch axes,
  # heads over `tensor`), or XLA would gather every input onto every device.
  batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  heads = "tensor" if "tensor" in mesh.axis_names else None
  qkv, seg = P(batch_axes, heads, None, None), P(batch_axes, None)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv,
                       check_vma=False)(q, k, v, q_segments, kv_segments)
