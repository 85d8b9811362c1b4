"""objective.engine: vllm. On CPU, vllm is a fake module that records what whetstone asks of it (vLLM's own API:
LLM, SamplingParams, TokensPrompt, apply_model, reset_prefix_cache); the cuda-marked test runs the real vLLM where
it is installed (bench/gpu_check.sh's `pytest -m cuda` stage)."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import subprocess
import sys
import types

import pytest
import torch
from prefkit import pref_config, prompt_rows, read_metrics, write_jsonl
from transformers import AutoModelForCausalLM

from whetstone.config import ConfigError
from whetstone.data.render import stop_ids
from whetstone.errors import WhetstoneError
from whetstone.models.forward import unwrap
from whetstone.objectives import online, vllm_engine
from whetstone.objectives.vllm_engine import VLLMEngine, checkpoint_weights, require_vllm


class FakeLLM:
    """vllm.LLM as whetstone uses it; `script(ids, row)` gives each prompt's output token ids."""

    script = None
    made: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs, self.events, self.generated, self.loaded = kwargs, [], [], []
        FakeLLM.made.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert not use_tqdm and len(prompts) == len(sampling_params)
        self.events.append("generate")
        self.generated.append((prompts, sampling_params))
        outputs = [FakeLLM.script(p["prompt_token_ids"], row) for row, p in enumerate(prompts)]
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tuple(ids))]) for ids in outputs]

    def apply_model(self, func):
        self.events.append("apply_model")
        model = types.SimpleNamespace(load_weights=lambda weights: self.loaded.append(
            [(name, tensor.clone()) for name, tensor in weights]))
        return [func(model)]

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    module.TokensPrompt = lambda **kwargs: dict(kwargs)  # a TypedDict in vLLM: a plain dict at run time
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test; the engine sets "0"
    FakeLLM.made, FakeLLM.script = [], None
    return module


def engine(**overrides) -> VLLMEngine:
    settings = dict(dtype=torch.bfloat16, seed=3, stops=[7, 9], temperature=0.7, top_p=0.9, max_model_len=32,
                    gpu_memory_utilization=0.25) | overrides
    return VLLMEngine("models/m", **settings)


def test_the_engine_is_one_in_process_llm_of_the_policys_checkpoint(fake_vllm):
    import os

    engine()
    (llm,) = FakeLLM.made
    assert llm.kwargs == {"model": "models/m", "revision": None, "trust_remote_code": False, "dtype": "bfloat16",
                          "seed": 3, "max_model_len": 32, "gpu_memory_utilization": 0.25, "enforce_eager": True}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # so apply_model reaches the model in this process


def test_generate_sends_token_ids_samples_as_the_hf_path_and_cuts_after_the_first_stop(fake_vllm):
    FakeLLM.script = lambda ids, row: [[1, 2, 9, 4, 7], [5, 5, 5], [7, 9]][row]
    contexts = [[11, 12, 13], list(range(30)), [4] * 5]
    out = engine().generate(contexts, 8)
    assert out == [[1, 2, 9], [5, 5, 5], [7]]  # through the first stop, whichever it is; no stop: all of it
    (prompts, params), = FakeLLM.made[0].generated
    assert [p["prompt_token_ids"] for p in prompts] == contexts
    common = {"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
              "stop_token_ids": [7, 9], "ignore_eos": True, "detokenize": False, "seed": None}
    # max_tokens: max_new_tokens, or what data.max_length (max_model_len) leaves after a long context
    assert [p.kwargs for p in params] == [common | {"max_tokens": 8}, common | {"max_tokens": 2},
                                          common | {"max_tokens": 8}]


def test_a_seeded_generate_fixes_each_rows_sample(fake_vllm):
    FakeLLM.script = lambda ids, row: [1, 7]
    engine().generate([[1], [2], [3]], 4, seed=100)
    (_, params), = FakeLLM.made[0].generated
    assert [p.kwargs["seed"] for p in params] == [100, 101, 102]


def _tiny_policy(model_dir, method: str):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if method != "full":  # random A and B (peft starts B at 0, which would make the merge trivial)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                            use_dora=method == "dora", init_lora_weights=False)
        model = get_peft_model(model, config)
    unwrap(model).v_head = torch.nn.Linear(unwrap(model).config.hidden_size, 1)  # ppo's value head
    return model


