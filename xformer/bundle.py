"""A trained run in a notebook: `b = xformer.load("runs/default"); b.translate(["..."])`.

`load` restores parameters only (no optimizer state is read), read-only, onto one local device
of whatever machine runs the notebook: a checkpoint written sharded over 8 devices loads on one
CPU. The model and tokenizer come from the run itself (the config saved in the checkpoint, the
tokenizer copied into the workdir), so no dataset is needed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from xformer import config_lib, decode, positional
from xformer import model as model_lib
from xformer.checkpoint import Checkpointer, average_params
from xformer.data.tokenizer import BOS_ID, EOS_ID, Tokenizer


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


def _resolve(path: str, step: int | None) -> tuple[str, str, int | None]:
  """(run dir, checkpoints dir, step) for a run dir, its checkpoints dir or one step dir
  (local or gs://)."""
  if "://" not in path:
    path = os.path.abspath(os.path.expanduser(path))
  path = path.rstrip("/")
  p = epath.Path(path)
  if p.name.isdigit() and p.is_dir():  # .../checkpoints/450
    if step is not None and step != int(p.name):
      raise ValueError(f"{path} is checkpoint {p.name}, but step={step} was asked for.")
    return str(p.parent.parent), str(p.parent), int(p.name)
  if (p / "checkpoints").is_dir():
    return path, str(p / "checkpoints"), step
  if p.name == "checkpoints" and p.is_dir():
    return str(p.parent), path, step
  raise FileNotFoundError(f"{path} is neither a run directory (with checkpoints/) nor a "
                          "checkpoint step directory.")


def _bucket(n: int, least: int = 16) -> int:
  """Next power of two >= n (and >= least): few distinct shapes, few compiles."""
  return max(least, 1 << max(n - 1, 0).bit_length())


class Bundle:
  """A loaded run: `.config`, `.params`, `.tokenizer`, `.model` and the notebook verbs."""

  def __init__(self, config: ml_collections.ConfigDict, params: Any, tokenizer: Tokenizer,
               step: int, workdir: str, averaged_steps: Sequence[int] = ()):
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.step, self.workdir, self.averaged_steps = step, workdir, list(averaged_steps)
    self.model_config = config_lib.model_config(config, tokenizer.vocab_size)
    self.model = model_lib.make_model(self.model_config, config.task)
    self._apply = jax.jit(self.model.apply, static_argnames=("mutable",))

  def __repr__(self) -> str:
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
    avg = f", average of steps {self.averaged_steps}" if self.averaged_steps else ""
    return (f"Bundle({self.config.task}, {self.workdir} step {self.step}{avg}: "
            f"{self.model_config.posemb} d{self.model_config.d_model}, {n:,} parameters)")

  @property
  def is_lm(self) -> bool:
    return self.config.task == "lm"

  # --- Encoding text ---------------------------------------------------------------------------

  def _limit(self) -> int | None:
    """Longest sequence the model can take (a learned position table ends), else None."""
    cls = positional.get(self.model_config.posemb)
    return self.model_config.max_len if cls.LIMITED_TO_MAX_LEN else None

  def _rows(self, texts: Sequence[str], prefix: Sequence[int], suffix: Sequence[int],
            batch: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Token rows [B, L] (0-padded, L and B bucketed) and each row's length."""
    ids = [list(prefix) + self.tokenizer.encode(t) + list(suffix) for t in texts]
    limit = self._limit()
    if limit is not None:
      long = [len(x) for x in ids if len(x) > limit]
      if long:
        raise ValueError(f"A sequence of {max(long)} tokens does not fit the learned position "
                         f"table of {limit}: this model cannot read it.")
    length = _bucket(max(len(x) for x in ids))
    rows = np.zeros((batch or _bucket(len(ids), 1), length), np.int32)
    for r, x in enumerate(ids):
      rows[r, :len(x)] = x
    return rows, [len(x) for x in ids]

  def _pieces(self, ids: Sequence[int]) -> list[str]:
    return [self.tokenizer.sp.id_to_piece(int(i)) for i in ids]

  def _require(self, task: str, verb: str, instead: str) -> None:
    if self.config.task != task:
      raise ValueError(f"{verb}() needs a {task} model; this run is {self.config.task}: "
                       f"use {instead}() instead.")

  # --- Translation -----------------------------------------------------------------------------

  def translate(self, sentences: Sequence[str] | str, beam: int | None = None,
                alpha: float | None = None, max_extra: int | None = None,
                nbest: bool = False, batch_size: int = 32):
    """Translations of `sentences` (one string or a list).

    Args:
      beam: beam size (1 = greedy); default 4, the paper's setting.
      alpha: GNMT length penalty (default config.decode.alpha, the paper's 0.6).
      max_extra: output may be this many tokens longer than the (bucketed) input
        (default config.decode.max_extra = 50).
      nbest: return every beam hypothesis as (text, score), best first.

    Returns:
      A string per sentence (a list for a list), or lists of (text, score) with nbest.
    """
    self._require("translation", "translate", "generate")
    single = isinstance(sentences, str)
    sentences = [sentences] if single else list(sentences)
    beam = 4 if beam is None else beam
    cfg = self.config.decode
    alpha = cfg.alpha if alpha is None else alpha
    max_extra = cfg.max_extra if max_extra is None else max_extra
    out = []
    for start in range(0, len(sentences), batch_size):
      chunk = sentences[start:start + batch_size]
      rows, _ = self._rows(chunk, (), (EOS_ID,))
      max_len = rows.shape[1] + max_extra
      if self._limit() is not None:
        max_len = min(max_len, self._limit())
      if beam == 1 and not nbest:
        tokens = np.asarray(decode.greedy_translate(self.model, self.params, rows, max_len))
        out += [self.tokenizer.decode(t) for t in tokens[:len(chunk)]]
        continue
      tokens, scores = decode.beam_translate(self.model, self.params, rows, max_len, beam, alpha)
      tokens, scores = np.asarray(tokens), np.asarray(scores)
      for r in range(len(chunk)):
        if nbest:
          out.append([(self.tokenizer.decode(t), float(s))
                      for t, s in zip(tokens[r], scores[r]) if s > -1e8])
        else:
          out.append(self.tokenizer.decode(tokens[r, 0]))
    return out[0] if single else out

  # --- Language modelling ----------------------------------------------------------------------

  def generate(self, prompts: Sequence[str] | str, max_len: int = 128, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0):
    """Continuations of `prompts` by the LM (text after the prompt; seeded, reproducible).

    max_len counts tokens of prompt and continuation together (BOS included).
    temperature 0 is greedy.
    """
    self._require("lm", "generate", "translate")
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    rows, lengths = self._rows(prompts, (BOS_ID,), ())
    if self._limit() is not None:
      max_len = min(max_len, self._limit())
    if max(lengths) >= max_len:
      raise ValueError(f"A prompt of {max(lengths)} tokens leaves no room within max_len="
                       f"{max_len}.")
    rows = rows[:, :min(rows.shape[1], max_len)]
    out = decode.sample_lm(self.model, self.params, rows, np.asarray(
        lengths + [1] * (len(rows) - len(lengths)), np.int32), jax.random.key(seed), max_len,
        temperature, top_k, top_p)
    out = np.asarray(out)
    texts = [self.tokenizer.decode(out[r, n:]) for r, n in enumerate(lengths)]
    return texts[0] if single else texts

  # --- Scoring and looking inside --------------------------------------------------------------

  def _teacher_forced(self, sources, targets):
    """Model inputs for scoring: (args, target ids [B, T], lengths)."""
    if self.is_lm:
      if targets is not None:
        raise ValueError("An LM scores texts alone: score(texts).")
      texts = sources
      tgt_in, lengths = self._rows(texts, (BOS_ID,), ())
      tgt, _ = self._rows(texts, (), (EOS_ID,), batch=len(tgt_in))
      return (tgt_in,), tgt, lengths
    if targets is None or len(targets) != len(sources):
      raise ValueError("Translation scoring needs one target per source: score(srcs, tgts).")
    src, _ = self._rows(sources, (), (EOS_ID,))
    tgt_in, lengths = self._rows(targets, (BOS_ID,), (), batch=len(src))
    tgt, _ = self._rows(targets, (), (EOS_ID,), batch=len(src))
    return (src, tgt_in), tgt, lengths

  def score(self, sources: Sequence[str] | str, targets: Sequence[str] | str | None = None):
    """Per-token log-probs of each target given its source (translation), or of each text
    (LM: `score(texts)`). Returns a `Scored` per pair (one for a single string)."""
    single = isinstance(sources, str)
    if single:
      sources = [sources]
      targets = None if targets is None else [targets]
    args, tgt, lengths = self._teacher_forced(list(sources), targets)
    logits = self._apply({"params": self.params}, *args)  # [B, T, V]
    logp = np.asarray(_token_logprobs(logits, tgt))  # [B, T]
    out = [Scored(self._pieces(tgt[r, :n]), tgt[r, :n].copy(), logp[r, :n])
           for r, n in enumerate(lengths)]
    return out[0] if single else out

  def attention_maps(self, source: str, target: str | None = None) -> dict[str, Any]:
    """Attention weights of one sentence pair (or one LM text), teacher-forced.

    Returns a dict of numpy arrays [layers, heads, queries, keys] -- `encoder_self`,
    `decoder_self`, `cross` (translation) or `decoder_self` (LM) -- and the pieces labelling
    the axes: `source_pieces` (encoder tokens, EOS last) and `target_pieces` (decoder inputs,
    BOS first: query t predicts target token t).
    """
    args, _, lengths = self._teacher_forced([source], None if target is None else [target])
    _, state = self._apply({"params": self.params}, *args, mutable=("intermediates",))
    inter = state["intermediates"]
    n_tgt = lengths[0]
    out: dict[str, Any] = {"target_pieces": self._pieces(args[-1][0, :n_tgt])}

    def weights(tree):  # Sown under nn.scan: ([L, B, N, T, S],)
      return np.asarray(tree["attention_weights"][0])[:, 0]  # [L, N, T, S]

    dec = inter["decoder"]["layers"]
    out["decoder_self"] = weights(dec["self_attention"])[:, :, :n_tgt, :n_tgt]
    if not self.is_lm:
      n_src = int((args[0][0] > 0).sum())
      out["source_pieces"] = self._pieces(args[0][0, :n_src])
      out["encoder_self"] = weights(inter["encoder"]["layers"]["self_attention"])[
          :, :, :n_src, :n_src]
      out["cross"] = weights(dec["cross_attention"])[:, :, :n_tgt, :n_src]
    return out


@functools.partial(jax.jit)
def _token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T]


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
  workdir, ckpt_dir, step = _resolve(path, step)
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  steps = ckpt.steps()
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {ckpt_dir}.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"No checkpoint {step} in {ckpt_dir}; it has steps {steps}.")
  config = ml_collections.ConfigDict(ckpt.restore_config(step))
  tok_path = os.path.join(workdir, "tokenizer.model")
  if not epath.Path(tok_path).exists():
    raise FileNotFoundError(f"{tok_path} is missing: the run's tokenizer is needed to read and "
                            "write text.")
  tokenizer = Tokenizer.load(tok_path)
  model = model_lib.make_model(config_lib.model_config(config, tokenizer.vocab_size),
                               config.task)
  abstract = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
  if average_last > 1:
    upto = [s for s in steps if s <= step][-average_last:]
    params, used = _average(ckpt_dir, abstract, upto)
  else:
    params, used = ckpt.restore_params(step, abstract), []
  ckpt.close()
  return Bundle(config, params, tokenizer, step, workdir, used)


def _average(ckpt_dir: str, abstract: Any, steps: list[int]) -> tuple[Any, list[int]]:
  if len(steps) < 2:
    raise ValueError(f"average_last needs at least 2 checkpoints; {ckpt_dir} has {steps} up to "
                     "the requested step.")
  params, used = average_params(ckpt_dir, abstract, steps=steps)
  return jax.device_put(params, jax.local_devices()[0]), used
