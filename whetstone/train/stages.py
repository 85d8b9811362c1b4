"""Sequential fine-tuning: a pipeline of stages, each starting from what the one before produced.

`whetstone train CONFIG -o RUN` on a config with `stages:` runs each stage as a normal run:

    RUN/
      config.yaml          the pipeline config, every stage resolved in full
      stages/0-general/    a normal run directory per stage (config.yaml, metrics.jsonl, adapter/ or
      stages/1-legal/      model/, checkpoints/, summary.json, report.html) plus lineage.json, and
                           merged/ with stages_adapters: merge
      stages.json          after each stage k, the eval metrics on every stage j <= k's eval set
      stages.md            the same table for people, with each score's change since stage j ended
      summary.json         one line per stage, and the last stage's figures

How a LoRA stage hands over to the next (`stages_adapters`):

    merge     the adapter is folded into the stage's base (W + (alpha/r) B A in float64, rounded once)
              and saved as merged/, a full HF model; the next stage puts a fresh adapter on it. Costs
              one copy of the weights per stage; every stage learns its own low-rank update.
    stack     every stage's adapter is kept, frozen, and the next stage trains a fresh adapter on top
              (method.base_adapters lists the earlier stages' adapter/ directories, folded into the
              base in memory when the model loads: methods/lora.py). Costs one adapter per stage and
              no full copy; each stage learns its own update, and any stage's run directory loads
              with everything under it (generate, eval, export merged/gguf; serve the merged export).
    continue  the next stage trains the SAME adapter on (method.init_adapter is the previous stage's
              adapter/, trainable, with its optimizer state reset). Costs nothing but the adapter;
              all stages share one rank-r update. The only choice for qlora.

Full and freeze stages save model/, and the next stage starts from it either way.

Lineage (lineage.json in each stage) names the base model, the stage's start model and adapter,
the frozen adapters under it, the parent stage, every data file with its SHA-256, and the SHA-256
of the weights the stage started from and produced (over the saved tensors, in name order: see `tensors_sha256`).

`--resume RUN` skips the stages that finished, resumes the interrupted one from its checkpoint,
and runs the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from whetstone.config import ModelConfig, RunConfig
from whetstone.errors import WhetstoneError
from whetstone.train import distributed
from whetstone.train.fingerprint import data_files, file_sha256
from whetstone.train.loop import fit
from whetstone.rundir import RunDir
from whetstone.train.run_dir import RunDirectory

ADAPTER_METHODS = ("lora", "dora", "qlora")


@dataclasses.dataclass(frozen=True)
class Start:
    """What a stage starts from: a model, an adapter it trains on (continue), frozen adapters under it (stack)."""

    model: str
    adapter: str | None = None
    stack: tuple[str, ...] = ()


def stage_config(config: RunConfig, index: int, start: Start) -> RunConfig:
    """Stage `index` as a single run: the pipeline's model and method, the stage's data/train/eval."""
    stage = config.stages[index]
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, name=start.model),
        method=dataclasses.replace(config.method, init_adapter=start.adapter, base_adapters=list(start.stack)),
        data=stage.data, train=stage.train, eval=stage.eval, stages=[], output=None,
    )


def run_pipeline(config: RunConfig | None, run_dir, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, on_step=None, accept_changes: bool = False, trust_remote_code: bool = False,
                 allow_pickle: bool = False) -> dict:
    """Run (or resume) every stage in order; return the pipeline summary (also RUN/summary.json).

    The grants are what a resumed pipeline's model may do, as in `train`.
    """
    if distributed.world()[1] > 1:
        raise WhetstoneError("stages: a pipeline runs in one process; launch it without torchrun/accelerate, or "
                             "run each stage as its own distributed run.")
    t_start = time.perf_counter()
    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    if resume:
        path = Path(run_dir)
        _, config = RunDirectory.open(path, **grants)
    else:
        path = _create(run_dir or config.output, config, overwrite)
    table = _read_table(path, config)
    start, parent = Start(config.model.name), None
    stages: list[dict] = []
    for index, stage in enumerate(config.stages):
        directory = RunDir(path).stages_dir / f"{index}-{stage.name}"
        print(f"stage {index} ({stage.name}): {directory}", flush=True)
        cfg = stage_config(config, index, start)
        summary = _read_summary(directory)
        if summary is None or summary.get("stopped_early"):
            if RunDir.is_run(directory):
                summary = fit(None, directory, resume=True, progress=progress, on_step=on_step,
                                accept_changes=accept_changes, **grants)
            else:
                summary = fit(cfg, directory, progress=progress, on_step=on_step)
        stages.append({"stage": index, "name": stage.name, "dir": str(directory), "steps": summary.get("steps"),
                       "train_loss": summary.get("train_loss"), "eval_loss": summary.get("eval_loss"),
                       "wall_s": summary.get("wall_s")})
        if summary.get("stopped_early"):
            print(f"pipeline stopped in stage {index} ({stage.name}); continue with: whetstone train --resume {path}",
                  flush=True)
            out = {"stopped_early": True, "stopped_stage": index, "stages": stages}
            _write_json(RunDir(path).summary_path, out)
            return out
        next_start, output_hash = _hand_over(config, cfg, directory)
        _write_lineage(directory, config, cfg, index, parent, output_hash)
        if len(table["rows"]) <= index:
            table["rows"].append(_measure(config, index, next_start))
            _write_table(path, table)
        start, parent = next_start, directory.name
    out = {**{k: v for k, v in stages[-1].items() if k in ("train_loss", "eval_loss")},
           "stopped_early": False, "stages": stages, "final_stage": stages[-1]["dir"],
           "table": RunDir.STAGES_JSON, "wall_s": round(time.perf_counter() - t_start, 3)}
    _write_json(RunDir(path).summary_path, out)
    print(f"pipeline done: {path} ({len(stages)} stages; table in {RunDir(path).file(RunDir.STAGES_MD)})", flush=True)
    return out


def _create(target, config: RunConfig, overwrite: bool) -> Path:
    """The pipeline directory, with the same rules as a single run's (RunDir.create)."""
    if target is None:
        raise WhetstoneError("no run directory: pass -o DIR or set output: in the config.")
    return RunDir.create(target, config, overwrite).path


