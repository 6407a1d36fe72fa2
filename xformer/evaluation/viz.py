"""Pictures (matplotlib, PNG): positional-encoding patterns, attention maps, token log-probs.

Every function returns the matplotlib Figure and, given `path`, also writes a PNG there. They
draw from plain arrays, so they work on a `Bundle` (`xformer.load`) or on anything else.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from xformer import positional


def _save(fig, path: str | None):
  if path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
  return fig


def positional_pattern(posemb: str, length: int = 128, d_model: int = 128, num_heads: int = 8,
                       kwargs: dict[str, Any] | None = None, params: Any = None,
                       bidirectional: bool = False) -> tuple[np.ndarray, str]:
  """What an encoding contributes, as an array to draw, and a caption.

  ADD encodings: the added vectors [length, d_model]. RoPE: cos of the rotation angle of each
  frequency pair [length, head_dim / 2]. BIAS encodings: the logit bias from query position 0..
  to key positions [num_heads, length, length]. `params`: the encoding's own parameters (a
  learned table, T5 buckets), e.g. bundle.params["decoder"]["posemb"]; random init otherwise.
  """
  cls = positional.get(posemb)
  pe = positional.make(posemb, kwargs, d_model=d_model, num_heads=num_heads,
                       max_len=max(length, 1), bidirectional=bidirectional)
  positions = jnp.arange(length)[None]  # [1, T]
  if positional.ADD in cls.HOOKS:
    variables = {"params": params} if params else pe.init(jax.random.key(0), positions,
                                                          method="embed")
    return np.asarray(pe.apply(variables, positions, method="embed")[0]), "added vector"
  if positional.ROTATE in cls.HOOKS:
    head_dim = d_model // num_heads
    freqs = positional.rope_frequencies(head_dim, (kwargs or {}).get("base", 10_000.0))
    return np.cos(np.arange(length)[:, None] * np.asarray(freqs)[None]), "cos(rotation angle)"
  if positional.BIAS in cls.HOOKS:
    variables = {"params": params} if params else pe.init(jax.random.key(0), positions,
                                                          positions, method="bias")
    return np.asarray(pe.apply(variables, positions, positions, method="bias")[0]), "logit bias"
  return np.zeros((length, 1)), "no positional signal"


def plot_positional(posemb: str, path: str | None = None, **kwargs):
  """The classic picture: positions x dimensions (or the bias of a few heads)."""
  values, caption = positional_pattern(posemb, **kwargs)
  if values.ndim == 3:  # [N, T, T] bias: a panel per head, at most 4.
    heads = min(4, len(values))
    fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3), squeeze=False)
    for h, ax in enumerate(axes[0]):
      im = ax.imshow(values[h], cmap="viridis")
      ax.set(title=f"{posemb} head {h}", xlabel="key position", ylabel="query position")
      fig.colorbar(im, ax=ax, fraction=0.046)
  else:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    im = ax.imshow(values.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower")
    ax.set(title=f"{posemb}: {caption}", xlabel="position", ylabel="dimension")
    fig.colorbar(im, ax=ax)
  return _save(fig, path)


def plot_attention(maps: dict[str, Any], kind: str = "cross", layers: Sequence[int] | None = None,
                   path: str | None = None):
  """Attention heatmaps, a row per layer and a column per head, axes labelled with pieces.

  Args:
    maps: `Bundle.attention_maps(...)`.
    kind: "encoder_self", "decoder_self" or "cross".
  """
  if kind not in maps or kind.endswith("pieces"):
    raise KeyError(f"No attention of kind {kind!r}; this model has "
                   f"{[k for k in maps if not k.endswith('pieces')]}.")
  weights = maps[kind]  # [L, N, T, S]
  q_labels = maps["source_pieces" if kind == "encoder_self" else "target_pieces"]
  k_labels = maps["target_pieces" if kind == "decoder_self" else "source_pieces"]
  layers = list(range(len(weights))) if layers is None else list(layers)
  heads = weights.shape[1]
  size = 0.16 * max(len(q_labels), len(k_labels)) + 1.2
  fig, axes = plt.subplots(len(layers), heads, figsize=(size * heads, size * len(layers)),
                           squeeze=False)
  for r, layer in enumerate(layers):
    for h in range(heads):
      ax = axes[r][h]
      ax.imshow(weights[layer, h], cmap="Blues", vmin=0, vmax=1, aspect="auto")
      ax.set_title(f"layer {layer} head {h}", fontsize=8)
      ax.set_xticks(range(len(k_labels)), k_labels, rotation=90, fontsize=5)
      ax.set_yticks(range(len(q_labels)), q_labels, fontsize=5)
  fig.suptitle(kind.replace("_", " "))
  fig.tight_layout()
  return _save(fig, path)


def plot_logprobs(scored, path: str | None = None):
  """Bars of each target token's log-probability (a `Bundle.score(...)` result)."""
  n = len(scored.pieces)
  fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * n + 1), 3))
  ax.bar(range(n), scored.logprobs, color=["tab:red" if lp < np.log(0.5) else "tab:blue"
                                           for lp in scored.logprobs])
  ax.set_xticks(range(n), scored.pieces, rotation=90, fontsize=7)
  ax.set(ylabel="log p(token)", title=f"total {scored.total:.2f}, nll/token {scored.nll:.3f}")
  ax.axhline(np.log(0.5), color="gray", lw=0.5, ls="--")
  fig.tight_layout()
  return _save(fig, path)
