"""The Transformer: encoder-decoder and decoder-only models, their attention (XLA, cuDNN and
Pallas splash kernels), layers and masks, the model config with its size table, and decoding
(greedy, beam, sampling with a KV cache).

    cfg = model.variant("base", vocab_size=37_000, posemb="rope")
    params = model.init_params(model.Transformer(cfg), jax.random.key(0))
"""

# pylint: disable=unused-import
from xformer.model.config import SIZE_FIELDS, VARIANTS, ModelConfig, variant  # noqa: F401
from xformer.model.masks import Mask  # noqa: F401
from xformer.model.stacks import Context, EncoderLayer  # noqa: F401
from xformer.model.transformer import (  # noqa: F401
    DecoderOnlyLM,
    Transformer,
    init_cache,
    init_params,
    logical_axes,
)