def _read_summary(directory: Path) -> dict | None:
    return RunDir(directory).summary()


# ---------------------------------------------------------------------------
# Handing over from one stage to the next.


def _hand_over(config: RunConfig, cfg: RunConfig, directory: Path) -> tuple[Start, str]:
    """What the next stage starts from, and the SHA-256 of what this stage produced."""
    run = RunDir(directory)
    if config.method.name not in ADAPTER_METHODS:
        return Start(str(run.model_dir.resolve())), files_sha256(run.model_dir)
    adapter = str(run.adapter_dir.resolve())
    if config.stages_adapters == "continue":
        return Start(cfg.model.name, adapter=adapter), files_sha256(run.adapter_dir)
    if config.stages_adapters == "stack":
        return Start(cfg.model.name, stack=(*cfg.method.base_adapters, adapter)), files_sha256(run.adapter_dir)
    merged = run.merged_dir
    if not (merged / "config.json").is_file():  # a resumed pipeline may have merged already
        merge_adapter(cfg.model, run.adapter_dir, merged)
    return Start(str(merged.resolve())), files_sha256(merged)


def merge_adapter(base: ModelConfig, adapter: Path, target: Path) -> None:
    """Fold `adapter` into `base` and save the result as a full HF model (safetensors) at `target`."""
    from peft import PeftModel

    from whetstone.methods.lora import merge_exactly
    from whetstone.models import load_model, load_tokenizer

    model, _ = load_model(base, device="cpu")
    model = merge_exactly(PeftModel.from_pretrained(model, str(adapter)))
    # Written aside and renamed: an interrupted merge never leaves a half model for the next stage to load.
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base).save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor in name order: equal iff the weights are."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def files_sha256(directory: Path) -> str:
    """`tensors_sha256` of every tensor in the directory's *.safetensors files (a model or an adapter)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if not tensors:
        raise WhetstoneError(f"{directory}: no *.safetensors weights; the stage did not save its output.")
    return tensors_sha256(tensors)


def _write_lineage(directory: Path, config: RunConfig, cfg: RunConfig, index: int, parent: str | None,
                   output_hash: str) -> None:
    parent_lineage = RunDir(directory.parent / parent).file(RunDir.LINEAGE) if parent else None
    lineage = {
        "pipeline": str(directory.parent.parent.resolve()),
        "stage": index,
        "name": config.stages[index].name,
        "parent": parent,
        "base_model": config.model.name,
        "start_model": cfg.model.name,
        "start_adapter": cfg.method.init_adapter,
        "frozen_adapters": list(cfg.method.base_adapters),
        "method": config.method.name,
        "stages_adapters": config.stages_adapters,
        "data": [{"role": role, "path": path, "task": task, "weight": weight, "sha256": file_sha256(path)}
                 for role, path, task, weight in data_files(cfg.data)],
        "start_weights_sha256": (json.loads(parent_lineage.read_text())["output_weights_sha256"]
                                 if parent_lineage else None),
        "output_weights_sha256": output_hash,
    }
    _write_json(RunDir(directory).file(RunDir.LINEAGE), lineage)


# ---------------------------------------------------------------------------
# The per-stage table: what each stage cost the ones before it.


def _measure(config: RunConfig, index: int, after: Start) -> dict:
    """After stage `index`: the metrics of its output (what stage index + 1 starts from) on every stage j <= index's
    eval set."""
    from whetstone.data.dataset import load_splits
    from whetstone.evaluate.harness import EvalOptions, evaluate
    from whetstone.methods.lora import fold_adapters
    from whetstone.models import load_model, load_tokenizer

    model_name = after.model
    model, _ = load_model(dataclasses.replace(config.model, name=model_name), device="cpu")
    model = fold_adapters(model, list(after.stack))
    if after.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, after.adapter)
    model.eval()
    scores: dict[str, dict | None] = {}
    for j, stage in enumerate(config.stages[: index + 1]):
        tokenizer = load_tokenizer(model_name, stage.data.chat_template)
        _, records, _ = load_splits(stage.data, stage.train.seed)
        if not records:
            scores[stage.name] = None  # the stage has no eval data (set data.eval or data.eval_fraction)
            continue
        records = records[: stage.eval.final_limit] if stage.eval.final_limit else records
        metrics = ["loss"] + [m for m in stage.eval.metrics if m != "loss"]
        options = EvalOptions(metrics, stage.eval.max_new_tokens, stage.eval.generation_batch_size,
                              stage.data.max_length)
        result = evaluate(model, tokenizer, records, options)
        scores[stage.name] = {k: round(v, 6) for k, v in result.metrics.items()}
        print(f"stage {index} ({config.stages[index].name}) on stage {j} ({stage.name})'s eval set: "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores[stage.name].items()), flush=True)
    return {"after": index, "stage": config.stages[index].name, "on": scores}


def _read_table(path: Path, config: RunConfig) -> dict:
    existing = RunDir(path).file(RunDir.STAGES_JSON)
    if existing.is_file():
        return json.loads(existing.read_text())
    return {"stages": [s.name for s in config.stages], "stages_adapters": config.stages_adapters, "rows": []}


def _write_table(path: Path, table: dict) -> None:
    _write_json(RunDir(path).file(RunDir.STAGES_JSON), table)
    RunDir(path).file(RunDir.STAGES_MD).write_text(stages_markdown(table))


LOWER_IS_BETTER = ("loss", "perplexity")


def stages_markdown(table: dict) -> str:
    """One table per metric: rows 'after stage k', columns 'on stage j's eval set', change since j ended."""
    names = table["stages"]
    rows = table["rows"]
    metrics: list[str] = []
    for row in rows:
        for cell in row["on"].values():
            metrics += [m for m in (cell or {}) if m not in metrics]
    lines = ["# Stages", "", "Each row is the model after that stage; each column is a stage's eval set. "
             "In brackets: the change since that stage ended (what later stages cost it).", ""]
    for metric in metrics:
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        lines += [f"## {metric} ({better} is better)", "",
                  "| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for row in rows:
            cells = []
            for j, name in enumerate(names):
                value = (row["on"].get(name) or {}).get(metric)
                own = (rows[j]["on"].get(name) or {}).get(metric) if j < len(rows) else None
                if value is None:
                    cells.append("")
                elif j < row["after"] and own is not None:
                    cells.append(f"{value:.4f} ({value - own:+.4f})")
                else:
                    cells.append(f"{value:.4f}")
            lines.append(f"| {row['after']}-{row['stage']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
