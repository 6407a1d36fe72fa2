"""The feed-forward activations: jax.nn's values, the derivative of jax.nn's formula, and one
residual for the backward pass."""

import contextlib
import io

import jax
import jax.ad_checkpoint  # (print_saved_residuals)
import jax.numpy as jnp
import numpy as np
import pytest

from xformer.model import activations

FORMULAS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=True),
            "silu": jax.nn.silu}
X = jnp.linspace(-6.0, 6.0, 241)  # Steps of 0.05 (0 itself: relu's kink, where both give 0).


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_values_and_gradients_are_jax_nn_formulas(name):
  ours, formula = getattr(activations, name), FORMULAS[name]
  np.testing.assert_array_equal(ours(X), formula(X))
  np.testing.assert_allclose(jax.vmap(jax.grad(ours))(X), jax.vmap(jax.grad(formula))(X),
                             rtol=1e-5, atol=1e-6)
  x16 = X.astype(jnp.bfloat16)
  got = jax.vmap(jax.grad(lambda x: ours(x).astype(jnp.float32)))(x16)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), jax.vmap(jax.grad(formula))(
      x16.astype(jnp.float32)), atol=1e-2)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_the_backward_pass_keeps_one_array(name):
  """jax.nn's gelu keeps five [N] arrays for its backward pass and silu three; ours keep one."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(lambda x: jnp.sum(getattr(activations, name)(x)), X)
  assert out.getvalue().count(f"f32[{X.size}]") == 1, out.getvalue()
