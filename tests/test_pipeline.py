"""The grain pipeline: packing, checkpointable iteration, process shards, over-long examples."""

import jax
import jax.numpy as jnp
import numpy as np

from xformer import model as model_lib
from xformer import tasks
from xformer.data import pipeline
from xformer.data.tokenizer import BOS_ID, EOS_ID
from xformer.model import config as model_config
from xformer.training import losses

LENGTHS = pipeline.Lengths(48, 48)
TRANSLATION = tasks.get("translation")


def _encoded(ds, tok, split="train", eager=False):
  return pipeline.EncodedSource(ds.split(split), tok, ds.keys, eager=eager)


def _iterator(ds, tok, **kw):
  args = dict(task=TRANSLATION, lengths=LENGTHS, batch_size=8, seed=3)
  args.update(kw)
  return pipeline.train_iterator(_encoded(ds, tok), **args)


def test_batches_are_well_formed(translation_data):
  ds, tok = translation_data
  it, _ = _iterator(ds, tok)
  batch = next(it)
  assert set(batch) == {"inputs", "inputs_segment_ids", "inputs_positions", "targets_in",
                        "targets", "targets_segment_ids", "targets_positions"}
  for k, v in batch.items():
    assert v.shape == (8, 48) and v.dtype == np.int32, k
  seg, pos = batch["targets_segment_ids"], batch["targets_positions"]
  assert seg.max() > 1  # Packed: several examples per row.
  for row in range(8):
    for s in set(seg[row]) - {0}:
      where = seg[row] == s
      np.testing.assert_array_equal(pos[row][where], np.arange(where.sum()))  # Restart at 0.
      assert batch["targets_in"][row][where][0] == BOS_ID
      assert batch["targets"][row][where][-1] == EOS_ID
      np.testing.assert_array_equal(batch["targets_in"][row][where][1:],
                                    batch["targets"][row][where][:-1])  # Shifted by one.
  assert (batch["targets"][seg == 0] == 0).all()


def test_restored_iterator_continues_with_the_same_batches(translation_data):
  ds, tok = translation_data
  source = _encoded(ds, tok, eager=True)
  it, _ = pipeline.train_iterator(source, task=TRANSLATION, lengths=LENGTHS, batch_size=8,
                                  seed=3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  fresh, _ = pipeline.train_iterator(source, task=TRANSLATION, lengths=LENGTHS, batch_size=8,
                                     seed=3)  # A new object, as after a restart.
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_process_shards_are_disjoint_and_cover_the_epoch(translation_data):
  ds, tok = translation_data
  source = pipeline.EncodedSource([ds.split("train")[i] for i in range(40)], tok, ds.keys,
                                  eager=True)
  seen = []
  for p in range(2):
    it, _ = pipeline.train_iterator(source, task=TRANSLATION, lengths=LENGTHS, batch_size=1,
                                    seed=0, pack=False, process_index=p, process_count=2,
                                    prefetch=0)
    rows = [tuple(next(it)["inputs"][0]) for _ in range(20)]  # One epoch of this shard.
    assert len(set(rows)) == 20
    seen.append(set(rows))
  assert not seen[0] & seen[1]
  frame = pipeline.Frame(TRANSLATION, LENGTHS, "drop", pipeline.OverlongCounter())
  pad = pipeline.PadUnpacked(TRANSLATION.feature_lengths(LENGTHS))
  everything = {tuple(pad.map(frame.map(source[i]))["inputs"])
                for i in range(len(source))}
  assert seen[0] | seen[1] == everything


def test_overlong_examples_are_dropped_or_truncated_and_counted(translation_data):
  ds, tok = translation_data
  short = pipeline.Lengths(12, 12)
  for policy in ("drop", "truncate"):
    it, counter = pipeline.train_iterator(_encoded(ds, tok), task=TRANSLATION, lengths=short,
                                          batch_size=4, seed=0, overlong=policy, prefetch=0)
    batch = next(it)
    assert batch["inputs"].shape == (4, 12)
    summary = counter.summary()
    key = "dropped_overlong" if policy == "drop" else "truncated_overlong"
    assert summary[key] > 0 and summary["examples"] >= summary[key]


def test_eval_batches_cover_the_split_exactly(translation_data):
  ds, tok = translation_data
  batches, counter = pipeline.eval_batches(_encoded(ds, tok, "test", eager=True),
                                           task=TRANSLATION, lengths=LENGTHS, batch_size=300)
  batches = list(batches)
  real_rows = sum(int((b["targets_segment_ids"][:, 0] > 0).sum()) for b in batches)
  assert real_rows == len(ds.split("test")) == counter.summary()["examples"]
  assert all(b["inputs"].shape == (300, 48) for b in batches)  # Last one padded.


def test_packed_batch_gives_the_per_example_losses_of_unpacked_examples(translation_data):
  ds, tok = translation_data
  cfg = model_config.variant("tiny", vocab_size=tok.vocab_size, posemb="t5_bias", dropout=0.0)
  model = model_lib.Transformer(cfg)
  params = model_lib.init_params(model, jax.random.key(0))
  it, _ = _iterator(ds, tok, batch_size=2, prefetch=0)
  packed = next(it)
  apply = jax.jit(lambda batch: TRANSLATION.apply(model, params, batch))
  logits = apply(packed)
  per_token = -jnp.take_along_axis(jax.nn.log_softmax(logits), packed["targets"][..., None],
                                   -1)[..., 0]  # [B, T]
  # Each example alone, padded to the packed length (one compile), segment 1, positions 0...
  length = packed["targets"].shape[1]
  for row in range(2):
    seg = packed["targets_segment_ids"][row]
    for s in sorted(set(seg) - {0}):
      alone = {}
      for prefix in ("inputs", "targets"):
        mask = packed[f"{prefix}_segment_ids"][row] == s
        n = int(mask.sum())
        alone[f"{prefix}_segment_ids"] = np.pad(np.ones(n, np.int32), (0, length - n))[None]
        alone[f"{prefix}_positions"] = np.pad(np.arange(n, dtype=np.int32), (0, length - n))[None]
        alone[prefix] = np.pad(packed[prefix][row][mask], (0, length - n))[None]
        if prefix == "targets":
          alone["targets_in"] = np.pad(packed["targets_in"][row][mask], (0, length - n))[None]
      sums = losses.cross_entropy(apply(alone), alone["targets"], alone["targets_segment_ids"])
      np.testing.assert_allclose(float(per_token[row][seg == s].sum()), float(sums["nll"]),
                                 rtol=1e-5)
