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
