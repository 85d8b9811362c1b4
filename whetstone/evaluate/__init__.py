"""Evaluation: did fine-tuning help, did the model forget, does it leak?

    loss.py         an objective's loss on a held-out set (the training loop's eval_loss)
    metrics.py      exact match, chrF/BLEU (sacrebleu), ROUGE (rouge-score), accuracy, macro-F1
    scoring.py      log-likelihood of candidate answers: label ranking, canary exposure
    harness.py      one model on one data set: loss, generation metrics, label ranking, per task
    fewshot.py      few-shot prompts: random or similar shots
    ladder.py       zero-shot vs K-shot vs tuned, on the same examples
    pair.py         a tuned model and its base, loaded once
    forgetting.py   the general-ability probe, before and after
    audit.py        memorization: extraction rate and canary exposure, against the base
    compare.py      base and tuned answers side by side
    final.py        what a training config asks for at the end of training
    commands.py     the `eval`, `audit` and `compare` verbs
"""
