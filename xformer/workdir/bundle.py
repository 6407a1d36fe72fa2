"""A trained run in a notebook: `b = xformer.load("runs/default"); b.translate(["..."])`.

`load` restores parameters only (no optimizer state is read), read-only, onto one local device
of whatever machine runs the notebook: a checkpoint written sharded over 8 devices loads on one
CPU. The model is the run's own `Run` (no dataset is read), the tokenizer the copy in the
workdir. The verbs belong to the run's task: `translate` (translation), `generate` (LM), and
for every task `score` and `attention_maps`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from xformer import config_lib, errors
from xformer.data import pipeline
from xformer.data.tokenizer import Tokenizer
from xformer.model import decode
from xformer.runtime import sharding
from xformer.training import run as run_lib
from xformer.workdir import provenance, record
from xformer.workdir.averaging import average_params
from xformer.workdir.checkpoint import Checkpointer


@dataclasses.dataclass
class Scored:
  """Per-token log-probabilities of one target (EOS included) under the model."""

  pieces: list[str]  # [T] target pieces, "</s>" last
  ids: np.ndarray  # [T]
  logprobs: np.ndarray  # [T] natural log

  @property
  def total(self) -> float:
    return float(self.logprobs.sum())

  @property
  def nll(self) -> float:
    """Mean negative log-likelihood per token (what training reports as nll)."""
    return float(-self.logprobs.mean())


def _bucket(n: int, least: int = 16) -> int:
  """Next power of two >= n (and >= least): few distinct shapes, few compiles."""
  return max(least, 1 << max(n - 1, 0).bit_length())


class Bundle:
  """A loaded run: `.config`, `.run` (model, task), `.params`, `.tokenizer` and the verbs."""

  def __init__(self, run: run_lib.Run, params: Any, tokenizer: Tokenizer, step: int,
               workdir: str, averaged_steps: Sequence[int] = ()):
    self.run, self.params, self.tokenizer = run, params, tokenizer
    self.step, self.workdir, self.averaged_steps = step, workdir, list(averaged_steps)
    self._apply = jax.jit(lambda p, b, mutable: run.task.apply(run.model, p, b, mutable=mutable),
                          static_argnames=("mutable",))

  config = property(lambda self: self.run.config)
  model_config = property(lambda self: self.run.model_config)
  model = property(lambda self: self.run.model)

  def __repr__(self) -> str:
    avg = f", average of steps {self.averaged_steps}" if self.averaged_steps else ""
    return (f"Bundle({self.run.task.name}, {self.workdir} step {self.step}{avg}: "
            f"{self.model_config.posemb} d{self.model_config.d_model}, "
            f"{self.run.num_params:,} parameters)")

  # --- Helpers the tasks' verbs use --------------------------------------------------------

  def decode_settings(self, **overrides: Any) -> decode.Settings:
    """The run's decode settings (config.decode) with the given non-None overrides."""
    base = dataclasses.asdict(decode.Settings(**self.config.decode))
    return decode.Settings(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

  def rows(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[int]]:
    """Token rows [B, L] (0-padded; L and B bucketed) and each row's length."""
    limit = self.run.position_limit()
    if limit is not None and max(map(len, ids)) > limit:
      raise errors.ConfigError(f"A sequence of {max(map(len, ids))} tokens does not fit the "
                               f"learned position table of {limit}: this model cannot read it.")
    rows = np.zeros((_bucket(len(ids), 1), _bucket(max(map(len, ids)))), np.int32)
    for r, x in enumerate(ids):
      rows[r, :len(x)] = x
    return rows, [len(x) for x in ids]

  def pieces(self, ids: Sequence[int]) -> list[str]:
    return [self.tokenizer.sp.id_to_piece(int(i)) for i in ids]

  # --- Verbs -------------------------------------------------------------------------------

  def translate(self, sentences: Sequence[str] | str, beam: int = 4, alpha: float | None = None,
                max_extra: int | None = None, nbest: bool = False, batch_size: int = 32):
    """Translations of `sentences` (one string or a list): beam search (beam=1: greedy) with
    GNMT length penalty `alpha` (default config.decode.alpha), outputs up to `max_extra`
    tokens longer than the (bucketed) input; `nbest` returns every hypothesis as (text, score)."""
    out = self.run.task.translate(self, _as_list(sentences), beam=beam, alpha=alpha,
                                  max_extra=max_extra, nbest=nbest, batch_size=batch_size)
    return out[0] if isinstance(sentences, str) else out

  def generate(self, prompts: Sequence[str] | str, max_len: int = 128, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0):
    """Continuations of `prompts` by an LM (seeded; temperature 0 is greedy). max_len counts
    prompt and continuation together (BOS included)."""
    out = self.run.task.generate(self, _as_list(prompts), max_len=max_len,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return out[0] if isinstance(prompts, str) else out

  def _batch(self, sources: Sequence[str], targets: Sequence[str] | None) -> dict[str, Any]:
    """Teacher-forced batch of examples, framed by the task exactly as in training."""
    task = self.run.task
    examples = task.score_examples(self.tokenizer, sources, targets)
    longest = [max(len(ex[k]) for ex in examples) + 1 for k in range(len(examples[0]))]
    limit = self.run.position_limit()
    if limit is not None and max(longest) > limit:
      raise errors.ConfigError(f"A sequence of {max(longest)} tokens does not fit the learned "
                               f"position table of {limit}: this model cannot read it.")
    lengths = pipeline.Lengths(_bucket(longest[0]), _bucket(longest[-1]))
    frame = pipeline.Frame(task, lengths, "drop", pipeline.OverlongCounter())
    pad = pipeline.PadUnpacked(task.feature_lengths(lengths))
    rows = [pad.map(frame.map(tuple(np.asarray(x, np.int32) for x in ex))) for ex in examples]
    rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (
        _bucket(len(rows), 1) - len(rows))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def score(self, sources: Sequence[str] | str, targets: Sequence[str] | str | None = None):
    """Per-token log-probs of each target given its source (translation), or of each text
    (LM: `score(texts)`). Returns a `Scored` per example (one for a single string)."""
    batch = self._batch(_as_list(sources), None if targets is None else _as_list(targets))
    tgt, weights = (np.asarray(x) for x in self.run.task.loss_inputs(batch))  # [B, T] each
    logp = np.asarray(_token_logprobs(self._apply(self.params, batch, False), tgt))  # [B, T]
    n = len(_as_list(sources))
    out = [Scored(self.pieces(tgt[r][weights[r]]), tgt[r][weights[r]].copy(),
                  logp[r][weights[r]]) for r in range(n)]
    return out[0] if isinstance(sources, str) else out

  def attention_maps(self, source: str, target: str | None = None) -> dict[str, Any]:
    """Attention weights of one example, teacher-forced: numpy arrays [layers, heads, queries,
    keys] per attention kind (`encoder_self`, `decoder_self`, `cross`), and the pieces that
    label the axes (`source_pieces`, `target_pieces`: decoder inputs, BOS first)."""
    batch = self._batch([source], None if target is None else [target])
    _, state = self._apply(self.params, batch, ("intermediates",))
    return self.run.task.attention_maps(state["intermediates"], batch, self.pieces)


def _as_list(texts: Sequence[str] | str) -> list[str]:
  return [texts] if isinstance(texts, str) else list(texts)


@jax.jit
def _token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T]


def _resolve(path: str, step: int | None) -> tuple[str, str, int | None]:
  """(run dir, checkpoints dir, step) for a run dir, its checkpoints dir or one step dir
  (local or gs://)."""
  if "://" not in path:
    path = os.path.abspath(os.path.expanduser(path))
  path = path.rstrip("/")
  p = epath.Path(path)
  if p.name.isdigit() and p.is_dir():  # .../checkpoints/450
    if step is not None and step != int(p.name):
      raise errors.ConfigError(f"{path} is checkpoint {p.name}, but step={step} was asked for.")
    return str(p.parent.parent), str(p.parent), int(p.name)
  if (p / "checkpoints").is_dir():
    return path, str(p / "checkpoints"), step
  if p.name == "checkpoints" and p.is_dir():
    return str(p.parent), path, step
  raise errors.UserError(f"{path} is neither a run directory (with checkpoints/) nor a "
                         "checkpoint step directory.")


def load_run(path: str, step: int | None = None, devices: Sequence[Any] | None = None
             ) -> tuple[run_lib.Run, Tokenizer, Checkpointer, int, str]:
  """The `Run` a run directory was trained with (its saved config, its tokenizer), on
  `devices` (default: one local device), with its Checkpointer and the step to read."""
  workdir, ckpt_dir, step = _resolve(path, step)
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  steps = ckpt.steps()
  if not steps:
    raise errors.UserError(f"No checkpoints in {ckpt_dir}.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise errors.UserError(f"No checkpoint {step} in {ckpt_dir}; it has steps {steps}.")
  saved = ckpt.restore_config(step)
  provenance.warn_if_different(record.environment(saved), f"The run in {workdir}")
  config = record.from_saved(saved)
  tok_path = epath.Path(workdir) / "tokenizer.model"
  if not tok_path.exists():
    raise errors.UserError(f"{tok_path} is missing: the run's tokenizer is needed to read and "
                           "write text.")
  tokenizer = Tokenizer.load(str(tok_path))
  devices = jax.local_devices()[:1] if devices is None else devices
  mesh = sharding.make_mesh({"data": -1}, devices)
  run = run_lib.Run(config, config_lib.model_config(config, tokenizer.vocab_size), mesh)
  return run, tokenizer, ckpt, step, workdir


def restore_params(run: run_lib.Run, ckpt: Checkpointer, step: int, average_last: int = 1
                   ) -> tuple[Any, list[int]]:
  """Parameters of `step` (or the mean of the `average_last` newest up to it) on the run's
  devices, and the averaged steps."""
  if average_last <= 1:
    return ckpt.restore_params(step, run.abstract_params, run.param_shardings), []
  steps = [s for s in ckpt.steps() if s <= step][-average_last:]
  if len(steps) < 2:
    raise errors.UserError(f"average_last needs at least 2 checkpoints; {ckpt.directory} has "
                           f"{steps} up to step {step}.")
  params, used = average_params(ckpt.directory, run.abstract_params, steps=steps)
  return jax.device_put(params, run.param_shardings), used


def load(path: str, step: int | None = None, average_last: int = 1) -> Bundle:
  """Loads a run for translating, sampling, scoring and looking inside.

  Args:
    path: a run directory (its `checkpoints/`), or one checkpoint step directory.
    step: which checkpoint (default: the newest, or the one `path` names).
    average_last: average the parameters of this many newest checkpoints up to `step` (the
      paper averages the last 5 for base models).

  Returns:
    A `Bundle`, parameters on one local device.
  """
  run, tokenizer, ckpt, step, workdir = load_run(path, step)
  params, used = restore_params(run, ckpt, step, average_last)
  ckpt.close()
  return Bundle(run, params, tokenizer, step, workdir, used)
