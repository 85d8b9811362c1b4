"""`whetstone export RUN_DIR --format peft|merged|gguf`: ship a run in the format a server loads.

    peft     adapter_config.json + adapter_model.safetensors + tokenizer: peft, vLLM (--enable-lora)
    merged   one HF safetensors model with the adapter folded in: transformers, vLLM, TGI
    gguf     one .gguf file with tokenizer, chat template and llama.* metadata: llama.cpp, Ollama

Every export is checked before it is called done: the exported tokenizer must render,
tokenize and stop like the training one (consistency.py), and the exported weights
are loaded back and their logits compared with base + adapter on a probe
conversation. The deltas go into export.json beside the output.

Tolerances (max |logit delta| against base + adapter, fp32 forward):
    merged f32, gguf f32, peft f32    16 * eps(f32) * (layers + 1) * max |logit|  (rounding_tolerance)
    f16, bf16, q8_0                    reported with top-1 agreement; enforced at 5% of max |logit|

The base loads in fp32 whatever model.dtype the run trained on (_base_config carries no dtype): a bf16 base
only saved training memory, the adapter is fp32, so a bf16-base run is exported and bounded as an fp32 one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from whetstone.config import ModelConfig, RunConfig
from whetstone.data.render import stop_ids as template_stop_ids
from whetstone.errors import WhetstoneError
from whetstone.export import DEFAULT_DTYPE, DTYPES, FORMATS
from whetstone.export.consistency import PROBE, check_consistency
from whetstone.export.gguf import detect_pre_tokenizer, gguf_stop_ids, source_gguf_pre, write_gguf
from whetstone.methods.lora import fold_adapters, merge_exactly
from whetstone.models.load import load_model, load_tokenizer, resolve_model
from whetstone.overwrite import DirectoryKind, check_replaceable, staged, swap_in, write_marker
from whetstone.rundir import RunDir

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# fp32 exports: merging reorders the sums (W x + s B(A x) against (W + s BA) x), so two healthy forwards differ
# by rounding alone. Measured, that difference is c * eps * (layers + 1) * max|logit| with c from 0.5 to 1.1
# (2 and 30 layers; AVX-512, AVX2 and scalar kernels); 16 leaves a margin over every CPU's rounding, and the
# bound stays thousands of times below what a wrong merge does (a 10-step LoRA moves the logits by ~5).
ROUNDING_HEADROOM = 16
LOSSY_RELATIVE_TOLERANCE = 0.05  # f16/bf16/q8_0: a bound that catches a wrong layout, not rounding

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "vocab.json", "merges.txt", "added_tokens.json")
# What --overwrite may replace: a peft or merged export directory and nothing else (see whetstone/overwrite.py).
EXPORT = DirectoryKind(
    "export", ".whetstone-export",
    entries=(".whetstone-export", "export.json", "adapter_config.json", "adapter_model.safetensors", "config.json",
             "generation_config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
             "tokenizer.model", *_TOKENIZER_FILES),
    legacy=lambda path: (path / "export.json").is_file(),  # every export wrote its manifest last
)


@dataclass
class RunSource:
    """What a finished run directory holds."""

    path: Path
    config: RunConfig
    adapter: Path | None  # adapter/ for lora/dora/qlora runs
    full: Path | None  # model/ for full/freeze runs

    @property
    def weights_dir(self) -> Path:
        return self.adapter or self.full


@dataclass
class ExportResult:
    format: str
    dtype: str
    path: str
    bytes: int
    logit_delta: float | None  # max |logits - (base + adapter)| on the probe conversation
    top1_agreement: float | None  # fraction of probe positions with the same argmax token
    tolerance: float | None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def read_run(run_dir: str | Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> RunSource:
    """The run to export; its base model gets only the powers this command grants (see run_model_config)."""
    run = RunDir.open(run_dir, flag="")
    config = run.config(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if run.has_adapter():
        return RunSource(run.path, config, run.adapter_dir, None)
    if run.has_model():
        return RunSource(run.path, config, None, run.model_dir)
    raise WhetstoneError(f"{run_dir}: the run has no adapter/ or model/ yet; did it finish? (see its summary.json; "
                         f"a stopped run continues with `whetstone train --resume {run_dir}`)")


def directory_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, dtype: str | None = None, *,
               overwrite: bool = False, verify: bool = True, gguf_pre: str | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False) -> ExportResult:
    """Export one run; return what was written and how close it is to base + adapter."""
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise WhetstoneError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    dtype = dtype or DEFAULT_DTYPE[fmt]
    if dtype not in DTYPES[fmt]:
        hint = " q8_0 is a GGUF quantization: use --format gguf." if dtype == "q8_0" else ""
        raise WhetstoneError(f"--dtype {dtype}: --format {fmt} writes {', '.join(DTYPES[fmt])}.{hint}")
    source = read_run(run_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    out = _output_path(source, fmt, dtype, out, overwrite)
    with staged(out) as tmp:
        built = tmp / out.name if fmt == "gguf" else tmp  # a GGUF is one file: build it in the staging directory
        result = _build_and_check(source, fmt, dtype, built, out, verify, gguf_pre)
        result.seconds = round(time.perf_counter() - t0, 2)
        (tmp / "export.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        if fmt == "gguf":
            os.replace(built, out)
            os.replace(tmp / "export.json", _gguf_manifest(out))
        else:
            write_marker(built, EXPORT, format=fmt, dtype=dtype, source=str(source.path.resolve()))
            swap_in(built, out)
    return result


def _build_and_check(source: RunSource, fmt: str, dtype: str, built: Path, out: Path, verify: bool,
                     gguf_pre: str | None) -> ExportResult:
    """Write the export at `built` (beside its final place `out`) and check it there; raise if it fails."""
    train_tokenizer = load_tokenizer(source.config.model, source.config.data.chat_template)
    probe_ids = _probe_ids(train_tokenizer)  # (1, T)
    reference = _load_reference(source)
    with torch.no_grad():
        ref_logits = reference(probe_ids).logits.float()  # (1, T, V)

    if fmt == "peft":
        if source.adapter is None:
            raise WhetstoneError(f"--format peft: {source.path} trained every weight (method "
                                 f"{source.config.method.name}), so it has no adapter. Use --format merged or gguf.")
        if source.config.method.base_adapters:
            raise WhetstoneError(f"--format peft: {source.path}'s adapter was trained on top of "
                                 f"{len(source.config.method.base_adapters)} frozen adapter(s) (method.base_adapters), "
                                 f"so alone it is not the model. Use --format merged or gguf, which fold them all in.")
        result = _export_peft(source, built, dtype)
        served = _served_tokenizer(built)
        stop_ids = _stop_ids(Path(resolve_model(source.config.model.name).path), built)
        unstopped = [t for t in template_stop_ids(served) if t not in stop_ids]
        if unstopped:
            # The base's generation_config.json is not ours to change: a server that reads it must be told.
            names = ", ".join(f"{served.convert_ids_to_tokens(t)} (id {t})" for t in unstopped)
            result.notes.append(f"the base model's generation_config.json stops on {stop_ids} only; the chat "
                                f"template ends a turn with {names}: give it to the server as a stop token (vLLM: "
                                f"stop_token_ids), or use --format merged, whose generation_config.json lists it.")
            stop_ids = stop_ids + unstopped  # whetstone's own generate and serve stop there
        loaded = _load_peft_export(source, built) if verify else None
    elif fmt == "merged":
        result = _export_merged(source, reference, built, dtype)
        served, stop_ids = _served_tokenizer(built), _stop_ids(built, built)
        loaded = _load_hf(built) if verify else None
    else:
        pre = gguf_pre or _pre_tokenizer(source, train_tokenizer)
        merged = _merged_model(source, reference)
        write_gguf(merged.state_dict(), merged.config.to_dict(), _served_tokenizer(source.weights_dir), built, dtype,
                   name=source.path.resolve().name, pre=pre)
        result = ExportResult("gguf", dtype, str(out), 0, None, None, None, notes=[f"pre-tokenizer: {pre}"])
        served = _gguf_tokenizer(built)
        stop_ids = gguf_stop_ids(served)  # the file's own EOS and chat template, as read back
        loaded = _load_gguf(built) if verify else None

    result.path = str(out)  # errors and export.json name where it will be, not the staging directory
    report = check_consistency(train_tokenizer, served, stop_ids, f"export {fmt} {out}")
    result.checks += report.checks
    result.notes += report.notes
    if loaded is not None:
        with torch.no_grad():
            logits = loaded(probe_ids).logits.float()
        _measure(result, ref_logits, logits, loaded.config.num_hidden_layers)
    result.bytes = directory_bytes(built)
    return result


# ---------------------------------------------------------------------------
# Paths and loading.


def _output_path(source: RunSource, fmt: str, dtype: str, out, overwrite: bool) -> Path:
    if out is None:
        out = RunDir(source.path).file(RunDir.EXPORT) / (f"{source.path.resolve().name}-{dtype}.gguf" if fmt == "gguf"
                                        else f"{fmt}-{dtype}")
    out = Path(out)
    if fmt == "gguf" and out.suffix != ".gguf":
        out = out / f"{source.path.resolve().name}-{dtype}.gguf"  # -o names a directory
    if fmt != "gguf":
        check_replaceable(out, EXPORT, overwrite)
        return out
    for path, ours in ((out, _is_gguf), (_gguf_manifest(out), _is_gguf_manifest)):
        if path.is_dir():
            raise WhetstoneError(f"-o {out}: {path} is a directory; name the .gguf file, or a directory to put it in.")
        if path.exists():
            if not overwrite:
                raise WhetstoneError(f"export {path} already exists. Pass --overwrite to replace it, "
                                     f"or choose another -o.")
            if not ours(path):
                raise WhetstoneError(f"--overwrite refused: {path} is not a GGUF export (it does not read as one), "
                                     f"so it is not replaced. Choose another -o.")
    return out


def _gguf_manifest(out: Path) -> Path:
    return out.with_name(out.stem + ".export.json")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"  # the magic every GGUF file starts with


def _is_gguf_manifest(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == "gguf"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def _probe_ids(tokenizer) -> torch.Tensor:
    """The probe conversation as training renders it: template, then tokens."""
    text = tokenizer.apply_chat_template([dict(m) for m in PROBE], tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])  # (1, T)


def _base_config(source: RunSource) -> ModelConfig:
    return ModelConfig(name=source.config.model.name, revision=source.config.model.revision,
                       trust_remote_code=source.config.model.trust_remote_code,
                       allow_pickle=source.config.model.allow_pickle)


def _load_reference(source: RunSource):
    """base + adapter (unmerged, fp32), or the run's full model: what every export must equal."""
    if source.full is not None:
        # model/ is the base trained further: it gets the powers the base got, which this command granted.
        model, _ = load_model(replace(_base_config(source), name=str(source.full), revision=None))
    else:
        from peft import PeftModel

        base, _ = load_model(_base_config(source))
        base = fold_adapters(base, source.config.method.base_adapters)  # a stacked run's frozen adapters
        model = PeftModel.from_pretrained(base, str(source.adapter))
    return model.eval()


