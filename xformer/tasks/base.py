"""The `Task` contract: everything that differs between kinds of run, in one object.

A task owns the batch layout (which keys a batch has and how a tokenized example becomes them),
the model it builds and how that model is called on a batch, the loss inputs, its evaluation metrics beyond loss and perplexity, and the
notebook verbs (`translate`, `generate`, `score`). `Run`, `train`, `evaluate` and `Bundle` ask
the task; none of them compares task names or model classes.

Adding a kind of run is one new file with a registered subclass (tests/test_tasks.py adds a
prefix LM that way) plus a config that names it (`config.task`).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import numpy as np

from xformer import errors, registry
from xformer.model.config import ModelConfig

Array = jax.Array
Batch = dict[str, Any]


class Task:
  """Base class of the registered tasks (stateless; one instance per task).

  Attributes:
    name: the registry name (`config.task`).
    data_kind: the kind of dataset it reads: "translation" (source, target) or "lm" (text).
    default_dataset: the embedded dataset a config of this task starts from.
  """

  name: ClassVar[str] = ""
  data_kind: ClassVar[str] = ""
  default_dataset: ClassVar[str] = ""

  # --- Model ---------------------------------------------------------------------------------

  def check(self, cfg: ModelConfig) -> None:
    """Raises ConfigError for model settings this task cannot use."""

  def build_model(self, cfg: ModelConfig) -> nn.Module:
    raise NotImplementedError

  def apply(self, model: nn.Module, params: Any, batch: Batch, *, deterministic: bool = True,
            rng: Array | None = None, **kwargs) -> Array:
    """Teacher-forced logits [B, T, V] float32 of a (packed or padded) batch."""
    raise NotImplementedError

  def loss_inputs(self, batch: Batch) -> tuple[Array, Array]:
    """(targets [B, T], weights [B, T]) of the loss: by default every real target token."""
    return batch["targets"], batch["targets_segment_ids"] > 0

  def decode_context(self, cfg: ModelConfig, rows: int, source_len: int) -> tuple[Any, ...]:
    """Shapes (jax.ShapeDtypeStruct) of what one cached decode step reads besides its cache and
    tokens, for `rows` sequences (ahead-of-time compiles of `decode_step`)."""
    del cfg, rows, source_len
    return ()

  def decode_context_of(self, model: nn.Module, params: Any, batch: Batch) -> tuple[Any, ...]:
    """What `decode_step` reads besides its cache and tokens, for the rows of `batch` (the
    encoder's output for translation; nothing for an LM)."""
    del model, params, batch
    return ()

  def decode_cache(self, model: nn.Module, params: Any, rows: int, max_len: int,
                   *context: Array) -> Any:
    """The cache decoding starts from (before its first token) for `rows` sequences."""
    del params, context
    from xformer import model as model_lib  # pylint: disable=import-outside-toplevel
    return model_lib.init_cache(model, rows, max_len)

  def decode_step(self, model: nn.Module, params: Any, cache: Any, tokens: Array,
                  *context: Array) -> tuple[Array, Any]:
    """One cached decode step: tokens [B, 1] -> (logits [B, V], updated cache)."""
    raise NotImplementedError

  # --- Data ----------------------------------------------------------------------------------

  def features(self, ids: tuple[np.ndarray, ...], lengths: Any,
               fit: Callable[[np.ndarray, int], np.ndarray | None]) -> dict[str, np.ndarray] | None:
    """Model features of one tokenized example (BOS / EOS added), or None to drop it.

    Args:
      ids: token ids per raw key of the dataset ((source, target) or (text,)).
      lengths: the pipeline's maximum lengths (source, target), BOS / EOS included.
      fit: fit(ids, limit) -> ids of at most `limit` tokens, or None: the pipeline's over-long
        policy (drop or truncate, counted).
    """
    raise NotImplementedError

  def feature_lengths(self, lengths: Any) -> dict[str, int]:
    """Row length of each feature, for packing and padding. Features named like a side
    ("inputs", "targets") get segment ids and positions; others follow their side's rows."""
    raise NotImplementedError

  def row_lengths(self, data: Any) -> tuple[int, ...]:
    """The row lengths attention sees in training (every side of a batch)."""
    from xformer.data.pipeline import Lengths  # pylint: disable=import-outside-toplevel
    lengths = Lengths(data.max_source_len, data.max_target_len)
    return tuple(sorted(set(self.feature_lengths(lengths).values())))

  def longest_position(self, data: Any, decode: Any) -> int:
    """The longest sequence the model reads in training, evaluation and decoding (checked
    against a learned table's size before any data is read)."""
    raise NotImplementedError

  # --- Evaluation and notebook verbs ---------------------------------------------------------

  def eval_metrics(self, ctx: Any, params: Any, split: str, limit: int | None, *,
                   num_samples: int = 0, thorough: bool = False) -> dict[str, float]:
    """Metrics beyond loss and perplexity over the first `limit` examples of `split` (None:
    all); `ctx` is an evaluate.Context. `num_samples` examples are printed; `thorough` asks for
    what only the evaluate command computes (e.g. an LM's perplexity past its trained length)."""
    del ctx, params, split, limit, num_samples, thorough
    return {}

  def score_examples(self, tokenizer, sources: Sequence[str],
                     targets: Sequence[str] | None) -> list[tuple[list[int], ...]]:
    """Token ids per raw key of the examples `Bundle.score` scores."""
    raise NotImplementedError

  def attention_maps(self, intermediates: Any, batch: Batch, pieces) -> dict[str, Any]:
    raise NotImplementedError

  def translate(self, bundle, sentences: list[str], **kwargs) -> list[Any]:
    raise errors.ConfigError(f"translate() needs a translation run; this run is {self.name!r}"
                             f"{self._instead('generate')}.")

  def generate(self, bundle, prompts: list[str], **kwargs) -> list[str]:
    raise errors.ConfigError(f"generate() needs a language model; this run is {self.name!r}"
                             f"{self._instead('translate')}.")

  def _instead(self, verb: str) -> str:
    return f": use {verb}() instead" if type(self).__dict__.get(verb) else ""


def layer_weights(tree: Any) -> np.ndarray:
  """Attention weights sown under the scanned layer stack, ([L, B, N, T, S],), of the first row:
  [L, N, T, S]."""
  return np.asarray(tree["attention_weights"][0])[:, 0]


_REGISTRY: registry.Registry[Task] = registry.Registry("task")


def register(name: str):
  """Class decorator: registers one instance of a `Task` subclass under `name`."""

  def decorator(cls: type[Task]) -> type[Task]:
    if cls.name != name:
      raise ValueError(f"{cls.__name__}.name is {cls.name!r} but it is registered as {name!r}.")
    _REGISTRY.register(name)(cls())
    return cls

  return decorator


def get(name: str) -> Task:
  """The task registered as `name` (UnknownNameError listing the valid ones otherwise)."""
  return _REGISTRY.get(name)


def names() -> list[str]:
  return _REGISTRY.names()
