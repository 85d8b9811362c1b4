"""gkd: the generalised JSD against TRL's (skipped without trl) and by hand, lmbda's choice of answers, tiny
runs, and the checks on its config and teacher."""

import math
import shutil

import pytest
import torch
from prefkit import pref_config, read_metrics, write_jsonl

import whetstone.objectives.distill as distill
from whetstone.config import ConfigError
from whetstone.errors import WhetstoneError
from whetstone.objectives.distill import generalized_jsd
from whetstone.train.dispatch import train

RNG_ROWS = 24


def chat_rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "green", "paper"]
    return [{"messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(3)) + "?"},
                          {"role": "assistant", "content": "yes " * rng.randint(1, 3) + "good"}]} for _ in range(n)]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A second tiny model with the student's tokenizer (other weights: seed 1)."""
    from whetstone.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("teacher") / "model", seed=1)


@pytest.fixture
def gkd_files(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", chat_rows(RNG_ROWS, 1)),
            write_jsonl(tmp_path / "eval.jsonl", chat_rows(6, 2)))


def gkd_config(model_dir, teacher, files, *overrides):
    train_file, eval_file = files
    return pref_config(model_dir, "objective=gkd", f"objective.teacher={teacher}", f"data.train={train_file}",
                       f"data.eval={eval_file}", "data.max_length=64", "objective.max_new_tokens=8",
                       "train.batch_size=4", "train.max_steps=2", "method=lora", *overrides)


# ---------------------------------------------------------------------------
# The loss.


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_trl(beta, temperature, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    GKDTrainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer").GKDTrainer  # trl is test-only: skip without

    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 11, generator=generator) * 2
    teacher = torch.randn(3, 5, 11, generator=generator) * 2
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    mask[2, 1] = 0
    labels = torch.where(mask.bool(), 1, -100)
    expected = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    ours = generalized_jsd(student, teacher, mask, beta, temperature)  # (3, 5)
    assert float(ours.sum() / mask.sum()) == pytest.approx(float(expected), abs=1e-5)
    assert float(ours[0, 3:].abs().sum()) == 0.0  # masked tokens carry nothing
    assert float(expected) > 0.01  # random logits: far from a loss that is 0 whatever it computes


def test_generalized_jsd_by_hand():
    """2 tokens, 3 words: KL and JSD written out from the definitions."""
    student = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]])  # (1, 2, 3)
    teacher = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])

    def softmax(row):
        e = [math.exp(x) for x in row]
        return [x / sum(e) for x in e]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    for beta in (0.0, 0.3, 1.0):
        expected = []
        for t in range(2):
            s, p = softmax(student[0, t].tolist()), softmax(teacher[0, t].tolist())
            m = [beta * a + (1 - beta) * b for a, b in zip(p, s)]
            expected.append(kl(p, s) if beta == 0 else kl(s, p) if beta == 1 else
                            beta * kl(p, m) + (1 - beta) * kl(s, m))
        got = generalized_jsd(student, teacher, torch.ones(1, 2), beta)[0].tolist()
        assert got == pytest.approx(expected, rel=1e-5), beta
    # KL(P || S) of the first token, by hand: p = softmax(2, 1, 0), s = its reverse
    p = [math.exp(2) / (math.exp(2) + math.e + 1), math.e / (math.exp(2) + math.e + 1), 1 / (math.exp(2) + math.e + 1)]
    assert float(generalized_jsd(student, teacher, None, 0.0)[0, 0]) == pytest.approx(
        sum(a * math.log(a / b) for a, b in zip(p, p[::-1])), rel=1e-5)


# ---------------------------------------------------------------------------
# The rounds.


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_lmbda_picks_dataset_answers_or_student_samples(tiny_model_dir, teacher_dir, gkd_files, tmp_path,
                                                        monkeypatch, lmbda):
    calls = []
    real = distill.sample_completions

    def spy(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "sample_completions", spy)
    config = gkd_config(tiny_model_dir, teacher_dir, gkd_files, f"objective.lmbda={lmbda}", "train.max_steps=3")
    train(config, tmp_path / "run", progress=False)
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    assert [r["on_policy"] for r in rows] == [int(lmbda)] * 3
    assert calls == ([4] * 3 if lmbda == 1 else [])  # one sampling call per round, its 4 prompts; none at lmbda 0


