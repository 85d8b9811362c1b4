"""Tool-using rollouts with a scripted policy: the turn structure and the masks are exact.

The tokenizer is Qwen2.5's real template (hermes tool calls: <tool_call>{...}</tool_call>) on the embedded
vocabulary (tests/families.py). The policy is a script of replies, so every token of the completion is known.
"""

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from families import FAMILIES, family_tokenizer  # noqa: E402

from whetstone.data.render import render_prompt  # noqa: E402
from whetstone.objectives.tool_rollouts import rollout_tensors, tool_result_ids, tool_rollout  # noqa: E402
from whetstone.tools import Tool, calculator, load_tools, run_tool  # noqa: E402

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call><|im_end|>'


@pytest.fixture(scope="module")
def tokenizer():
    return family_tokenizer(FAMILIES["qwen2"])


@pytest.fixture(scope="module")
def tools():
    return load_tools(["whetstone.tools:calculator"])


def scripted(tokenizer, replies: list[list[str]]):
    """A policy that answers completion i's k-th turn with replies[i][k]; records the contexts it was given."""
    seen = []

    def generate(contexts, max_new_tokens):
        seen.append([list(c) for c in contexts])
        out = []
        for context in contexts:
            row = next(i for i, p in enumerate(scripted.prompts) if context[: len(p)] == p)
            turn = scripted.turn[row]
            scripted.turn[row] += 1
            out.append(tokenizer(replies[row][turn], add_special_tokens=False)["input_ids"][:max_new_tokens])
        return out

    scripted.seen = seen
    return generate


def prompt(tokenizer, tools, question):
    messages = [{"role": "user", "content": question}]
    text = render_prompt(tokenizer, messages, tools=[t.schema for t in tools.values()])
    return tokenizer(text, add_special_tokens=False)["input_ids"], messages


def test_a_call_its_result_and_the_answer_render_as_the_template_does(tokenizer, tools):
    ids, messages = prompt(tokenizer, tools, "What is 12 * 7?")
    scripted.prompts, scripted.turn = [ids], [0]
    generate = scripted(tokenizer, [[CALL % "12 * 7", "It is 84.<|im_end|>"]])
    (turn,) = tool_rollout([(ids, messages)], generate, tokenizer, tools, max_new_tokens=200, max_tool_calls=2,
                           timeout=5.0)
    assert turn.calls == 1 and turn.done
    assert [sampled for _, sampled in turn.segments] == [True, False, True]
    call, result, answer = (tokenizer.decode(seg) for seg, _ in turn.segments)
    assert call == CALL % "12 * 7" and answer == "It is 84.<|im_end|>"
    # The whole conversation, tokens as sampled plus the spliced result, is what the template writes for it
    # (the template adds a newline after the final <|im_end|>).
    conversation = messages + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {
            "name": "calculator", "arguments": {"expression": "12 * 7"}}}]},
        {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "84"},
        {"role": "assistant", "content": "It is 84."}]
    full = tokenizer.apply_chat_template(conversation, tools=[t.schema for t in tools.values()], tokenize=False)
    assert tokenizer.decode(ids + turn.ids()) + "\n" == full
    assert "<tool_response>\n84\n</tool_response>" in result
    # The second turn was sampled after reading the result: its context is the prompt, the call and the result.
    assert scripted.seen[1] == [ids + turn.segments[0][0] + turn.segments[1][0]]


def test_the_mask_covers_sampled_tokens_only(tokenizer, tools):
    prompts = [prompt(tokenizer, tools, q) for q in ("What is 2 + 2?", "Say hi.")]
    scripted.prompts, scripted.turn = [p for p, _ in prompts], [0, 0]
    generate = scripted(tokenizer, [[CALL % "2 + 2", "4<|im_end|>"], ["hi<|im_end|>"]])
    turns = tool_rollout(prompts, generate, tokenizer, tools, max_new_tokens=200, max_tool_calls=1, timeout=5.0)
    t = rollout_tensors([p for p, _ in prompts], turns, tokenizer.pad_token_id, "cpu")
    width = t["n_prompt"]
    call, result, answer = (len(seg) for seg, _ in turns[0].segments)
    expected = torch.zeros_like(t["mask"])
    expected[0, :call] = 1
    expected[0, call + result : call + result + answer] = 1
    expected[1, : len(turns[1].segments[0][0])] = 1
    assert torch.equal(t["mask"], expected)
    # The result tokens are read (attention 1) but not trained; prompts are left-padded to one width.
    assert t["attention_mask"][0, width : width + call + result + answer].all()
    assert t["attention_mask"][1].sum() == len(prompts[1][0]) + len(turns[1].segments[0][0])
    assert t["input_ids"][0, width + call : width + call + result].tolist() == turns[0].segments[1][0]


def test_calls_beyond_max_tool_calls_are_not_run(tokenizer, tools):
    ids, messages = prompt(tokenizer, tools, "Add things.")
    scripted.prompts, scripted.turn = [ids], [0]
    generate = scripted(tokenizer, [[CALL % "1 + 1", CALL % "2 + 2", "never asked"]])
    (turn,) = tool_rollout([(ids, messages)], generate, tokenizer, tools, max_new_tokens=300, max_tool_calls=1,
                           timeout=5.0)
    assert turn.calls == 1 and [s for _, s in turn.segments] == [True, False, True]
    assert tokenizer.decode(turn.segments[2][0]) == CALL % "2 + 2"  # sampled, kept, trained; not run


