"""Sample generations for the report: a few eval prompts answered by the base and the tuned model.

Written to RUN_DIR/samples.jsonl, one {"prompt", "reference", "base", "tuned"} per line,
which the report shows side by side. Greedy decoding, so the file is reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

from whetstone.errors import WhetstoneError
from whetstone.rundir import RunDir


def write_samples(run_dir: str | Path, n: int = 4, max_new_tokens: int = 96) -> Path:
    from whetstone.data.dataset import load_splits
    from whetstone.models.inference import generate_answers, load_for_inference

    run = RunDir.open(run_dir, flag="")
    config = run.config()
    train_records, eval_records, _ = load_splits(config.data, config.train.seed)
    chats = [r for r in (eval_records or train_records) if r.kind == "chat"
             and any(m.role == "assistant" for m in r.messages)][:n]
    if not chats:
        raise WhetstoneError(f"{run.path}: its data has no chat records with an assistant turn to sample prompts from.")
    prompts, references = [], []
    for record in chats:
        last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
        prompts.append([{"role": m.role, "content": m.content} for m in record.messages[:last]])
        references.append(record.messages[last].content)

    tuned_model, tokenizer = load_for_inference(run=str(run.path))
    tuned = generate_answers(tuned_model, tokenizer, prompts, max_new_tokens)
    if hasattr(tuned_model, "disable_adapter"):  # an adapter run: the base is the same model, adapter off
        with tuned_model.disable_adapter():
            base = generate_answers(tuned_model, tokenizer, prompts, max_new_tokens)
    else:
        base_model, base_tokenizer = load_for_inference(model=config.model.name)
        base = generate_answers(base_model, base_tokenizer, prompts, max_new_tokens)
    out = run.samples_path
    with open(out, "w") as f:
        for prompt, reference, b, t in zip(prompts, references, base, tuned):
            f.write(json.dumps({"prompt": prompt[-1]["content"], "reference": reference, "base": b, "tuned": t}) + "\n")
    return out
