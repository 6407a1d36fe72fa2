"""Each config section is validated by the module that defines it, through config_lib.validate,
before any data is read: one bad value per section, and the message names the field."""

import os

import pytest

from xformer import config_lib, errors

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("override, message", [
    ("data.dataset=xformer_pydoc", "is a lm dataset"),
    ("data.test_split=dev", "data.test_split='dev'"),
    ("data.on_bad_line=ignore", "data.on_bad_line='ignore' is not valid"),
    ("data.overlong=clip", "data.overlong='clip' is not valid"),
    ("tokenizer.model_type=word", "tokenizer.model_type='word' is not valid"),
    ("tokenizer.vocab_size=4", "tokenizer.vocab_size must be >= 8"),
    ("optimizer.schedule=linear", "optimizer.schedule='linear' is not valid"),
    ("optimizer.warmup_steps=-1", "optimizer.warmup_steps must be >= 0"),
    ("decode.beam_size=0", "decode.beam_size must be >= 1"),
    ("decode.max_extra=-2", "decode.max_extra must be >= 0"),
    ("nan_policy=ignore", "nan_policy='ignore' is not valid"),
    ("profile_steps=3", "profile_steps"),
    ("loss_chunk=7", "loss_chunk=7 must be 0 (no chunks)"),
    ("loss_chunk=-2", "-1 (one chunk of the whole target length)"),
    ("grad_accum_steps=3", "not divisible by grad_accum_steps=3"),
])
def test_a_bad_value_in_any_section_fails_validation_naming_it(override, message):
  config = config_lib.load_file(os.path.join(CONFIGS, "default.py"), overrides=[override])
  with pytest.raises(errors.UserError, match=None) as raised:
    config_lib.validate(config)
  assert message in str(raised.value)


def test_the_shipped_configs_validate():
  for name in ("default", "lm_default", "wmt_base", "wmt_big", "lm1b"):
    config_lib.validate(config_lib.load_file(os.path.join(CONFIGS, f"{name}.py")))