def test_on_policy_draw_is_reproducible_and_near_lmbda(tiny_model_dir, teacher_dir, gkd_files):
    from whetstone.models import load_tokenizer

    config = gkd_config(tiny_model_dir, teacher_dir, gkd_files, "objective.lmbda=0.3")
    draws = distill.DistillRun.on_policy
    run = type("R", (), {"config": config})()  # on_policy reads only the config
    first = [draws(run, i) for i in range(400)]
    assert first == [draws(run, i) for i in range(400)]
    assert 0.22 < sum(first) / 400 < 0.38
    assert load_tokenizer(str(teacher_dir)).get_vocab() == load_tokenizer(str(tiny_model_dir)).get_vocab()


def test_tiny_run_finishes_with_finite_jsd_and_moves_toward_the_teacher(tiny_model_dir, teacher_dir, gkd_files,
                                                                         tmp_path):
    config = gkd_config(tiny_model_dir, teacher_dir, gkd_files, "train.grad_accum=2", "train.lr=1e-2")
    summary = train(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["step"] == 0 and math.isfinite(rows[0]["eval_jsd"]) and rows[0]["eval_jsd"] > 0
    steps = [r for r in rows if "jsd" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert math.isfinite(r["jsd"]) and r["jsd"] > 0 and r["on_policy"] in (0, 1) and r["response_length"] > 0
        assert r["loss"] == pytest.approx(r["jsd"], rel=1e-6)
    assert math.isfinite(summary["eval_jsd"]) and math.isfinite(summary["eval_loss"])
    assert summary["eval_jsd"] < 0.95 * summary["eval_jsd_before"]  # held-out divergence to the teacher falls (0.875x)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_a_teacher_of_itself_has_zero_divergence(tiny_model_dir, gkd_files, tmp_path):
    """The student as its own teacher: JSD 0 at every token before the first update (LoRA starts at B = 0)."""
    config = gkd_config(tiny_model_dir, tiny_model_dir, gkd_files, "train.max_steps=1")
    train(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["eval_jsd"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["jsd"] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------
# Checks.


def test_teacher_with_another_vocabulary_is_refused(tiny_model_dir, gkd_files, tmp_path):
    from transformers import AutoModelForCausalLM

    from whetstone.models import load_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = load_tokenizer(str(other))
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(8)])
    model = AutoModelForCausalLM.from_pretrained(other)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = gkd_config(tiny_model_dir, other, gkd_files)
    with pytest.raises(WhetstoneError, match="reads another vocabulary .*must share the student's tokenizer"):
        train(config, tmp_path / "run", progress=False)


def test_config_checks(tiny_model_dir, gkd_files):
    with pytest.raises(ConfigError) as info:
        pref_config(tiny_model_dir, "objective=gkd", f"data.train={gkd_files[0]}", "objective.beta=1.5",
                    "objective.lmbda=-0.1", "objective.temperature=0")
    message = str(info.value)
    assert "objective.teacher: gkd needs a teacher" in message
    assert "objective.beta: got 1.5" in message and "objective.lmbda: got -0.1" in message
    assert "objective.temperature: got 0" in message
    assert "needs at least one reward" not in message  # ppo/grpo's checks are not gkd's
    config = pref_config(tiny_model_dir, "objective=gkd", "objective.teacher=x", f"data.train={gkd_files[0]}")
    assert (config.objective.beta, config.objective.lmbda, config.objective.temperature) == (0.5, 0.5, 1.0)
    assert pref_config(tiny_model_dir, "objective=dpo", f"data.train={gkd_files[0]}").objective.beta == 0.1
    config = pref_config(tiny_model_dir, "objective=gkd", "objective.teacher=x", "objective.beta=0",
                         f"data.train={gkd_files[0]}")
    assert config.objective.beta == 0.0  # forward KL: allowed for gkd, where dpo needs beta > 0
    with pytest.raises(ConfigError, match="objective.teacher and objective.lmbda are for objective: gkd"):
        pref_config(tiny_model_dir, "objective=sft", "objective.teacher=x", f"data.train={gkd_files[0]}")
