"""Human feedback: sample answers, let people judge them in a local page, export training data.

    whetstone label prepare   prompts -> TASKS.jsonl (a prompt and two answers per task)   prepare.py
    whetstone label serve     TASKS.jsonl -> a page on 127.0.0.1 -> LABELS.jsonl            server.py, page.html
    whetstone label stats     LABELS.jsonl -> counts, position bias, win rates, Cohen's kappa  stats.py
    whetstone label export    LABELS.jsonl -> preference | kto | sft records                  export.py

store.py owns both files on disk: the task file, and the append-only label log whose
replay gives every annotator's current judgements (see docs/label.md).
"""
