"""Cost estimates of the splash kernels (xformer.splash_cost): the blocks a mask computes,
against the dense mask cut into blocks; and libtpu's cost model pricing the kernels of a
compiled attention gradient for v5p with the FLOPs of flash attention written out here."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer.runtime import platforms

platforms.compile_only_environment("v5p-8")  # Before libtpu is first loaded.

# pylint: disable=wrong-import-position
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xformer import targets
from xformer.model import splash, splash_cost
from xformer.targets import compiler as compile_lib


@pytest.mark.parametrize("t,s,bq,bkv", [(1024, 1024, 512, 512), (2048, 2048, 512, 256),
                                         (512, 512, 128, 512), (256, 256, 256, 256),
                                         (768, 384, 128, 128)])
def test_active_blocks_are_the_blocks_the_dense_mask_touches(t, s, bq, bkv):
  for causal in (True, False):
    dense = np.tril(np.ones((t, s), bool)) if causal else np.ones((t, s), bool)
    touched = sum(dense[i:i + bq, j:j + bkv].any()
                  for i, j in itertools.product(range(0, t, bq), range(0, s, bkv)))
    assert splash_cost.active_blocks(t, s, bq, bkv, causal) == touched


def test_bytes_count_the_blocks_the_pipeline_copies():
  """Bytes written out by hand for two grids. One block per row (T = bq = bkv, the WMT case):
  every operand is copied once per head, the segment ids once per call. Two query and two kv
  blocks, full mask, forward kernel, grid (head, q block, kv block): q, o and the log-sum-exp
  once per (head, q block); k and v at every step, as the kv block changes at every step; the
  query's segment ids whenever the q block changes (head boundaries included), the keys' at
  every step."""
  n, h, t = 8, 64, 256
  tokens = n * t * h * 2  # One bf16 [N, T, H] array.
  seg_q, seg_kv = t * 128 * 4, 8 * t * 4  # int32 ids as the kernels read them, once.
  one = dict(heads=n, q_len=t, kv_len=t, head_dim=h, head_dim_v=h, bq=t, bkv=t, causal=False,
             itemsize=2)
  assert splash_cost.estimate("fwd", **one).bytes_accessed == (
      4 * tokens + n * t * 128 * 4 + seg_q + seg_kv)  # q, k, v, o; lse in 128 lanes.
  assert splash_cost.estimate("dq", **one).bytes_accessed == (
      5 * tokens + 2 * n * t * 4 + seg_q + seg_kv)  # q, k, v, dO, dq; lse, di as [N, 1, T].
  assert splash_cost.estimate("dkv", **one).bytes_accessed == (
      6 * tokens + 2 * n * 8 * t * 4 + 8 * t * 4 + t * 128 * 4)  # + dk, dv; [N, 8, T] stats.
  two = dict(one, heads=2, q_len=512, kv_len=512)
  block = 256 * 64 * 2  # One [bq, H] bf16 block.
  assert splash_cost.estimate("fwd", **two).bytes_accessed == (
      2 * 4 * block + 2 * 8 * block + 4 * 256 * 128 * 4 + 4 * 256 * 128 * 4 + 8 * 8 * 256 * 4)


def test_phase_names_and_install_is_idempotent():
  assert splash_cost._phase("splash_mha_dkv_segmented_no_residuals") == "dkv"
  assert splash_cost._phase("splash_mqa_fwd_residuals") == "fwd"
  assert splash_cost._phase("flash_attention_fwd") is None
  assert isinstance(sk.pl, splash_cost._PallasWithCosts)  # Installed by importing splash.
  assert splash_cost.install(sk) and isinstance(sk.pl, splash_cost._PallasWithCosts)
  assert sk.pl.BlockSpec is jax.experimental.pallas.BlockSpec  # Everything else passes through.


@pytest.fixture()
def _training_matmul_precision():
  previous = jax.config.jax_default_matmul_precision
  jax.config.update("jax_default_matmul_precision", None)  # (Mosaic refuses "highest" bf16.)
  yield
  jax.config.update("jax_default_matmul_precision", previous)


@pytest.mark.usefixtures("_training_matmul_precision")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.compile
def test_the_tpu_cost_model_prices_splash_gradients(causal):
  """Flash attention's FLOPs, written out from its algorithm: the forward pass multiplies
  QK^T and PV (2 matmuls), the dq kernel recomputes QK^T and forms dO V^T and dS K (3), the
  dkv kernel QK^T, P^T dO, dO V^T and dS^T Q (4): 9 matmuls of 2 B N T S H FLOPs each over the
  blocks computed (a causal mask over 4 x 4 blocks of 512 computes 10 of them)."""
  b, t, n, h = 2, 2048, 4, 64
  device = targets.abstract_devices(targets.parse("v5p-8"))[:1]
  mesh = Mesh(device, ("data",))
  spec = NamedSharding(mesh, P())
  x = jax.ShapeDtypeStruct((b, n, t, h), jnp.bfloat16, sharding=spec)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=spec)

  def loss(q, k, v, s):
    return jnp.sum(splash.attention(q, k, v, s, s, causal=causal).astype(jnp.float32))

  with jax.set_mesh(mesh):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg)
  compiled = lowered.compile()
  calls = compile_lib.kernel_calls(compiled.as_text(), lowered.as_text())
  assert {name.split("(")[1].split("_")[2] for name, _ in calls} == {"fwd", "dq", "dkv"}
  assert all(priced for _, priced in calls), calls
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  fraction = 10 / 16 if causal else 1.0
  kernel_flops = 9 * 2 * b * n * t * t * h * fraction
  # Outside the kernels: the loss's sum and layout copies, a few percent at most.
  assert kernel_flops <= cost["flops"] < 1.05 * kernel_flops, (cost["flops"], kernel_flops)
  # Priced: at least the time of those FLOPs at the chip's peak (459 TFLOP/s).
  assert cost["optimal_seconds"] > kernel_flops / 459e12


@pytest.mark.usefixtures("_training_matmul_precision")
@pytest.mark.compile
def test_the_log_sum_exp_is_not_copied_whole_on_tpu():
  """The forward kernel writes each row's log-sum-exp into 128 lanes ([B, N, T, 128] float32)
  and the backward kernels read one lane: compiled for v5p, no instruction copies the lane
  array (XLA did, into a sequence-minor layout, before keeping lane 0), and the gradients
  are unchanged (test_splash.py compares them with XLA attention's)."""
  b, t, n, h = 2, 256, 4, 64
  device = targets.abstract_devices(targets.parse("v5p-8"))[:1]
  spec = NamedSharding(Mesh(device, ("data",)), P())
  x = jax.ShapeDtypeStruct((b, n, t, h), jnp.bfloat16, sharding=spec)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=spec)

  def loss(q, k, v, s):
    return jnp.sum(splash.attention(q, k, v, s, s, causal=True).astype(jnp.float32))

  with jax.set_mesh(Mesh(device, ("data",))):
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg).compile().as_text()
  lanes = f"f32[{b},{n},{t},128]"
  assert f"{lanes}{{" in text  # The kernel's lane array is there ...
  copies = [line for line in text.splitlines() if " copy(" in line and f"= {lanes}" in line]
  assert not copies, copies  # ... and never copied whole.