@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_sync_sends_every_checkpoint_weight_with_the_adapter_merged(fake_vllm, tiny_model_dir, method):
    model = _tiny_policy(tiny_model_dir, method)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    expected = copy.deepcopy(model)
    del unwrap(expected).v_head  # whetstone's, not the checkpoint's
    if method != "full":
        expected = expected.merge_and_unload()  # peft's own merge: the reference
    expected = dict(expected.named_parameters())  # tied weights once, as the checkpoint holds them

    llm = engine()
    llm.sync(model)
    (sent,) = FakeLLM.made[0].loaded
    assert [name for name, _ in sent] == list(expected)  # HF names: no base_model.model., .base_layer, lora_*
    for name, tensor in sent:
        assert torch.equal(tensor, expected[name]), name
    assert FakeLLM.made[0].events == ["apply_model", "reset_prefix_cache"]  # no stale prefix KV after a sync
    # The policy itself is untouched: no merge left in it, no weight rounded by a merge and an unmerge.
    after = dict(model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    if method != "full":  # the adapter moved the merged layers
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        name = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(expected[name], base.get_parameter(name))


def test_checkpoint_weights_of_a_plain_model_are_its_named_parameters(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    sent = list(checkpoint_weights(model))
    assert [(n, t.data_ptr()) for n, t in sent] == [(n, p.data_ptr()) for n, p in model.named_parameters()]


def _grpo(model_dir, *overrides):
    return pref_config(model_dir, "objective=grpo", "data.train=x", "objective.reward=[{function: m:f}]",
                       "objective.engine=vllm", *overrides)


def test_config_refuses_vllm_where_it_cannot_run(tiny_model_dir):
    with pytest.raises(ConfigError) as error:
        _grpo(tiny_model_dir, "train.device=cpu", "method.name=qlora", "objective.vllm_gpu_memory_utilization=1.5")
    text = str(error.value)
    assert "objective.engine: vllm runs on a CUDA GPU, but train.device is 'cpu'" in text
    assert "objective.engine: vllm with method qlora" in text
    assert "objective.vllm_gpu_memory_utilization: got 1.5" in text
    with pytest.raises(ConfigError, match="objective.engine: vllm samples the rollouts of ppo and grpo"):
        pref_config(tiny_model_dir, "objective=dpo", "data.train=x", "objective.engine=vllm")
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization is set, but objective.engine is 'hf'"):
        pref_config(tiny_model_dir, "objective=grpo", "data.train=x", "objective.reward=[{function: m:f}]",
                    "objective.vllm_gpu_memory_utilization=0.5")
    _grpo(tiny_model_dir, "objective.tools=['whetstone.tools:calculator']")  # tools sample through it too


def test_without_cuda_or_without_vllm_the_run_stops_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    from whetstone.train.dispatch import train

    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(4, 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WhetstoneError, match="objective.engine: vllm samples on a CUDA GPU, and torch sees none"):
        train(_grpo(tiny_model_dir, f"data.train={data}"), tmp_path / "run", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # what find_spec reports for a package that is not installed
    with pytest.raises(WhetstoneError, match=r"needs the vllm package, which is not installed .*: pip install vllm"):
        require_vllm()


def test_importing_whetstone_does_not_import_vllm():
    code = ("import sys, whetstone.cli, whetstone.train.loop, whetstone.objectives.online, "
            "whetstone.objectives.vllm_engine; print('vllm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


REWARD_FILE = '''
def says_yes(prompts, completions, references):
    return [float(c == "yes") for c in completions]
'''


def test_a_grpo_run_samples_with_the_engine_and_syncs_it_before_each_sample(tmp_path, tiny_model_dir,
                                                                           tiny_tokenizer, fake_vllm, monkeypatch):
    """Two rounds on the tiny model: every rollout is the engine's (scripted: half of each group says yes),
    and vLLM holds the policy's weights whenever it samples: the starting weights, then each round's update."""
    from peft import PeftModel

    from whetstone.train.dispatch import train

    monkeypatch.setattr(online, "require_vllm", lambda: None)  # this machine has no CUDA; the fake needs none
    stop = stop_ids(tiny_tokenizer)[0]
    answer = {0: tiny_tokenizer("yes", add_special_tokens=False)["input_ids"],
              1: tiny_tokenizer("no no", add_special_tokens=False)["input_ids"]}
    FakeLLM.script = lambda ids, row: answer[row % 2] + [stop, 5, 6]  # vLLM stops at the stop; the cut shows it
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(8, 3))
    config = _grpo(tiny_model_dir, f"data.train={data}", "data.eval_fraction=0.25", "train.max_steps=2",
                   f"objective.reward=[{{function: '{tmp_path / 'rewards.py'}:says_yes'}}]", "objective.kl_coef=0.0",
                   "objective.num_generations=2", "objective.rollout_batch_size=2", "train.batch_size=4",
                   "objective.max_new_tokens=8", "train.lr=1e-2")
    train(config, tmp_path / "run", progress=False)

    (llm,) = FakeLLM.made
    assert llm.kwargs["seed"] == 0 and llm.kwargs["max_model_len"] == config.data.max_length
    # eval before training, round 1, round 2, the final eval: a sync before every sample that follows a change
    assert llm.events == ["apply_model", "reset_prefix_cache", "generate", "generate", "apply_model",
                          "reset_prefix_cache", "generate", "apply_model", "reset_prefix_cache", "generate"]
    train_prompts = [params for prompts, params in llm.generated if params[0].kwargs["seed"] is None]
    assert len(train_prompts) == 2 and all(len(p) == 4 for p in train_prompts)  # 2 prompts x 2 generations
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    expected_length = (len(answer[0]) + len(answer[1])) / 2 + 1  # each completion through its stop token
    assert [r["response_length"] for r in rows] == [expected_length] * 2
    assert [r["reward"] for r in rows] == [0.5, 0.5]
    # vLLM's weights: the base at the start (LoRA's B is 0), the trained policy at the end
    first, last = dict(llm.loaded[0]), dict(llm.loaded[-1])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    trained = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "run" / "adapter")).merge_and_unload()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first[name], base.get_parameter(name))
    assert not torch.equal(last[name], first[name])
    for key, value in trained.named_parameters():
        assert torch.equal(last[key], value), key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="needs CUDA and the vllm package")