def _merged_model(source: RunSource, reference):
    """Fold the adapter into the base weights, W' = W + (alpha / r) B A; see `merge_exactly`.

    It merges into `reference` in place; callers take reference logits first.
    """
    if source.full is not None:
        return reference
    return merge_exactly(reference)


def _served_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def _gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _stop_ids(model_dir: Path, tokenizer_dir: Path) -> list[int]:
    """Token ids generation stops on: generation_config.json's eos_token_id, else the tokenizer's EOS."""
    gen = model_dir / "generation_config.json"
    eos = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
    if eos is None:
        eos = _served_tokenizer(tokenizer_dir).eos_token_id
    return list(eos) if isinstance(eos, list) else [eos]


def _load_hf(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()


def _load_peft_export(source: RunSource, out: Path):
    from peft import PeftModel

    base, _ = load_model(_base_config(source))
    return PeftModel.from_pretrained(base, str(out)).eval()


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _pre_tokenizer(source: RunSource, tokenizer) -> str:
    """The base GGUF's own pre-tokenizer name when the base came from a GGUF, else detected."""
    spec = source.config.model.name
    resolved = resolve_model(spec)
    if resolved.kind in ("embedded", "gguf"):
        from whetstone.models.embedded import embedded_gguf_path

        origin = embedded_gguf_path(spec) if resolved.kind == "embedded" else Path(spec)
        pre = source_gguf_pre(origin)
        if pre:
            return pre
    pre = detect_pre_tokenizer(tokenizer)
    if pre is None:
        raise WhetstoneError(
            "--format gguf: cannot tell which llama.cpp pre-tokenizer matches this tokenizer's text splitting. "
            "Pass --gguf-pre NAME with llama.cpp's name for it (for example llama-bpe, qwen2, gpt2)."
        )
    return pre


# ---------------------------------------------------------------------------
# The three formats.


def _copy_tokenizer(src: Path, out: Path) -> None:
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)


