"""Positional encodings, chosen by name: `none`, `sinusoidal`, `learned` (absolute.py), `rope`,
`xpos` (rotary.py), `alibi`, `t5_bias`, `fire`, `kerple_log` (biases.py).

Each encoding is one registered `PositionalEncoding` subclass and plugs into the model through at
most three hooks:

  * ``add``:    `embed(positions) -> [B, T, D]`, added to the scaled token embeddings;
  * ``rotate``: `rotate_fn() -> f(x [B, T, N, H], positions [B, T], role) -> x`, applied to the
                queries (role "query") and keys (role "key") of self-attention; RoPE treats both
                alike, xPos does not. Must be parameter-free: it runs inside the scanned layers;
  * ``bias``:   `bias(q_positions, k_positions) -> [B, N, T, S]`, added to self-attention logits
                (computed once per stack and shared by its layers, as in T5).

Positions are always explicit inputs ([B, T] int32), so packed rows (positions restart at every
segment) and cached decoding (positions continue from the cache index) are handled by the caller
giving the right numbers, never by an encoding guessing them.

Adding an encoding touches one file (here, or any module imported before the model is built):

    @register("my_pe")
    class MyPE(PositionalEncoding):
      HOOKS = frozenset({ADD})
      def embed(self, positions):                # [B, T] -> [B, T, D]
        ...

The pure math (`sinusoidal`, `apply_rope`, `alibi_slopes`, `t5_relative_bucket`, `xpos_scale`, ...)
is kept in plain functions in formulas.py (re-exported here) so tests can check it against
independent numpy formulas. RoPE's context extension is rope_scaling.py; randomized positions
(`model.random_positions`) random_positions.py.
"""

# pylint: disable=unused-import
from xformer.positional.base import (  # noqa: F401
    ADD, BIAS, KEY, QUERY, ROTATE, PositionalEncoding, default_kwargs, get, kwarg_names, make,
    names, register, validate)
from xformer.positional.formulas import (  # noqa: F401
    alibi_slopes, apply_rope, fire_input, kerple_log_bias, rope_frequencies, sinusoidal,
    t5_relative_bucket, xpos_scale)

# The encodings register themselves on import.
from xformer.positional import absolute, biases, rotary  # noqa: F401,E402  isort: skip
from xformer.positional.absolute import Learned, NoPE, Sinusoidal  # noqa: F401
from xformer.positional.biases import FIRE, ALiBi, KerpleLog, T5Bias  # noqa: F401
from xformer.positional.rotary import RoPE, XPos  # noqa: F401