def test_vllm_rollouts_on_the_embedded_model_and_the_weights_follow_the_policy(tmp_path, monkeypatch):
    """A 2-round grpo run with the real vLLM: the rollouts are non-empty, and after each sync vLLM's log-probs of
    a fixed text are the policy's (to bf16 rounding), while the large learning rate moves them far more."""
    from whetstone.models import load_tokenizer
    from whetstone.train.dispatch import train

    (tmp_path / "rewards.py").write_text(REWARD_FILE.replace('c == "yes"', '"yes" in c.lower()'))
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(16, 3))
    config = pref_config("smollm2-135m-instruct", "objective=grpo", f"data.train={data}", "data.eval_fraction=0.25",
                         "objective.engine=vllm", "train.precision=bf16", "train.max_steps=2", "train.lr=2e-2",
                         f"objective.reward=[{{function: '{tmp_path / 'rewards.py'}:says_yes'}}]",
                         "objective.kl_coef=0.0", "objective.num_generations=4", "objective.rollout_batch_size=4",
                         "train.batch_size=16", "objective.max_new_tokens=16")
    fixed = load_tokenizer(config.model)("The river ran past the old stone mill, and the answer was yes.",
                                         add_special_tokens=False)["input_ids"]
    seen = []
    real_sync = VLLMEngine.sync

    def sync_and_score(self, model):
        real_sync(self, model)
        seen.append((_vllm_logprobs(self, fixed), _policy_logprobs(model, fixed)))

    monkeypatch.setattr(VLLMEngine, "sync", sync_and_score)
    train(config, tmp_path / "run", progress=False)
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    assert len(rows) == 2 and all(r["response_length"] >= 1 for r in rows)
    assert len(seen) == 3  # the start, after round 1, after round 2 (before the final eval)
    moved = float((seen[-1][1] - seen[0][1]).abs().mean())  # how far the policy went
    errors = [float((vllm - policy).abs().mean()) for vllm, policy in seen]
    print(f"vLLM vs policy log-probs after each sync: {errors}; the policy moved {moved:.3f}")
    assert moved > 0.05 and max(errors) < 0.3 * moved  # an unsynced vLLM would be `moved` away


def _vllm_logprobs(engine: VLLMEngine, ids: list[int]) -> torch.Tensor:
    """vLLM's log-probs (of its raw logits) of ids[1:], each given the ids before it."""
    from vllm import SamplingParams, TokensPrompt

    (out,) = engine.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                 SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0), use_tqdm=False)
    return torch.tensor([entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])])


@torch.no_grad()
def _policy_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=torch.tensor([ids], device="cuda")).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:], device="cuda")[:, None])[:, 0].cpu()
