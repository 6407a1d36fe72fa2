"""Everything a run is built from, assembled once: data, tokenizer, model, mesh, jitted steps.

`Run(config, workdir)` is shared by training (train.py), evaluation and notebook loading, so
they all see the same model, tokenizer and shardings.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xformer import config_lib, decode, optim, sharding
from xformer import model as model_lib
from xformer import steps as train_lib
from xformer.data import datasets, pipeline, tokenizer as tokenizer_lib


def tokenizer_for(config: ml_collections.ConfigDict, dataset: datasets.Dataset,
                  workdir: str | None) -> tokenizer_lib.Tokenizer:
  settings = tokenizer_lib.TokenizerSettings(**{
      k: v for k, v in config.tokenizer.to_dict().items() if k != "cache_dir"})
  cache_dir = config.tokenizer.cache_dir or os.path.join(
      config.data.data_dir or datasets.DEFAULT_DATA_DIR, "xformer_tokenizers")
  return tokenizer_lib.get_or_train(lambda: dataset.texts("train"), dataset.fingerprint,
                                    settings, cache_dir, workdir)


class Run:
  """The assembled experiment of one config (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None):
    config_lib.validate(config)
    sharding.maybe_initialize_distributed()
    self.config, self.workdir = config, workdir
    self.dataset = datasets.load(config.data)
    if self.dataset.task != config.task:
      raise ValueError(f"config.task={config.task!r} but dataset {config.data.dataset!r} is a "
                       f"{self.dataset.task} dataset.")
    self.tokenizer = tokenizer_for(config, self.dataset, workdir)
    self._encoded: dict[str, pipeline.EncodedSource] = {}
    self.model_config = config_lib.model_config(config, self.tokenizer.vocab_size)
    self.model = model_lib.make_model(self.model_config, config.task)
    self.lengths = pipeline.Lengths(config.data.max_source_len, config.data.max_target_len)
    self.mesh = sharding.make_mesh(config.mesh.to_dict())
    self.schedule = optim.make_schedule(config.optimizer, self.model_config.d_model,
                                        config.num_train_steps)
    self.tx = optim.make_optimizer(config.optimizer, self.model_config.d_model,
                                   config.num_train_steps)
    self.abstract_params = jax.eval_shape(
        lambda: model_lib.init_params(self.model, jax.random.key(0)))
    self.abstract_opt_state = jax.eval_shape(self.tx.init, self.abstract_params)
    self.param_shardings = sharding.param_shardings(model_lib.logical_axes(self.model), self.mesh)
    replicated = sharding.replicated(self.mesh)
    self.opt_shardings = optax.tree_map_params(
        self.tx, lambda _, s: s, self.abstract_opt_state, self.param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = train_lib.TrainState(replicated, self.param_shardings,
                                                self.opt_shardings)
    batch_sh = sharding.batch_sharding(self.mesh)
    self.p_train_step = jax.jit(
        functools.partial(train_lib.train_step, model=self.model, tx=self.tx,
                          schedule=self.schedule, label_smoothing=config.label_smoothing,
                          grad_accum_steps=config.grad_accum_steps,
                          skip_nonfinite=config.nan_policy == "skip",
                          faults=train_lib.Faults(**config.faults.to_dict()),
                          loss_chunk=config.loss_chunk),
        in_shardings=(self.state_shardings, batch_sh, replicated),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self.p_eval_step = jax.jit(
        functools.partial(train_lib.eval_step, model=self.model,
                          label_smoothing=config.label_smoothing),
        in_shardings=(self.param_shardings, batch_sh), out_shardings=replicated)

  # --- State -----------------------------------------------------------------------------------

  def init_state(self, rng: jax.Array) -> train_lib.TrainState:
    def init(rng):
      params = model_lib.init_params(self.model, rng)
      return train_lib.TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    return jax.jit(init, out_shardings=self.state_shardings)(rng)

  # --- Data ------------------------------------------------------------------------------------

  def encoded(self, split: str) -> pipeline.EncodedSource:
    """Token ids of a split (tokenized once when data.pretokenize)."""
    if split not in self._encoded:
      self._encoded[split] = pipeline.EncodedSource(
          self.dataset.split(split), self.tokenizer, self.dataset.keys,
          eager=self.config.data.pretokenize)
    return self._encoded[split]

  def train_iterator(self):
    """This process's rows of every global batch (see pipeline.ShardedBatches)."""
    data = self.config.data
    return pipeline.sharded_train_iterator(
        self.encoded("train"), task=self.config.task, lengths=self.lengths,
        batch_size=self.config.batch_size, num_shards=data.num_shards or jax.process_count(),
        seed=self.config.seed, pack=data.pack, overlong=data.overlong,
        process_index=jax.process_index(), process_count=jax.process_count())

  def eval_batches(self, split: str, limit: int | None):
    return pipeline.eval_batches(self.encoded(split), task=self.config.task,
                                 lengths=self.lengths, batch_size=self.config.eval_batch_size,
                                 limit=limit or None)

  def put_batch(self, batch: dict[str, np.ndarray], local: bool = False) -> dict[str, jax.Array]:
    """Global arrays from a batch: this process's rows (local=True, training) or, for eval
    batches every process holds whole, this process's slice of them."""
    if not local and jax.process_count() > 1:
      n = len(next(iter(batch.values()))) // jax.process_count()
      i = jax.process_index()
      batch = {k: v[i * n:(i + 1) * n] for k, v in batch.items()}
    return sharding.global_batch(batch, self.mesh)

  # --- Decoding --------------------------------------------------------------------------------

  def translate_fn(self, params: Any, beam_size: int | None = None):
    """rows [B, S] of source ids -> [B, S + max_extra] output ids: greedy for beam size 1,
    else the best hypothesis of beam search (config.decode: beam_size, alpha, max_extra)."""
    cfg = self.config.decode
    beam = cfg.beam_size if beam_size is None else beam_size
    max_len = self.config.data.max_source_len + cfg.max_extra

    def fn(rows: np.ndarray) -> np.ndarray:
      rows = jax.device_put(rows, sharding.replicated(self.mesh))
      if beam == 1:
        out = decode.greedy_translate(self.model, params, rows, max_len)
      else:
        out = decode.beam_translate(self.model, params, rows, max_len, beam, cfg.alpha)[0][:, 0]
      return np.asarray(jax.device_get(out))

    return fn


def log_run(run: Run) -> None:
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.abstract_params))
  logging.info("Model %s, %s parameters; mesh %s.", run.model_config, f"{n:,}",
               dict(run.mesh.shape))
