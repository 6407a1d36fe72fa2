"""The paper's optimisation and embedding arithmetic against its formulas (section 5.3, 3.4)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xformer import model as model_lib
from xformer import positional
from xformer.model import config as model_config
from xformer.training import optim


@pytest.mark.parametrize("step_num", [1, 2, 100, 3999, 4000, 4001, 10_000, 100_000])
def test_rsqrt_schedule_is_equation_3(step_num):
  """lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5), step_num from 1
  (optax counts from 0)."""
  want = 512**-0.5 * min(step_num**-0.5, step_num * 4000**-1.5)
  assert float(optim.rsqrt_schedule(512, 4000)(step_num - 1)) == pytest.approx(want, rel=1e-6)
  assert float(optim.rsqrt_schedule(512, 4000, 2.0)(step_num - 1)) == pytest.approx(2 * want,
                                                                                    rel=1e-6)


def test_adam_updates_are_the_papers_adam():
  """Adam(beta1 0.9, beta2 0.98, eps 1e-9) under the schedule, three steps, against the
  update rule written out in numpy."""
  cfg = ml_collections.ConfigDict(dict(schedule="rsqrt", warmup_steps=4, lr_scale=1.0,
                                       peak_lr=0.0, b1=0.9, b2=0.98, eps=1e-9,
                                       weight_decay=0.0, clip_grad_norm=0.0))
  tx = optim.make_optimizer(cfg, d_model=16, num_train_steps=10)
  params = {"w": jnp.array([0.5, -1.0, 2.0])}
  grads = [np.array([0.1, -0.2, 0.3]), np.array([-0.4, 0.1, 0.0]), np.array([0.2, 0.2, -1.0])]
  state = tx.init(params)
  w, m, v = np.array([0.5, -1.0, 2.0]), np.zeros(3), np.zeros(3)
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = {"w": params["w"] + updates["w"]}
    lr = 16**-0.5 * min(t**-0.5, t * 4**-1.5)
    m, v = 0.9 * m + 0.1 * g, 0.98 * v + 0.02 * g**2
    w = w - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.98**t)) + 1e-9)
    np.testing.assert_allclose(params["w"], w, rtol=1e-5, err_msg=f"step {t}")


def test_embeddings_are_scaled_by_sqrt_d_model_and_tied_to_the_output():
  """Section 3.4: embeddings times sqrt(d_model), plus the encoding; the same matrix projects
  back to logits. With no layers, an LM's logits are exactly that."""
  cfg = model_config.variant("tiny", vocab_size=32, d_model=16, num_heads=2, d_ff=32,
                         num_encoder_layers=0, num_decoder_layers=0, posemb="sinusoidal",
                         dropout=0.0)
  model = model_lib.DecoderOnlyLM(cfg)
  params = model_lib.init_params(model, jax.random.key(0))
  tokens = np.array([[5, 7, 9, 30]])
  table = np.asarray(params["embed"]["embedding"])  # [V, D]
  x = np.sqrt(16) * table[tokens[0]] + np.asarray(positional.sinusoidal(np.arange(4), 16))
  np.testing.assert_allclose(model.apply({"params": params}, tokens)[0], x @ table.T, atol=1e-5)
  # Initialised at std D^-0.5, so the scaled embedding has unit variance.
  assert np.std(table) * np.sqrt(16) == pytest.approx(1.0, abs=0.15)
