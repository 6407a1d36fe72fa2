"""RoPE context extension, xPos, FIRE, KERPLE-log and randomized positions against the papers'
formulas, written here independently in numpy (loops over dimension pairs, no shared code)."""

import collections
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer import errors, positional
from xformer.model import config as model_config
from xformer.positional import (
  fire_input,
  kerple_log_bias,
  random_positions,
  rope_scaling,
  xpos_scale,
)


def _np_rope(x, pos, theta):
  """Half-split RoPE of one vector x [H] at position pos with speeds theta [H/2], as complex."""
  h = len(x) // 2
  z = (x[:h] + 1j * x[h:]) * np.exp(1j * pos * theta)
  return np.concatenate([z.real, z.imag])


def _np_theta(head_dim, base):
  return np.array([base ** (-2 * i / head_dim) for i in range(head_dim // 2)])


@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn"])
def test_rope_scaled_frequencies_match_papers(scaling):
  h, base, s, length = 64, 10_000.0, 4.0, 128
  theta = _np_theta(h, base)
  if scaling == "linear":  # Chen et al. 2023: f(x, m / s).
    want = theta / s
  elif scaling == "ntk":  # b' = b * s^(|D| / (|D| - 2)).
    want = _np_theta(h, base * s ** (h / (h - 2)))
  else:  # Peng et al. 2023, eqs. 17-19 with alpha=1, beta=32.
    want = []
    for t in theta:
      r = length / (2 * math.pi / t)
      ramp = 0.0 if r < 1 else 1.0 if r > 32 else (r - 1) / 31
      want.append((1 - ramp) * t / s + ramp * t)
  got = rope_scaling.frequencies(h, base, scaling, s, original_len=length, ramp="ratio")
  np.testing.assert_allclose(got, np.array(want), rtol=1e-6)
  if scaling != "linear":  # NTK and YaRN (long wavelengths only, at L=4096) keep the fastest pair
    fast = rope_scaling.frequencies(h, base, scaling, s, original_len=4096)[0]
    assert fast == pytest.approx(theta[0], rel=1e-6) and got[-1] < theta[-1] / 2


def _yarn_reference_inv_freq(dim, base, factor, original_max, beta_fast=32, beta_slow=1):
  """YaRN's frequencies as the authors' code computes them (jquesnelle/yarn, scaled_rope;
  the same steps as HF transformers' _compute_yarn_parameters), step by step in numpy."""
  def correction_dim(num_rotations):
    return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))
  low = max(math.floor(correction_dim(beta_fast)), 0)
  high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
  extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
  keep = 1 - ramp  # inv_freq_extrapolation_factor
  return interpolation * (1 - keep) + extrapolation * keep


@pytest.mark.parametrize("dim, factor, original_max", [(128, 16.0, 4096), (64, 4.0, 2048),
                                                       (32, 8.0, 64)])
def test_yarn_default_ramp_is_the_authors_code(dim, factor, original_max):
  got = rope_scaling.frequencies(dim, 10_000.0, "yarn", factor, original_len=original_max)
  want = _yarn_reference_inv_freq(dim, 10_000.0, factor, original_max)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  paper = rope_scaling.frequencies(dim, 10_000.0, "yarn", factor, original_len=original_max,
                                   ramp="ratio")
  if dim == 128:  # The two readings part: many pairs differ, by up to ~2/3 of their speed.
    differ = np.abs(paper / got - 1) > 1e-3
    assert differ.sum() >= 20 and np.max(np.abs(paper / got - 1)) > 0.5


def test_yarn_ramp_is_checked_by_name():
  with pytest.raises(errors.ConfigError, match=r"yarn_ramp='linear' is not valid"):
    model_config.variant("tiny", posemb="rope", posemb_kw={
        "scaling": "yarn", "factor": 4.0, "original_len": 64, "yarn_ramp": "linear"})


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "yarn"])
def test_scaled_rope_dot_products_match_numpy_and_stay_relative(scaling):
  h, factor, length = 16, 4.0, 32
  kw = dict(scaling=scaling, factor=1.0 if scaling == "none" else factor, original_len=length)
  pe = positional.make("rope", kw, d_model=h * 2, num_heads=2, max_len=256)
  rotate = pe.rotate_fn()
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, h)).astype(np.float32)
  theta = np.asarray(rope_scaling.frequencies(h, 10_000.0, **kw))
  mscale = 0.1 * math.log(factor) + 1 if scaling == "yarn" else 1.0
  dots = {}
  for m, n in [(5, 2), (105, 102), (9, 9), (200, 60)]:
    rq = rotate(jnp.asarray(q)[None, None, None], jnp.array([[m]]), "query")[0, 0, 0]
    rk = rotate(jnp.asarray(k)[None, None, None], jnp.array([[n]]), "key")[0, 0, 0]
    want = mscale ** 2 * _np_rope(q, m, theta) @ _np_rope(k, n, theta)
    dots[(m, n)] = float(rq @ rk)
    np.testing.assert_allclose(dots[(m, n)], want, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(dots[(5, 2)], dots[(105, 102)], rtol=2e-4, atol=2e-4)


def test_rope_scaling_arguments_are_validated():
  with pytest.raises(errors.ConfigError, match=r"choose one of \['none', 'linear', 'ntk', 'yarn'"):
    model_config.variant("tiny", posemb="rope", posemb_kw={"scaling": "dynamic"})
  with pytest.raises(errors.ConfigError, match="needs original_len"):
    model_config.variant("tiny", posemb="rope", posemb_kw={"scaling": "yarn", "factor": 4.0})
  with pytest.raises(errors.ConfigError, match="factor must be >= 1"):
    model_config.variant("tiny", posemb="rope", posemb_kw={"scaling": "linear", "factor": 0.5})


def test_xpos_matches_paper_and_decays_with_relative_distance():
  h, gamma, scale_base = 8, 0.4, 512.0
  pe = positional.make("xpos", {}, d_model=16, num_heads=2, max_len=64, bidirectional=False)
  rotate = pe.rotate_fn()
  rng = np.random.default_rng(1)
  q, k = rng.normal(size=(2, h)).astype(np.float32)
  theta = _np_theta(h, 10_000.0)
  zeta = np.array([(i / (h / 2) + gamma) / (1 + gamma) for i in range(h // 2)])
  got = {}
  for m, n in [(7, 3), (307, 303), (40, 0)]:
    rq = rotate(jnp.asarray(q)[None, None, None], jnp.array([[m]]), "query")[0, 0, 0]
    rk = rotate(jnp.asarray(k)[None, None, None], jnp.array([[n]]), "key")[0, 0, 0]
    scale = np.tile(zeta ** ((m - n) / scale_base), 2)  # per pair, both halves
    want = (_np_rope(q, m, theta) * scale) @ _np_rope(k, n, theta)
    got[(m, n)] = float(rq @ rk)
    np.testing.assert_allclose(got[(m, n)], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[(7, 3)], got[(307, 303)], rtol=1e-4)  # relative only
  np.testing.assert_allclose(xpos_scale(jnp.array([512]), h), zeta[None], rtol=1e-6)
  with pytest.raises(ValueError, match="role must be"):
    rotate(jnp.ones((1, 1, 1, h)), jnp.zeros((1, 1), jnp.int32), "value")


def test_xpos_encoder_is_plain_rope():
  enc = positional.make("xpos", {}, d_model=16, num_heads=2, max_len=64, bidirectional=True)
  x, pos = jax.random.normal(jax.random.key(0), (1, 5, 2, 8)), jnp.arange(5)[None] * 50
  for role in ("query", "key"):
    np.testing.assert_allclose(enc.rotate_fn()(x, pos, role), positional.apply_rope(x, pos),
                               rtol=1e-6)


def test_fire_input_and_bias_match_formula():
  qp, kp = np.array([[0, 3, 700]]), np.array([[0, 1, 3, 650]])
  c, threshold = 0.1, 512.0
  psi = lambda x: np.log(c * x + 1)  # noqa: E731
  want = np.zeros((1, 3, 4))
  for a, i in enumerate(qp[0]):
    for b, j in enumerate(kp[0]):
      want[0, a, b] = np.sign(i - j) * psi(abs(i - j)) / psi(max(threshold, i))
  got = fire_input(jnp.asarray(qp), jnp.asarray(kp), jnp.float32(c), jnp.float32(threshold))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  pe = positional.make("fire", {"init_threshold": threshold}, d_model=16, num_heads=2,
                       max_len=64, bidirectional=False)
  params = nn.unbox(pe.init(jax.random.key(0), jnp.asarray(qp), jnp.asarray(kp),
                            method="bias")["params"])
  bias = pe.apply({"params": params}, jnp.asarray(qp), jnp.asarray(kp), method="bias")
  p = jax.tree.map(np.asarray, params)
  hidden = np.maximum(want[..., None] * p["mlp_in"]["kernel"][0] + p["mlp_in"]["bias"], 0)
  mlp = hidden @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]  # [1, 3, 4, N]
  np.testing.assert_allclose(bias, mlp.transpose(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_kerple_log_matches_formula():
  qp, kp = jnp.array([[0, 4, 9]]), jnp.array([[0, 2, 9, 30]])
  r1, r2 = jnp.array([0.5, 1.5]), jnp.array([0.2, 0.9])
  got = kerple_log_bias(qp, kp, r1, r2)
  for h in range(2):
    for a in range(3):
      for b in range(4):
        d = abs(int(qp[0, a]) - int(kp[0, b]))
        assert got[0, h, a, b] == pytest.approx(-float(r1[h]) * math.log(1 + float(r2[h]) * d),
                                                rel=1e-5)


def test_random_positions_are_sorted_subsets_per_segment():
  # Row 0: segments of 5 and 3 tokens, then 2 padding; row 1: one segment of 10.
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0], list(range(10))])
  valid = jnp.array([[True] * 8 + [False] * 2, [True] * 10])
  draws = jax.vmap(lambda key: random_positions.sample(key, positions, valid, 64))(
      jax.random.split(jax.random.key(0), 2000))  # [2000, 2, 10]
  draws = np.asarray(draws)
  assert draws.min() >= 0 and draws.max() < 64
  for row, segs in [(0, [(0, 5), (5, 8)]), (1, [(0, 10)])]:
    for a, b in segs:
      assert (np.diff(draws[:, row, a:b], axis=-1) > 0).all()  # strictly increasing
  np.testing.assert_array_equal(draws[:, 0, 8:], 0)  # padding keeps its positions
  # Uniform sorted k-subsets of [0, M): E[x_p] = (p + 1) (M + 1) / (k + 1) - 1.
  for (row, a, k) in [(0, 0, 5), (0, 5, 3), (1, 0, 10)]:
    want = [(p + 1) * 65 / (k + 1) - 1 for p in range(k)]
    np.testing.assert_allclose(draws[:, row, a:a + k].mean(0), want, atol=1.0)
  # Every position is drawn somewhere, and M = k leaves only 0..k-1.
  assert len(np.unique(draws[:, 1])) == 64
  full = random_positions.sample(jax.random.key(1), positions[1:], valid[1:], 10)
  np.testing.assert_array_equal(full, positions[1:])


def test_random_positions_validation():
  with pytest.raises(errors.ConfigError, match="reads no positions"):
    model_config.variant("tiny", posemb="none", random_positions=64)
  with pytest.raises(errors.ConfigError, match="raise model.max_len to 512"):
    model_config.variant("tiny", posemb="learned", max_len=256, random_positions=512)
  with pytest.raises(errors.ConfigError, match="int >= 0"):
    model_config.variant("tiny", random_positions=-1)


@pytest.mark.parametrize("m, k", [(3, 2), (5, 3), (6, 2)])
def test_random_positions_are_uniform_subsets_exactly(m, k):
  """Ruoss et al. sample k of M positions without replacement: every sorted k-subset has
  probability 1 / C(M, k). (Flooring sorted uniforms gave {0, 2} 1/2 and {0, 1}, {1, 2} 1/4
  each at M=3, k=2.) Two packed segments of k tokens each in one row: both uniform."""
  n = 30_000
  segments = 2 if 2 * k <= m else 1  # Two packed segments where the row has room for them.
  positions = jnp.array([list(range(k)) * segments])
  valid = jnp.ones_like(positions, bool)
  draws = np.asarray(jax.vmap(lambda key: random_positions.sample(key, positions, valid, m))(
      jax.random.split(jax.random.key(0), n)))[:, 0]  # [n, T]
  subsets = list(itertools.combinations(range(m), k))
  for start in range(0, positions.shape[1], k):
    counts = collections.Counter(tuple(row) for row in draws[:, start:start + k])
    assert set(counts) == set(subsets)
    p = 1 / len(subsets)
    for subset in subsets:  # Within 5 standard deviations of the exact frequency.
      assert abs(counts[subset] / n - p) < 5 * math.sqrt(p * (1 - p) / n), (subset, counts)


def test_random_positions_keep_adjacent_pairs_at_their_uniform_rate():
  """A uniform k-subset of [0, M) holds k (k - 1) / M adjacent pairs on average: at k=64,
  M=128 half the gaps are 1 (floored sorted uniforms gave 0.37)."""
  positions, valid = jnp.arange(64)[None], jnp.ones((1, 64), bool)
  draws = np.asarray(jax.vmap(lambda key: random_positions.sample(key, positions, valid, 128))(
      jax.random.split(jax.random.key(3), 2000)))[:, 0]
  adjacent = (np.diff(draws, axis=-1) == 1).mean()
  assert abs(adjacent - 64 / 128) < 0.01, adjacent


def test_a_run_saved_before_the_yarn_ramp_option_keeps_the_papers_ramp():
  from xformer.workdir import record  # pylint: disable=import-outside-toplevel
  saved = {"version": 2, "task": "lm", "model": {
      "variant": "lm_mini", "posemb": "rope",
      "posemb_kw": {"rope": {"scaling": "yarn", "factor": 4.0, "original_len": 64}}}}
  assert record.from_saved(saved).model.posemb_kw.rope.yarn_ramp == "ratio"
  saved["model"]["posemb_kw"]["rope"]["yarn_ramp"] = "index"
  assert record.from_saved(saved).model.posemb_kw.rope.yarn_ramp == "index"


def test_kerple_reads_its_parameters_clipped_and_they_can_recover():
  """Below min_value the bias uses min_value, yet the gradient still reaches the parameter
  (a jnp.maximum clip would give it zero, and a parameter there could never come back)."""
  module = positional.make("kerple_log", {"min_value": 0.01}, d_model=16, num_heads=2,
                           max_len=16)
  qp, kp = jnp.array([[0, 1, 2]]), jnp.array([[0, 1, 2]])
  variables = nn.unbox(module.init(jax.random.key(0), qp, kp, method="bias"))
  params = {"params": {"r1": jnp.array([0.5, -0.3]), "r2": jnp.array([-1.0, 0.2])}}
  bias = np.asarray(module.apply(params, qp, kp, method="bias"))
  want = kerple_log_bias(qp, kp, jnp.array([0.5, 0.01]), jnp.array([0.01, 0.2]))
  np.testing.assert_allclose(bias, want, rtol=1e-6)
  grads = jax.grad(lambda p: module.apply(p, qp, kp, method="bias").sum())(params)["params"]
  assert float(grads["r1"][1]) != 0.0 and float(grads["r2"][0]) != 0.0
  assert set(variables["params"]) == {"r1", "r2"}


def test_xpos_refuses_positions_its_float32_scale_cannot_hold():
  limit = positional.get("xpos").position_limit({"gamma": 0.4, "scale_base": 512.0})
  assert 35_500 < limit < 36_000  # -ln(float32's smallest normal) * 512 / ln(1.4 / 0.4).
  scale = np.asarray(xpos_scale(jnp.array([limit - 100, limit + 1000]), 8))[:, 0]  # zeta_0
  assert scale[0] > 0 and np.isfinite(1 / scale[0])
  assert scale[1] == 0 or scale[1] < np.finfo(np.float32).tiny  # Flushed, or denormal.
  from xformer import config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_file("configs/lm_default.py", overrides=[
      "model.posemb=xpos", "model.random_positions=40000", "model.max_len=40000"])
  with pytest.raises(errors.ConfigError, match="cannot represent positions past 35"):
    config_lib.validate(config)