def _export_peft(source: RunSource, out: Path, dtype: str) -> ExportResult:
    """The adapter in standard PEFT layout; weights cast to `dtype`."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((source.adapter / "adapter_config.json").read_text())
    weights = load_file(str(source.adapter / "adapter_model.safetensors"))
    notes = []
    odd = [k for k in weights if not k.startswith("base_model.model.")]
    if odd:
        raise WhetstoneError(f"--format peft: {source.adapter} holds non-PEFT tensor names ({odd[0]}, ...).")
    if config.get("use_dora"):
        notes.append("DoRA adapter: peft loads it; vLLM serves LoRA only, so use --format merged there.")
    if config.get("modules_to_save"):
        notes.append(f"modules_to_save {config['modules_to_save']}: vLLM does not load these; use --format merged.")
    config["base_model_name_or_path"] = resolve_model(source.config.model.name).path
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.to(TORCH_DTYPES[dtype]).contiguous() for k, v in weights.items()},
              str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    _copy_tokenizer(source.adapter, out)
    notes.append(f"base model: {config['base_model_name_or_path']}")
    return ExportResult("peft", dtype, str(out), 0, None, None, None, notes=notes)


def _export_merged(source: RunSource, reference, out: Path, dtype: str) -> ExportResult:
    merged = _merged_model(source, reference)
    merged = merged.to(TORCH_DTYPES[dtype])
    tokenizer = _served_tokenizer(source.weights_dir)
    # The server stops on these: the template's end-of-turn token(s) that ended every training turn (Gemma's
    # <end_of_turn>, Phi-3's <|end|>) and EOS, then whatever else the base stopped on.
    base_stops = merged.generation_config.eos_token_id
    base_stops = ([] if base_stops is None else list(base_stops) if isinstance(base_stops, (list, tuple))
                  else [base_stops])
    stops = list(dict.fromkeys(template_stop_ids(tokenizer) + base_stops))
    merged.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.eos_token_id = tokenizer.eos_token_id
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return ExportResult("merged", dtype, str(out), 0, None, None, None)


def rounding_tolerance(layers: int, logit_scale: float) -> float:
    """The largest |logit delta| that fp32 rounding explains between two orderings of the same forward.

    Each block adds a relative error of about eps to the residual stream, and the logits read it at their own
    scale, so the bound grows with depth (the embedding and head count as one more step) and with max |logit|.
    """
    return ROUNDING_HEADROOM * torch.finfo(torch.float32).eps * (layers + 1) * logit_scale


def _measure(result: ExportResult, ref: torch.Tensor, got: torch.Tensor, layers: int) -> None:
    """Record the logit delta and top-1 agreement; raise if over the tolerance for the dtype."""
    delta = float((got - ref).abs().max())
    result.logit_delta = delta
    result.top1_agreement = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    scale = float(ref.abs().max())
    result.tolerance = (rounding_tolerance(layers, scale) if result.dtype == "f32"
                        else LOSSY_RELATIVE_TOLERANCE * scale)
    if delta > result.tolerance:
        raise WhetstoneError(
            f"export {result.format} {result.path}: the exported model's logits differ from base + adapter by "
            f"{delta:.3g} (tolerance {result.tolerance:.3g} for {result.dtype}; top-1 agreement "
            f"{100 * result.top1_agreement:.1f}%). That is more than rounding explains at this depth and logit scale, "
            f"so the export computes another function than the run: a bug in the exporter for this model. Please "
            f"report it with the run's config.yaml; --no-verify skips this check."
        )
