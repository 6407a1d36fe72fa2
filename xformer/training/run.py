"""What a run is built from that needs no data: task, model, mesh, shardings, optimizer, jitted
steps and decoding.

Training (train.py) adds the data (`xformer.data.inputs.Inputs`); a notebook (`xformer.load`),
the evaluate CLI and an ahead-of-time compile (`xformer.compile`, on abstract TPU or GPU devices)
build a `Run` alone from a config and a vocabulary size.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from xformer import model as model_lib
from xformer import positional, tasks
from xformer.model import decode, splash
from xformer.model.config import ModelConfig
from xformer.runtime import sharding
from xformer.training import faults, optim, steps


class Run:
  """The data-free part of one config's experiment.

  Attributes:
    config: the (validated) config. model_config: its ModelConfig, with the real vocabulary.
    task: the registered Task. model: the flax module. mesh: devices with data/fsdp/tensor axes.
    abstract_params / abstract_opt_state: shapes; *_shardings: their placement on the mesh.
    p_train_step / p_eval_step: the jitted steps (see steps.py).
  """

  def __init__(self, config: ml_collections.ConfigDict, model_config: ModelConfig, mesh: Mesh,
               unroll_loss_chunks: bool = False):
    self.task = tasks.get(config.task)
    impl, why = splash.choose(model_config.attention_impl, model_config.posemb,
                              self.task.row_lengths(config.data), mesh.devices.flat[0].platform)
    self.attention = f"{impl} ({why})"  # "auto" resolved for these devices; logged at start.
    if impl != model_config.attention_impl:  # (No re-validation otherwise: see compile.py.)
      model_config = model_config.replace(attention_impl=impl)
    self.config, self.model_config, self.mesh = config, model_config, mesh
    self.model = self.task.build_model(model_config)
    d_model = model_config.d_model
    self.schedule = optim.make_schedule(config.optimizer, d_model, config.num_train_steps)
    self.tx = optim.make_optimizer(config.optimizer, d_model, config.num_train_steps)
    self.abstract_params = jax.eval_shape(
        lambda: model_lib.init_params(self.model, jax.random.key(0)))
    self.abstract_opt_state = jax.eval_shape(self.tx.init, self.abstract_params)
    self.param_shardings = sharding.param_shardings(model_lib.logical_axes(self.model), mesh)
    replicated = sharding.replicated(mesh)
    # Optimizer moments like their parameters, or (shard_optimizer_state) also split over the
    # data-parallel devices: each updates its slice and the new parameters are gathered.
    split = config.shard_optimizer_state
    self.opt_shardings = optax.tree_map_params(
        self.tx, lambda x, s: sharding.over_batch_devices(s, x.shape) if split else s,
        self.abstract_opt_state, self.param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = steps.TrainState(replicated, self.param_shardings, self.opt_shardings)
    self.batch_sharding = sharding.batch_sharding(mesh)
    loss_fn = functools.partial(
        steps.loss_sums, task=self.task, model=self.model,
        label_smoothing=config.label_smoothing, fused=config.fused_loss, chunk=config.loss_chunk,
        unroll_chunks=unroll_loss_chunks)
    train_loss = faults.drill(loss_fn, faults.Faults(**config.faults.to_dict()))
    self.p_train_step = InMesh(mesh, jax.jit(
        functools.partial(steps.train_step, loss_fn=train_loss, tx=self.tx,
                          schedule=self.schedule, grad_accum_steps=config.grad_accum_steps,
                          skip_nonfinite=config.nan_policy == "skip"),
        in_shardings=(self.state_shardings, self.batch_sharding, replicated),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,)))
    self.p_eval_step = InMesh(mesh, jax.jit(
        functools.partial(steps.eval_step, loss_fn=loss_fn),
        in_shardings=(self.param_shardings, self.batch_sharding), out_shardings=replicated))

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_params))

  def init_state(self, rng: jax.Array) -> steps.TrainState:
    def init(rng):
      params = model_lib.init_params(self.model, rng)
      return steps.TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    return jax.jit(init, out_shardings=self.state_shardings)(rng)

  @property
  def batch_devices(self) -> int:
    """Devices a batch's rows are split over (the mesh's data x fsdp axes)."""
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def put_batch(self, batch: dict[str, np.ndarray], local: bool = False) -> dict[str, jax.Array]:
    """Global arrays from a batch: this process's rows (local=True, training) or, for batches
    every process holds whole (evaluation, decoding), this process's slice of them, after
    padding with all-zero rows (padding: no weight) to a multiple of the batch devices."""
    if not local:
      rows = len(next(iter(batch.values())))
      padded = -(-rows // self.batch_devices) * self.batch_devices
      batch = {k: np.pad(v, [(0, padded - rows)] + [(0, 0)] * (v.ndim - 1))
               for k, v in batch.items()}
      n, i = padded // jax.process_count(), jax.process_index()
      batch = {k: v[i * n:(i + 1) * n] for k, v in batch.items()}
    return sharding.global_batch(batch, self.mesh)

  def position_limit(self) -> int | None:
    """The longest sequence the model can read (a learned position table ends), else None."""
    cls = positional.get(self.model_config.posemb)
    return self.model_config.max_len if cls.LIMITED_TO_MAX_LEN else None

  def translate(self, params: Any, rows: np.ndarray, settings: decode.Settings
                ) -> tuple[np.ndarray, np.ndarray]:
    """Decodes source rows [B, S] (every process holds all of them), data-parallel over the
    mesh's batch axes: n-best tokens [B, K, S + max_extra] and scores [B, K] on every process."""
    max_len = rows.shape[1] + settings.max_extra
    if self.position_limit() is not None:
      max_len = min(max_len, self.position_limit())
    src = self.put_batch({"rows": rows})["rows"]  # Padded to a multiple of the batch devices.
    with jax.set_mesh(self.mesh):
      tokens, scores = decode.translate(self.model, params, src, max_len=max_len,
                                        beam=settings.beam_size, alpha=settings.alpha)
    if jax.process_count() > 1:
      tokens, scores = multihost_utils.process_allgather((tokens, scores), tiled=True)
    return np.asarray(tokens)[:len(rows)], np.asarray(scores)[:len(rows)]


class InMesh:
  """A jitted function traced, lowered and run with `mesh` as the current mesh (kernels that
  run per shard, such as splash attention, read it), called and lowered like the function."""

  def __init__(self, mesh: Mesh, fn):
    self.mesh, self.fn = mesh, fn

  def __call__(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self.fn(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self.fn.lower(*args, **kwargs)
