"""Safe defaults: sandboxed chat templates, safe YAML, no pickle unless asked."""

import pytest

from whetstone.config import load_config, read_yaml
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.errors import WhetstoneError

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__['os'].system('touch /tmp/whetstone-pwned') }}",
    "{% for m in messages %}{{ m.update({'role': 'x'}) }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_a_template_cannot_reach_python_internals(tiny_tokenizer, template, tmp_path):
    import copy
    import os

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = template
    record = Record("chat", "mem:1", messages=(Message("user", "hi"), Message("assistant", "hello")))
    with pytest.raises(WhetstoneError, match="the chat template tried something the sandbox forbids .* is unsafe"):
        render_record(record, tokenizer, None)
    assert not os.path.exists("/tmp/whetstone-pwned")


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['touch /tmp/whetstone-pwned']\n")
    with pytest.raises(WhetstoneError, match="not valid YAML"):
        read_yaml(path)


def test_trust_remote_code_and_pickle_are_off_by_default():
    config = load_config(None, ["data.train=x.jsonl"])
    assert config.model.trust_remote_code is False and config.model.allow_pickle is False
