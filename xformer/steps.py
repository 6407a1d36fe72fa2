"""The pure step functions: `train_step(state, batch, rng) -> (state, metrics)`, `eval_step`.

They know nothing of devices: `xformer.run` jits them once with the mesh's shardings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from xformer import losses
from xformer import model as model_lib

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


def apply_model(model, params: Any, batch: dict[str, Array], deterministic: bool = True,
                rng: Array | None = None, **kwargs) -> Array:
  """Logits [B, T, V] for a (packed or padded) batch of either task."""
  rngs = None if rng is None else {"dropout": rng}
  if isinstance(model, model_lib.Transformer):
    return model.apply({"params": params}, batch["inputs"], batch["targets_in"],
                       src_positions=batch["inputs_positions"],
                       tgt_positions=batch["targets_positions"],
                       src_segments=batch["inputs_segment_ids"],
                       tgt_segments=batch["targets_segment_ids"], deterministic=deterministic,
                       rngs=rngs, **kwargs)
  return model.apply({"params": params}, batch["targets_in"],
                     positions=batch["targets_positions"], segments=batch["targets_segment_ids"],
                     deterministic=deterministic, rngs=rngs, **kwargs)


@dataclasses.dataclass(frozen=True)
class Faults:
  """Deliberate failures for drills and tests (config.faults). Steps count from 1.

  The loss (hence every gradient) of steps nan_at_step .. nan_at_step + nan_steps - 1 is NaN;
  that of spike_at_step is multiplied by `spike` (a gradient spike of that factor).
  """

  nan_at_step: int = -1
  nan_steps: int = 1
  spike_at_step: int = -1
  spike: float = 1e6

  def loss_scale(self, step: Array) -> Array | None:
    if self.nan_at_step < 0 and self.spike_at_step < 0:
      return None
    nan = (step >= self.nan_at_step) & (step < self.nan_at_step + self.nan_steps)
    scale = jnp.where(step == self.spike_at_step, self.spike, 1.0)
    return jnp.where(nan & (self.nan_at_step >= 0), jnp.nan, scale)


def _sums(params, model, batch, rng, label_smoothing, deterministic, scale=None, loss_chunk=0):
  weights = batch["targets_segment_ids"] > 0
  if loss_chunk:
    hidden = apply_model(model, params, batch, deterministic, rng, return_hidden=True)
    sums = losses.chunked_cross_entropy(
        hidden, model_lib.output_projection(model.cfg, params), batch["targets"], weights,
        label_smoothing, loss_chunk)
  else:
    logits = apply_model(model, params, batch, deterministic, rng)
    sums = losses.cross_entropy(logits, batch["targets"], weights, label_smoothing)
  if scale is not None:
    sums = {**sums, "loss": sums["loss"] * scale, "nll": sums["nll"] * scale}
  return sums["loss"], sums


def train_step(state: TrainState, batch: dict[str, Array], rng: Array, *, model,
               tx: optax.GradientTransformation, schedule: Callable, label_smoothing: float,
               grad_accum_steps: int = 1,
               skip_nonfinite: bool = False, faults: Faults | None = None,
               loss_chunk: int = 0) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step on `batch` (split into `grad_accum_steps` micro-batches).

  The loss is the label-smoothed cross-entropy summed over all real target tokens of the whole
  batch, divided by their number: accumulation gives exactly the full-batch gradient.

  loss_chunk > 0 computes the loss `loss_chunk` target positions at a time without keeping the
  whole [B, T, V] logits (large vocabularies; see losses.chunked_cross_entropy).

  With skip_nonfinite, a step whose loss or gradient is not finite leaves params and optimizer
  state unchanged and reports train/skipped = 1.
  """
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(_sums, has_aux=True)
  scale = faults.loss_scale(state.step + 1) if faults else None

  def micro(i, mb):
    (_, sums), grads = grad_fn(state.params, model, mb, jax.random.fold_in(rng, i),
                               label_smoothing, False, scale, loss_chunk)
    return grads, sums

  if grad_accum_steps == 1:
    grads, sums = micro(0, batch)
  else:
    mbs = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

    def body(carry, inputs):
      i, mb = inputs
      grads, sums = micro(i, mb)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: micro(0, jax.tree.map(
        lambda x: x[0], mbs))))
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), mbs))

  weight = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree.map(lambda g: g / weight, grads)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss = sums["loss"] / weight
  metrics = {"train/loss": loss, "train/nll": sums["nll"] / weight,
             "train/accuracy": sums["correct"] / weight, "train/tokens": sums["weight"],
             "train/grad_norm": grad_norm, "train/lr": schedule(state.step)}
  if skip_nonfinite:
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params = jax.tree.map(lambda new, old: jnp.where(ok, new, old), params, state.params)
    opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), opt_state,
                             state.opt_state)
    metrics["train/skipped"] = 1.0 - ok.astype(jnp.float32)
  return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(params: Any, batch: dict[str, Array], *, model,
              label_smoothing: float) -> dict[str, Array]:
  """Token sums (loss, nll, correct, weight) of a batch, no dropout."""
  return _sums(params, model, batch, None, label_smoothing, True)[1]
