"""RoPE context extension: the rotation speeds (and YaRN's attention temperature) when a model
trained on `original_len` positions reads `factor` times more.

  * "linear" — position interpolation (Chen et al. 2023, "Extending Context Window of Large
    Language Models via Positional Interpolation"): every speed divided by the factor s, so
    position m is rotated as position m / s was in training.
  * "ntk" — NTK-aware scaling (bloc97, 2023; section 3.2 of the YaRN paper): the base b becomes
    b * s^(H / (H - 2)). The fastest pair keeps its speed (local order stays sharp) and the
    slowest is slowed by exactly s (as in interpolation).
  * "yarn" — "NTK-by-parts" plus a temperature (Peng et al. 2023, "YaRN: Efficient Context
    Window Extension of Large Language Models", eqs. 17-20). A pair whose wavelength
    lambda_i = 2 pi / theta_i fits r_i = original_len / lambda_i times into the trained context
    keeps its speed when r_i > beta, is interpolated (theta_i / s) when r_i < alpha, and blends
    in between: theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i. Two readings of the
    blend, `ramp`:
      - "index" (the default): the authors' code (jquesnelle/yarn, copied by HF transformers'
        `_compute_yarn_parameters` and vLLM): gamma is linear in the pair index i between the
        pairs where r_i = beta and r_i = alpha, rounded outward (floor / ceil), so checkpoints
        and configs that use YaRN elsewhere mean the same speeds here;
      - "ratio": the paper's equation, gamma_i = clip((r_i - alpha) / (beta - alpha), 0, 1),
        linear in the ratio r_i.
    Logits are divided by a temperature t with sqrt(1 / t) = 0.1 ln(s) + 1, applied by scaling
    both queries and keys by sqrt(1 / t).

All of it depends only on the relative position once queries and keys are rotated, so each
scaling keeps RoPE's relative property and cached decoding.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

SCALINGS = ("none", "linear", "ntk", "yarn")
RAMPS = ("index", "ratio")  # YaRN's blend: the authors' code, the paper's equation.


def check(scaling: str, factor: float, original_len: int, ramp: str = "index") -> str | None:
  """Why these arguments are invalid (a sentence), or None when they are fine."""
  if scaling not in SCALINGS:
    return f"scaling={scaling!r} is not valid; choose one of {list(SCALINGS)}"
  if ramp not in RAMPS:
    return f"yarn_ramp={ramp!r} is not valid; choose one of {list(RAMPS)}"
  if scaling == "none":
    return None if factor == 1.0 else f"factor={factor} needs a scaling (one of {SCALINGS[1:]})"
  if not factor >= 1.0:
    return f"factor must be >= 1 (how many times the trained context is read), got {factor}"
  if scaling == "yarn" and original_len <= 0:
    return "scaling='yarn' needs original_len, the sequence length the model was trained on"
  return None


def frequencies(head_dim: int, base: float, scaling: str = "none", factor: float = 1.0,
                original_len: int = 0, alpha: float = 1.0, beta: float = 32.0,
                ramp: str = "index") -> np.ndarray:
  """theta'_i for i in [0, H/2): the rotation speed of each dimension pair under `scaling`.

  Plain numpy (float64): the speeds are constants of the model, computed once at trace time.
  """
  theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [H/2]
  if scaling == "none" or factor == 1.0:
    return theta.astype(np.float32)
  if scaling == "linear":
    out = theta / factor
  elif scaling == "ntk":
    new_base = base * factor ** (head_dim / (head_dim - 2))
    out = new_base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  elif scaling == "yarn":
    gamma = _yarn_gamma(head_dim, base, theta, original_len, alpha, beta, ramp)  # [H/2]
    out = (1.0 - gamma) * theta / factor + gamma * theta
  else:
    raise ValueError(check(scaling, factor, original_len))
  return out.astype(np.float32)


def _yarn_gamma(head_dim: int, base: float, theta: np.ndarray, original_len: int, alpha: float,
                beta: float, ramp: str) -> np.ndarray:
  """YaRN's share of the original speed per pair: 1 keeps it, 0 interpolates (see `ramp`)."""
  if ramp == "ratio":
    ratio = original_len * theta / (2 * math.pi)  # r_i = L / lambda_i
    return np.clip((ratio - alpha) / (beta - alpha), 0.0, 1.0)
  # The pair index at which a pair turns `rotations` times over the trained context:
  # L theta_i / (2 pi) = rotations, theta_i = base^(-2i / H).
  index = lambda rotations: head_dim * math.log(  # noqa: E731
      original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))
  low = max(math.floor(index(beta)), 0)
  high = min(math.ceil(index(alpha)), head_dim - 1)
  high = high + 0.001 if high == low else high
  ramp_up = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
  return 1.0 - ramp_up  # Pairs before `low` keep their speed; after `high`, interpolated.


def attention_factor(scaling: str, factor: float) -> float:
  """What queries and keys are multiplied by: sqrt(1 / t) = 0.1 ln(s) + 1 for YaRN, else 1."""
  if scaling == "yarn" and factor > 1.0:
    return 0.1 * math.log(factor) + 1.0
  return 1.0


def rotate(x, positions, theta) -> jnp.ndarray:
  """Rotates pair (i, i + H/2) of x [B, T, N, H] by position * theta[i] (float32 inside)."""
  if x.shape[-1] % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {x.shape[-1]}.")
  positions = jnp.broadcast_to(positions, x.shape[:2])  # [B, T]
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(theta, jnp.float32)  # [B,T,H/2]
  sin = jnp.sin(angles)[:, :, None, :]  # [B, T, 1, H/2]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # 2 x [B, T, N, H/2]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)  # [B, T, N, H]
