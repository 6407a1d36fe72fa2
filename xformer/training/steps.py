"""The pure step functions: `train_step(state, batch, rng) -> (state, metrics)`, `eval_step`.

They know nothing of devices or tasks: `xformer.run` binds a loss function (`loss_sums` with the
run's task and model) and jits them once with the mesh's shardings.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from xformer.training import losses, projected_loss

Array = jax.Array
# loss_fn(params, batch, rng, step) -> token sums (losses.SUM_KEYS); rng None: no dropout.
LossFn = Callable[[Any, dict[str, Array], Array | None, Array | None], losses.Sums]


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


def loss_sums(params: Any, batch: dict[str, Array], rng: Array | None, step: Array | None, *,
              task, model, label_smoothing: float, fused: bool = True,
              chunk: int = 0, unroll_chunks: bool = False) -> losses.Sums:
  """The label-smoothed loss sums of a batch under `task`'s model call and loss inputs.

  Args:
    rng: dropout key; None evaluates deterministically.
    step: the step being computed (unused here; a `LossFn` may depend on it, as drills do).
    fused: `losses.fused_cross_entropy` (written-out gradient) instead of `cross_entropy`.
    chunk: > 0 projects to the vocabulary `chunk` target positions at a time, never holding the
      whole [B, T, V] logits: with `fused`, the loss's gradient is computed in the forward pass
      (`projected_loss`); without, autodiff recomputes each chunk (`losses.chunked`).
      losses.WHOLE_SEQUENCE (-1): the same in one chunk of the whole target length.
      unroll_chunks: without a loop (cost model).
  """
  del step
  loss = losses.fused_cross_entropy if fused else losses.cross_entropy
  targets, weights = task.loss_inputs(batch)
  kw = dict(deterministic=rng is None, rng=rng)
  if chunk:
    hidden = task.apply(model, params, batch, return_hidden=True, **kw)  # [B, T, D]
    chunk = hidden.shape[1] if chunk == losses.WHOLE_SEQUENCE else chunk
    if fused:  # The gradient in the forward pass, chunk by chunk: nothing recomputed.
      table, bias = model.apply({"params": params}, method="output_weights")
      return projected_loss.projected_cross_entropy(
          hidden.astype(table.dtype), table, bias, targets, weights, label_smoothing, chunk,
          model.cfg.logits_dtype, unroll=unroll_chunks)
    project = lambda h: model.apply({"params": params}, h, method="project")  # noqa: E731
    return losses.chunked(loss, hidden, project, targets, weights, label_smoothing, chunk,
                          unroll=unroll_chunks)
  return loss(task.apply(model, params, batch, **kw), targets, weights, label_smoothing)


def global_norm(tree) -> jax.Array:
  """sqrt of the sum of squares of every leaf, in float32 (optax renamed its own across the
  versions xformer supports: optax.global_norm -> optax.tree.norm)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch: dict[str, Array], rng: Array, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, schedule: Callable, grad_accum_steps: int = 1,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step on `batch` (split into `grad_accum_steps` micro-batches).

  The loss is the sum of `loss_fn` over all real target tokens of the whole batch divided by
  their number: accumulation gives exactly the full-batch gradient.

  With skip_nonfinite, a step whose loss or gradient is not finite leaves params and optimizer
  state unchanged and reports train/skipped = 1.
  """
  rng = jax.random.fold_in(rng, state.step)

  def objective(params, mb, r):
    sums = loss_fn(params, mb, r, state.step)
    return sums["loss"], sums

  def micro(i, mb):  # -> (grads, sums)
    return jax.grad(objective, has_aux=True)(state.params, mb, jax.random.fold_in(rng, i))

  if grad_accum_steps == 1:
    grads, sums = micro(0, batch)
  else:
    mbs = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

    def body(carry, inputs):
      return jax.tree.map(jnp.add, carry, micro(*inputs)), None

    first = jax.tree.map(lambda x: x[0], mbs)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro, 0, first))
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), mbs))

  weight = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree.map(lambda g: g / weight, grads)
  grad_norm = global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss = sums["loss"] / weight
  metrics = {"train/loss": loss, "train/nll": sums["nll"] / weight,
             "train/accuracy": sums["correct"] / weight, "train/tokens": sums["weight"],
             "train/grad_norm": grad_norm, "train/lr": schedule(state.step)}
  if skip_nonfinite:
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    metrics["train/skipped"] = 1.0 - ok.astype(jnp.float32)
  return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(params: Any, batch: dict[str, Array], *, loss_fn: LossFn) -> losses.Sums:
  """Token sums (loss, nll, correct, weight) of a batch, no dropout."""
  return loss_fn(params, batch, None, None)
