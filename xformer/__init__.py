"""xformer: the Transformer of "Attention Is All You Need" in JAX/Flax, for research."""

from xformer import positional
from xformer import variants
from xformer.model import DecoderOnlyLM, Transformer, init_cache, init_params, make_model
from xformer.variants import ModelConfig, variant

__version__ = "0.1.0"
