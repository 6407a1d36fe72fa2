"""The token cache (data.token_cache): the same ids and batches as tokenizing in memory,
built once by concurrent processes, keyed so another tokenizer never reads stale ids."""

import multiprocessing

import numpy as np

from xformer import tasks
from xformer.data import datasets, pipeline, token_cache
from xformer.data import tokenizer as tokenizer_lib


def _build(args):
  split, tok_proto, keys, path = args
  tok = tokenizer_lib.Tokenizer(tok_proto)
  return token_cache.build(split, tok, keys, path, processes=1)


def test_cache_equals_in_memory_tokenization_and_builds_once(translation_data, tmp_path):
  ds, tok = translation_data
  split = ds.split("validation")
  path = str(tmp_path / token_cache.key(ds.fingerprint, tok.model_proto, "validation"))
  # Two processes build the same cache at once: both finish, one cache remains.
  ctx = multiprocessing.get_context("spawn")
  procs = [ctx.Process(target=_build, args=((list(split), tok.model_proto, ds.keys, path),))
           for _ in range(2)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(timeout=300)
    assert p.exitcode == 0
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".building_")]
  cache = token_cache.TokenCache(path)
  eager = pipeline.EncodedSource(split, tok, ds.keys, eager=True)
  assert len(cache) == len(eager) == len(split)
  for i in (0, 1, len(split) // 2, len(split) - 1):
    for a, b in zip(cache[i], eager[i]):
      np.testing.assert_array_equal(a, b)
      assert a.dtype == np.int32
  task = tasks.get("translation")
  kw = dict(task=task, lengths=pipeline.Lengths(32, 32), batch_size=8, seed=3, pack=True)
  from_cache = pipeline.train_iterator(cache, **kw)[0]
  from_memory = pipeline.train_iterator(eager, **kw)[0]
  for _ in range(3):
    a, b = next(from_cache), next(from_memory)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_cache_key_follows_tokenizer_and_data(translation_data):
  ds, tok = translation_data
  keys = {token_cache.key(ds.fingerprint, tok.model_proto, "train"),
          token_cache.key(ds.fingerprint + "x", tok.model_proto, "train"),
          token_cache.key(ds.fingerprint, tok.model_proto + b"x", "train"),
          token_cache.key(ds.fingerprint, tok.model_proto, "test")}
  assert len(keys) == 4
  assert isinstance(ds, datasets.Dataset)