def _unfused_phase(phase, causal):
  """One splash kernel's work written out in jnp for XLA ([N, T, H] per call, as the kernel
  is called per row): the forward pass, or the dq / dkv backward kernels from the saved
  logsumexp and di = rowsum(dO * O)."""
  def logits(q, k):
    s = jnp.einsum("nth,nsh->nts", q, k, preferred_element_type=jnp.float32)
    if causal:
      t = jnp.arange(q.shape[1])
      s = jnp.where(t[:, None] >= t[None, :], s, -1e30)
    return s

  def fwd(q, k, v):
    s = logits(q, k)
    m = s.max(-1, keepdims=True)
    p = jax.lax.optimization_barrier(jnp.exp(s - m))  # In memory, once (XLA's fusions
    l = p.sum(-1, keepdims=True)                         # would otherwise compute it twice).
    o = jnp.einsum("nts,nsh->nth", p.astype(v.dtype), v) / l
    return o.astype(q.dtype), (m + jnp.log(l))[..., 0]

  def grads(q, k, v, do, lse, di):
    p = jnp.exp(logits(q, k) - lse[..., None])
    dp = jnp.einsum("nth,nsh->nts", do, v, preferred_element_type=jnp.float32)
    ds = (p * (dp - di[..., None])).astype(q.dtype)
    if phase == "dq":
      return jnp.einsum("nts,nsh->nth", ds, k)
    return (jnp.einsum("nts,nth->nsh", ds, q),
            jnp.einsum("nts,nth->nsh", p.astype(do.dtype), do))

  return fwd if phase == "fwd" else grads


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.compile
def test_each_kernels_estimate_is_within_2x_of_xla_on_the_same_work_unfused(causal):
  """Each kernel's pl.CostEstimate (counted from its operands and blocks) against libtpu's cost
  analysis of the same work written out unfused: FLOPs and transcendentals within 2x (causal:
  the kernel skips the blocks above the diagonal, the unfused work computes and masks them);
  bytes between the kernel's own operands (the least any implementation moves) and the
  unfused work's (which writes [T, S] intermediates to memory)."""
  n, t, h, block = 4, 2048, 64, 512
  device = targets.abstract_devices(targets.parse("v5p-8"))[:1]
  spec = NamedSharding(Mesh(device, ("data",)), P())
  x = jax.ShapeDtypeStruct((n, t, h), jnp.bfloat16, sharding=spec)
  row = jax.ShapeDtypeStruct((n, t), jnp.float32, sharding=spec)
  for phase in ("fwd", "dq", "dkv"):
    args = (x, x, x) if phase == "fwd" else (x, x, x, x, row, row)
    cost = jax.jit(_unfused_phase(phase, causal)).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    est = splash_cost.estimate(phase, heads=n, q_len=t, kv_len=t, head_dim=h, head_dim_v=h,
                               bq=block, bkv=block, causal=causal, itemsize=2)
    for field, ours in (("flops", est.flops), ("transcendentals", est.transcendentals)):
      assert 0.5 <= ours / cost[field] <= 2.0, (phase, field, ours, cost[field])
    least = 2 * n * t * h * {"fwd": 4, "dq": 4, "dkv": 6}[phase]  # bf16 [N, T, H] in and out.
    assert least <= est.bytes_accessed <= cost["bytes accessed"], (
        phase, least, est.bytes_accessed, cost["bytes accessed"])
