"""Positional encodings against independent formulas, and the registry's contract."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer import model as model_lib
from xformer import positional
from xformer.model import config as model_config


def test_names_lists_the_six_required_encodings():
  assert {"none", "sinusoidal", "learned", "rope", "alibi", "t5_bias"} <= set(positional.names())


@pytest.mark.parametrize("d_model", [8, 64, 512])
def test_sinusoidal_matches_paper_formula(d_model):
  positions = np.arange(0, 300, 7)
  ref = np.zeros((len(positions), d_model))
  for row, pos in enumerate(positions):  # Section 3.5, written out element by element.
    for i in range(d_model // 2):
      ref[row, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
      ref[row, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
  got = np.asarray(positional.sinusoidal(jnp.asarray(positions), d_model))
  assert got.shape == (len(positions), d_model)
  np.testing.assert_allclose(got, ref, atol=2e-4)  # float32 angles up to ~300 rad.


def test_rope_matches_complex_reference():
  rng = np.random.default_rng(0)
  b, t, n, h = 2, 9, 3, 16
  x = rng.normal(size=(b, t, n, h)).astype(np.float32)
  positions = rng.integers(0, 1000, size=(b, t))
  got = np.asarray(positional.apply_rope(jnp.asarray(x), jnp.asarray(positions), base=500.0))
  # Half-split pairing: the complex number x[i] + 1j * x[i + h/2] turns by pos * base^(-2i/h).
  z = x[..., : h // 2] + 1j * x[..., h // 2:]
  theta = 500.0 ** (-2.0 * np.arange(h // 2) / h)
  z = z * np.exp(1j * positions[:, :, None, None] * theta)
  ref = np.concatenate([z.real, z.imag], axis=-1)
  np.testing.assert_allclose(got, ref, atol=2e-4)


def test_rope_dot_product_depends_only_on_offset():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32)

  def score(m, n):
    rq = positional.apply_rope(q, jnp.array([[m]]))
    rk = positional.apply_rope(k, jnp.array([[n]]))
    return float(jnp.sum(rq * rk))

  for _ in range(20):
    offset = int(rng.integers(-50, 50))
    m1, m2 = (int(v) for v in rng.integers(60, 2000, size=2))
    assert score(m1, m1 - offset) == pytest.approx(score(m2, m2 - offset), rel=1e-4, abs=1e-4)
  # And it does depend on the offset (a rotation that did nothing would pass the check above).
  assert abs(score(10, 10) - score(10, 3)) > 1e-3


@pytest.mark.parametrize("num_heads", [8, 12])
def test_alibi_slopes_are_the_papers_geometric_sequence(num_heads):
  if num_heads == 8:  # 2^(-8/8 * i): 1/2, 1/4, ..., 1/256.
    expected = [2.0 ** -(i + 1) for i in range(8)]
  else:  # 12 heads: the 8-head slopes, then every other slope of the 16-head sequence.
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 * (2 * i + 1))
                                                      for i in range(4)]
  np.testing.assert_allclose(positional.alibi_slopes(num_heads), expected, rtol=1e-6)


def test_t5_buckets_exact_near_and_logarithmic_far():
  rel = jnp.arange(-200, 201)
  uni = np.asarray(positional.t5_relative_bucket(rel, bidirectional=False))
  # Causal: a key d steps back (relative -d) is bucket d for d < 16, future keys are bucket 0.
  np.testing.assert_array_equal(uni[200 - 15:201], np.arange(15, -1, -1))
  assert (uni[201:] == 0).all()
  assert np.all(np.diff(uni[:201]) <= 0)  # Farther back never gets a smaller bucket.
  assert uni[0] == 31 and uni.max() == 31
  bi = np.asarray(positional.t5_relative_bucket(rel, bidirectional=True))
  assert set(bi[:200]).isdisjoint(set(bi[201:]))  # Past and future use separate buckets.


def _t5_bucket_reference(rel, bidirectional, num_buckets, max_distance):
  """One relative position (key - query) to its bucket, scalar by scalar, as T5's
  `_relative_position_bucket` describes it: half the buckets (bidirectional: per direction)
  exact, the rest logarithmic up to max_distance, then the last bucket."""
  bucket, n = 0, -rel
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      bucket += num_buckets  # Keys after the query: the upper half.
    n = abs(n)
  else:
    n = max(n, 0)  # Causal: future keys all share bucket 0.
  exact = num_buckets // 2
  if n < exact:
    return bucket + n
  far = exact + int(np.float32(math.log(n / exact) / math.log(max_distance / exact)
                               * (num_buckets - exact)))
  return bucket + min(far, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64)])
def test_t5_buckets_equal_the_reference_formula(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  got = np.asarray(positional.t5_relative_bucket(jnp.asarray(rel), bidirectional, num_buckets,
                                                 max_distance))
  want = [_t5_bucket_reference(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  np.testing.assert_array_equal(got, want)


def test_alibi_bias_is_minus_slope_times_distance():
  """The registered module's [B, N, T, S] bias against -m_h |i - j| written out (Press et al.,
  eq. 1 with the paper's slopes 2^(-8h/N) for N = 4 heads)."""
  q = jnp.asarray([[0, 1, 2, 5]])
  k = jnp.asarray([[0, 3, 7]])
  module = positional.make("alibi", {}, d_model=16, num_heads=4, max_len=16)
  got = np.asarray(module.apply({}, q, k, method="bias"))
  want = np.zeros((1, 4, 4, 3))
  for h in range(4):
    for i, qi in enumerate([0, 1, 2, 5]):
      for j, kj in enumerate([0, 3, 7]):
        want[0, h, i, j] = -(2.0 ** (-8.0 * (h + 1) / 4)) * abs(qi - kj)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_t5_bias_reads_its_table_at_the_reference_buckets():
  """T5Bias: bias[b, h, i, j] = table[bucket(k_j - q_i), h], the bucket by the reference."""
  q, k = jnp.asarray([[0, 4, 40, 200]]), jnp.asarray([[0, 1, 30, 199, 260]])
  module = positional.make("t5_bias", {}, d_model=16, num_heads=2, max_len=512,
                           bidirectional=True)
  variables = module.init(jax.random.key(0), q, k, method="bias")
  table = np.asarray(nn.unbox(variables)["params"]["rel_bias"])  # [buckets, N]
  got = np.asarray(module.apply(variables, q, k, method="bias"))
  for i, qi in enumerate([0, 4, 40, 200]):
    for j, kj in enumerate([0, 1, 30, 199, 260]):
      bucket = _t5_bucket_reference(kj - qi, True, 32, 128)
      np.testing.assert_allclose(got[0, :, i, j], table[bucket], rtol=1e-6)


