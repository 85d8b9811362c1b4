"""Load a trained result for use, and generate answers in batches."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from whetstone.config import ModelConfig
from whetstone.data.render import render_prompt, stop_ids
from whetstone.errors import WhetstoneError
from whetstone.methods.lora import fold_adapters
from whetstone.models.load import load_model, load_tokenizer, run_model_config
from whetstone.rundir import RunDir


def final_stage(run: str | Path) -> Path:
    """The run directory itself, or for a finished pipeline (a config with stages:) its last stage's directory."""
    pipeline = RunDir(run)
    if pipeline.is_pipeline():
        final = (pipeline.summary() or {}).get("final_stage")
        if final is None:
            raise WhetstoneError(f"--run {run}: the pipeline has not finished its last stage (see its summary.json); "
                                 f"point --run at a finished stage under {pipeline.stages_dir}, or resume it.")
        # Written relative to the directory the pipeline ran in, like the paths of its config.
        workdir = pipeline.workdir
        return workdir / final if workdir is not None and not Path(final).is_absolute() else Path(final)
    return pipeline.path


def run_chat_template(run: str) -> str | None:
    """The data.chat_template a run was trained with (None: the model's own)."""
    data = RunDir(final_stage(run)).raw_config().get("data") or {}
    return data.get("chat_template") if isinstance(data, dict) else None


def run_base_config(run: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelConfig:
    """The base model a run was trained from, with the powers this command grants (see run_model_config)."""
    return _from_run(run, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle).model


@dataclass(frozen=True)
class RunWeights:
    """What a finished run loads as: its base model, frozen adapters folded into it, then its adapter or model/."""

    model: ModelConfig
    adapter: str | None = None  # adapter/ of a lora/dora/qlora run
    full: str | None = None  # model/ of a full or freeze run
    stack: tuple[str, ...] = ()  # method.base_adapters: frozen adapters under the run's own


def _from_run(run: str, *, trust_remote_code: bool, allow_pickle: bool) -> RunWeights:
    found = RunDir.open(final_stage(run), flag="--run")
    raw = found.raw_config()
    model_cfg = run_model_config(raw.get("model"), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                 source=found.config_path)
    method = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    stack = tuple(method.get("base_adapters") or ())
    if found.has_adapter():
        return RunWeights(model_cfg, adapter=str(found.adapter_dir), stack=stack)
    if found.has_model():
        return RunWeights(model_cfg, full=str(found.model_dir))
    raise WhetstoneError(f"--run {run}: the run has no adapter/ or model/ yet; did it finish? (see its summary.json)")


def load_for_inference(model: str | None = None, adapter: str | None = None, run: str | None = None,
                       device: str = "cpu", *, trust_remote_code: bool = False, allow_pickle: bool = False):
    """(model, tokenizer) for `--model M [--adapter DIR|NAME]` or `--run RUN_DIR`, in eval mode.

    A run trained on a stack of frozen adapters (method.base_adapters) loads with all of them. Remote code
    and pickle weights load only when this command's flags say so, whatever a run's config.yaml asks.
    """
    stack: tuple[str, ...] = ()
    if adapter is not None and run is None:
        from whetstone.adapters import resolve_adapter

        adapter, model = resolve_adapter(adapter, model, trust_remote_code=trust_remote_code,
                                         allow_pickle=allow_pickle)  # a library NAME brings its base model
    if run is not None:
        weights = _from_run(run, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        model_cfg, adapter, stack = weights.model, weights.adapter, weights.stack
        if weights.full is not None:
            model_cfg = replace(model_cfg, name=weights.full, revision=None)
    else:
        model_cfg = ModelConfig(name=model or ModelConfig().name, trust_remote_code=trust_remote_code,
                                allow_pickle=allow_pickle)
    # A run trained with data.chat_template must be prompted the same way.
    tokenizer = load_tokenizer(model_cfg, run_chat_template(run) if run is not None else None)
    lm, _ = load_model(model_cfg, device=device)
    lm = fold_adapters(lm, list(stack), who=f"--run {run}: method.base_adapters")
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise WhetstoneError(f"--adapter {adapter}: no adapter_config.json there; point at a run's adapter/ dir.")
        lm = PeftModel.from_pretrained(lm, adapter)
    lm.eval()
    return lm, tokenizer


@torch.no_grad()
def generate_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                     temperature: float = 0.0, batch_size: int = 8, seed: int = 0,
                     ended: list[bool] | None = None) -> list[str]:
    """Answer each conversation; greedy when temperature is 0. Stops at the end of the turn (see
    generate_from_prompts for `ended`)."""
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    return generate_from_prompts(model, tokenizer, prompts, max_new_tokens, temperature, batch_size, seed,
                                 add_special_tokens=False, ended=ended)  # the chat template already wrote them


@torch.no_grad()
def generate_from_prompts(model, tokenizer, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0,
                          batch_size: int = 8, seed: int = 0, add_special_tokens: bool = True,
                          ended: list[bool] | None = None, strip: bool = True) -> list[str]:
    """Continue each prompt text, in batches of similar length; answers come back in the input order.

    With strip=False the continuations keep their leading whitespace, so that prompt + continuation
    reads as the model wrote it.

    Generation stops at any of the chat template's end-of-turn ids or EOS (render.stop_ids): Gemma ends a
    turn with <end_of_turn> and Phi-3 with <|end|>, neither of which is its EOS, and a model tuned on
    their templates learned to stop there. The stop token is not part of the answer.

    With a list `ended`, it is filled, in the input order, with whether each answer ended with one of those
    (False: max_new_tokens cut it).

    Rows are left-padded so every row continues from the right edge. Sorting by
    length keeps the padding (compute spent on nothing) small; a batch ends when
    every row has emitted a stop id, and rows that stopped earlier only carry padding.
    """
    if not prompts:
        return []
    torch.manual_seed(seed)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: peak memory shows at once
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = [""] * len(prompts)
    stopped = [False] * len(prompts)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    stops = stop_ids(tokenizer)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                               add_special_tokens=add_special_tokens)
            inputs = {k: v.to(model.device) for k, v in inputs.items()}  # (B, T) each
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                    pad_token_id=tokenizer.pad_token_id, **sampling)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
            for i, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[i] = text.strip() if strip else text
            for i, has_stop in zip(rows, torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device))
                                   .any(dim=1).tolist()):
                stopped[i] = has_stop
    finally:
        tokenizer.padding_side = side
    if ended is not None:
        ended[:] = stopped
    return answers
