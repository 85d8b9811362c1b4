"""The peer side of bench/peer.py: TRL + PEFT on the same model, data and settings.

Runs inside the benchmark's own virtual environment (trl, peft, transformers, torch; no
whetstone), in a fresh process, and prints one JSON line:

    {"tokens": real (non-padding) tokens trained on, "seconds": wall time of trainer.train(),
     "tokens_per_s": ..., "peak_rss_mb": this process's peak RSS, "losses": [per-step loss]}

    python bench/peer_trl.py sft|dpo --model HF_DIR --data FILE.jsonl --out DIR --steps N
        --batch-size 8 --max-length 256 --lr 2e-4 --r 16 --alpha 32 [--gradient-checkpointing]

Everything not named here is TRL's default: TRL loads the model from its directory itself (the
dtype its config.json names), trains under bf16 autocast (`bf16` defaults to true) and with
gradient checkpointing unless --no-gradient-checkpointing. What a fair comparison has to pin:
a constant learning rate without warmup (whetstone runs the same), no saving or evaluation
during training, data loading in this process, and the records read in file order
(bench/peer.py writes them in the order whetstone draws them, so both tools train on the same
batches). --fp32 turns bf16 off, for a comparison at whetstone's fp32.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def own_peak_mb() -> float:
    """VmHWM, as whetstone's summary reports it: ru_maxrss would include the parent's peak (fork + exec)."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmHWM"].split()[0]) / 1024 if "VmHWM" in status else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def counting(compute_loss, tally: dict):
    """Wrap trainer.compute_loss so that every batch trained on adds its real tokens to `tally`.

    Not the collator: accelerate's data loader builds one batch ahead. TRL's SFT and DPO batches
    both carry attention_mask (DPO: the chosen rows, then the rejected ones, each with its
    prompt), 1 on every real token.
    """

    def compute(model, inputs, *args, **kwargs):
        tally["tokens"] += int(inputs["attention_mask"].sum())
        return compute_loss(model, inputs, *args, **kwargs)

    return compute


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["sft", "dpo"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="turn off TRL's default")
    parser.add_argument("--fp32", action="store_true", help="turn off TRL's default bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = args.model  # TRL loads it, with its own defaults
    dataset = load_dataset("json", data_files=args.data, split="train")
    peft_config = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    common = dict(output_dir=args.out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                  learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_steps=args.steps,
                  logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
                  use_cpu=True, dataloader_num_workers=0,
                  max_length=args.max_length, seed=args.seed, weight_decay=0.0, max_grad_norm=1.0,
                  disable_tqdm=True, train_sampling_strategy="sequential")
    if args.no_gradient_checkpointing:
        common["gradient_checkpointing"] = False
    if args.fp32:
        common["bf16"] = False
    if args.kind == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=args.beta), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
    tally = {"tokens": 0}
    trainer.compute_loss = counting(trainer.compute_loss, tally)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(f"{args.out}/adapter")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    print(json.dumps({"precision": "bf16" if trainer.args.bf16 else "fp32",
                      "model_dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
                      "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
                      "tokens": tally["tokens"], "seconds": round(seconds, 2),
                      "tokens_per_s": round(tally["tokens"] / seconds, 2),
                      "peak_rss_mb": round(own_peak_mb(), 1),
                      "losses": losses}))


if __name__ == "__main__":
    main()