def test_unknown_name_lists_valid_names():
  with pytest.raises(KeyError) as err:
    positional.get("rotary")
  for name in positional.names():
    assert name in str(err.value)
  with pytest.raises(KeyError, match="Did you mean 'alibi'"):
    model_config.variant("tiny", posemb="alibj")


def test_unknown_kwarg_is_refused_with_the_accepted_ones():
  with pytest.raises(ValueError, match="accepts: \\['base', 'scaling'"):
    model_config.variant("tiny", posemb="rope", posemb_kw={"theta": 1e4})


def test_hooks_declared_match_hooks_implemented():
  for name in positional.names():
    cls = positional.get(name)
    for hook, method in positional.base._HOOK_METHODS.items():
      overridden = getattr(cls, method) is not getattr(positional.PositionalEncoding, method)
      assert overridden == (hook in cls.HOOKS), (name, hook)
  with pytest.raises(TypeError, match="does not define embed"):

    @positional.register("broken_pe")
    class Broken(positional.PositionalEncoding):  # pylint: disable=unused-variable
      HOOKS = frozenset({positional.ADD})


def test_learned_table_refuses_positions_past_its_end():
  cfg = model_config.variant("tiny", vocab_size=20, posemb="learned", max_len=8)
  lm = model_lib.DecoderOnlyLM(cfg)
  with pytest.raises(ValueError, match="Learned positional table has 8 positions"):
    lm.init(jax.random.key(0), jnp.ones((1, 9), jnp.int32))
  with pytest.raises(ValueError, match="Learned positional table has 8 positions"):
    model_lib.init_cache(lm, batch_size=1, max_len=16)  # A decode cache longer than the table.
  # Positions past the table given explicitly under jit read NaN: loud, never clipped.
  params = model_lib.init_params(lm, jax.random.key(0))
  apply = jax.jit(lm.apply)
  inside = apply({"params": params}, jnp.ones((1, 2), jnp.int32), positions=jnp.array([[3, 7]]))
  past = apply({"params": params}, jnp.ones((1, 2), jnp.int32), positions=jnp.array([[3, 8]]))
  assert np.isfinite(inside).all() and np.isnan(past[0, 1]).all()


def test_a_new_encoding_is_one_class_in_one_place():
  """A researcher's encoding, defined here and nowhere else, is what the full model computes:
  with its learned scale at 1 the model equals the sinusoidal one, and the scale is trained."""

  @positional.register("scaled_sinusoidal_test")
  class ScaledSinusoidal(positional.PositionalEncoding):
    HOOKS = frozenset({positional.ADD})

    @nn.compact
    def embed(self, positions):
      scale = self.param("scale", nn.initializers.ones, (), self.param_dtype)
      return scale * positional.sinusoidal(positions, self.d_model)

  cfg = model_config.variant("tiny", vocab_size=20, posemb="scaled_sinusoidal_test", dropout=0.0)
  model = model_lib.Transformer(cfg)
  params = model_lib.init_params(model, jax.random.key(0))
  src, tgt = jnp.arange(3, 9)[None], jnp.arange(4, 9)[None]
  sinusoidal = model_lib.Transformer(cfg.replace(posemb="sinusoidal", posemb_kw={}))
  without_scale = {**params, "encoder": {k: v for k, v in params["encoder"].items()
                                         if k != "posemb"},
                   "decoder": {k: v for k, v in params["decoder"].items() if k != "posemb"}}
  np.testing.assert_allclose(model.apply({"params": params}, src, tgt),
                             sinusoidal.apply({"params": without_scale}, src, tgt), atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, src, tgt)[..., 5]))(params)
  assert abs(float(grads["encoder"]["posemb"]["scale"])) > 1e-4
  assert abs(float(grads["decoder"]["posemb"]["scale"])) > 1e-4


def test_readme_example_encoding_works():
  """The README's "Add a positional encoding" code, run as written, in a real model."""
  import os
  import re
  readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
  section = readme[readme.index("## Add a positional encoding"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  name = re.search(r'register\("(\w+)"\)', code).group(1)
  cfg = model_config.variant("tiny", vocab_size=20, posemb=name, posemb_kw={"fraction": 0.5})
  model = model_lib.DecoderOnlyLM(cfg)
  params = model_lib.init_params(model, jax.random.key(0))
  tokens = jnp.arange(1, 7)[None]
  logits = jax.jit(model.apply)({"params": params}, tokens)
  changed = jax.jit(model.apply)({"params": params}, tokens.at[:, 4:].set(3))
  np.testing.assert_allclose(logits[:, :4], changed[:, :4], atol=1e-6)
