"""Shared by the benchmark scripts: timing, device description, table and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def block(tree: Any) -> Any:
  return jax.block_until_ready(tree)


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
  """Compile-and-first-call time, then the median / min over `repeats` timed calls (seconds)."""
  start = time.perf_counter()
  block(fn())
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    block(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times)}


def time_alternating(fns: dict[str, Callable[[], Any]], repeats: int = 5
                     ) -> dict[str, dict[str, float]]:
  """Like time_call for several variants, timed in alternation (round r runs each once), so
  that a noisy machine's drift hits all of them alike."""
  out = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    block(fn())
    out[name] = {"first_s": time.perf_counter() - start, "times": []}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      block(fn())
      out[name]["times"].append(time.perf_counter() - start)
  return {name: {"first_s": r["first_s"], "median_s": statistics.median(r["times"]),
                 "min_s": min(r["times"])} for name, r in out.items()}


def run_steps(step: Callable, state: Any, batches: Sequence[Any], rng: Any) -> tuple[Any, float]:
  """`state, _ = step(state, batch, rng)` over `batches`, waited for: (state, seconds per step)."""
  start = time.perf_counter()
  metrics = None
  for batch in batches:
    state, metrics = step(state, batch, rng)
  block((state, metrics))
  return state, (time.perf_counter() - start) / max(len(batches), 1)


def measured_peak_tflops(dtype=jnp.float32, n: int = 2048) -> float:
  """Achievable peak of all devices: the best of 5 [n, n] @ [n, n] matmuls, in TFLOP/s."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  block(f(x))
  best = time_call(lambda: f(x), repeats=5)["min_s"]
  return 2 * n**3 / best / 1e12 * len(jax.devices())


def device_description() -> str:
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  cpu = platform.processor() or platform.machine()
  return (f"{len(jax.devices())} x {kind} ({dev.platform}); host {cpu}, {os.cpu_count()} cores; "
          f"jax {jax.__version__}")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> None:
  """A Markdown table (pastes into READMEs and issue notes as is)."""
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)

  print(f"\n### {title}\n\n{device_description()}, {datetime.date.today()}\n")
  print("| " + " | ".join(columns) + " |")
  print("|" + "|".join("---" for _ in columns) + "|")
  for row in rows:
    print("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
  print(flush=True)


def write_json(path: str | None, rows: Sequence[dict[str, Any]], **meta: Any) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"device": device_description(), "date": str(datetime.date.today()), **meta,
               "rows": list(rows)}, f, indent=1)