def test_the_budget_counts_tool_results(tokenizer, tools):
    ids, messages = prompt(tokenizer, tools, "What is 3 * 3?")
    scripted.prompts, scripted.turn = [ids], [0]
    generate = scripted(tokenizer, [[CALL % "3 * 3", "9<|im_end|>"]])
    call_length = len(tokenizer(CALL % "3 * 3", add_special_tokens=False)["input_ids"])
    (turn,) = tool_rollout([(ids, messages)], generate, tokenizer, tools, max_new_tokens=call_length + 5,
                           max_tool_calls=1, timeout=5.0)
    assert turn.length == call_length + 5 and [s for _, s in turn.segments] == [True, False]


def test_tool_result_tokens_follow_the_sampled_end_of_turn(tokenizer, tools):
    messages = [{"role": "user", "content": "q"}]
    assistant = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "1"}}}]}
    result = [{"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "1"}]
    between = tokenizer.decode(tool_result_ids(tokenizer, messages, assistant, result, []))
    assert between == "\n<|im_start|>user\n<tool_response>\n1\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("expression, answer", [
    ("(12 + 30) * 4", "168"), ("7 / 2", "3.5"), ("2 ** 10", "1024"), ("-3 + 5", "2"), ("10 // 3", "3"),
    ("3 × 4", "12"), ("2^3", "8"), ("1 / 0", "error: division by zero"),
])
def test_calculator(expression, answer):
    assert calculator(expression) == answer


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "open('/etc/passwd')", "x + 1",
                                        "9 ** 9999"])
def test_calculator_refuses_anything_but_arithmetic(expression):
    assert calculator(expression).startswith("error:")


def test_a_slow_tool_is_stopped_and_a_tool_cannot_start_programs():
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "late"

    def shell(command: str) -> str:
        import os

        return str(os.system(command))

    start = time.perf_counter()
    assert run_tool(Tool("slow", slow, {}), {"seconds": 30}, timeout=0.5) == "error: slow did not answer within 0.5 s"
    assert time.perf_counter() - start < 10
    assert run_tool(Tool("slow", slow, {}), {"seconds": 0}, timeout=5) == "late"
    assert run_tool(Tool("shell", shell, {}), {"command": "true"}, timeout=5).startswith("error: PermissionError")
    assert run_tool(None, {}, timeout=1) == "error: no such tool"
    assert run_tool(Tool("calculator", calculator, {}), {"wrong": 1}, timeout=5).startswith("error: TypeError")


def test_the_calculator_schema_comes_from_its_docstring(tools):
    schema = tools["calculator"].schema["function"]
    assert schema["name"] == "calculator"
    assert schema["parameters"]["required"] == ["expression"]
    assert schema["parameters"]["properties"]["expression"]["type"] == "string"


def test_a_grpo_run_calls_the_calculator_and_logs_it(tmp_path, monkeypatch):
    """A whole grpo run on a tiny Qwen2.5-template model: the rollouts are scripted (a random model would never
    call a tool) and everything else is real: the tool runs, its result is read, and the update trains on the
    sampled tokens only."""
    from prefkit import pref_config, read_metrics, write_jsonl

    from families import build_family
    from whetstone.objectives import online
    from whetstone.train.dispatch import train

    model_dir = build_family(FAMILIES["qwen2"], tmp_path / "model")
    data = write_jsonl(tmp_path / "sums.jsonl", [{"prompt": f"What is {a} + {b}?", "reference": str(a + b)}
                                                 for a, b in [(3, 4), (10, 5), (2, 9), (6, 6)]])
    tokenizer = family_tokenizer(FAMILIES["qwen2"])
    results = []

    def scripted_sampler(model, tokenizer_, temperature, top_p, device):
        def generate(contexts, max_new_tokens):
            out = []
            for k, context in enumerate(contexts):
                text = tokenizer.decode(context)
                if "<tool_response>" not in text.rsplit("<|im_start|>user", 1)[-1]:
                    question = text.rsplit("What is ", 1)[1].split("?")[0]
                    reply = CALL % question
                else:
                    result = text.rsplit("<tool_response>\n", 1)[1].split("\n")[0]
                    results.append(result)
                    reply = (result if k % 2 == 0 else "0") + "<|im_end|>"  # half of each group right
                out.append(tokenizer(reply, add_special_tokens=False)["input_ids"][:max_new_tokens])
            return out

        return generate

    monkeypatch.setattr(online, "policy_sampler", scripted_sampler)
    config = pref_config(model_dir, "objective=grpo", f"data.train={data}", "data.max_length=700",
                         "objective.reward=[{function: 'whetstone.rewards.verifiable:numeric_match'}]",
                         "objective.tools=['whetstone.tools:calculator']", "objective.max_tool_calls=1",
                         "objective.num_generations=2", "objective.rollout_batch_size=2",
                         "objective.max_new_tokens=96", "train.batch_size=4", "train.max_steps=2")
    summary = train(config, tmp_path / "run", progress=False)
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    assert summary["steps"] == 2 and len(rows) == 2
    assert [r["tool_calls"] for r in rows] == [1.0, 1.0]
    assert [r["reward/numeric_match"] for r in rows] == [0.5, 0.5]
    assert all(abs(r["loss"]) < 10 and r["kl"] is not None for r in rows)
    assert sorted(results) == sorted(["7", "15", "11", "12"] * 2)  # every prompt's group ran the calculator
