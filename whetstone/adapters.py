"""The adapter library: one base model, many task adapters, kept in a local catalogue.

    ~/.local/share/whetstone/adapters/        ($WHETSTONE_ADAPTERS, or --library DIR)
      catalogue.json                          name -> base, task, metrics, size, source
      <name>/adapter_config.json              a copy of the run's adapter, in PEFT layout
      <name>/adapter_model.safetensors
      <name>/tokenizer.json ...

The point of adapters is storage: N tasks cost one base plus N small adapters
instead of N full copies. `whetstone adapters list` shows that saving per base.
`--adapter NAME` in generate, chat, eval and serve looks names up here
(`resolve_adapter`); a directory path works as well.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whetstone.errors import WhetstoneError
from whetstone.overwrite import staged, swap_in
from whetstone.rundir import RunDir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja")


@dataclass
class AdapterEntry:
    name: str
    base: str  # the base model spec the adapter was trained on (as in model: of its config)
    task: str | None
    metrics: dict[str, float]
    bytes: int  # the adapter's weight file
    base_bytes: int  # one full copy of the model: the base's weight files
    method: str  # lora | dora | qlora
    rank: int | None
    source: str  # where it was added from
    added: str  # ISO time
    extra: dict = field(default_factory=dict)


def library_root(library: str | Path | None = None) -> Path:
    """--library, else $WHETSTONE_ADAPTERS, else $XDG_DATA_HOME/whetstone/adapters."""
    if library is not None:
        return Path(library)
    if os.environ.get("WHETSTONE_ADAPTERS"):
        return Path(os.environ["WHETSTONE_ADAPTERS"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "whetstone" / "adapters"


class AdapterLibrary:
    def __init__(self, root: str | Path | None = None):
        self.root = library_root(root)
        self.catalogue = self.root / "catalogue.json"

    # ---- reading -----------------------------------------------------------------
    def entries(self) -> dict[str, AdapterEntry]:
        if not self.catalogue.is_file():
            return {}
        try:
            raw = json.loads(self.catalogue.read_text())
        except json.JSONDecodeError as exc:
            raise WhetstoneError(f"the adapter catalogue {self.catalogue} is not valid JSON ({exc}); restore it or "
                                 f"remove it to start an empty library.") from None
        return {name: AdapterEntry(**entry) for name, entry in raw.get("adapters", {}).items()}

    def get(self, name: str) -> AdapterEntry:
        entries = self.entries()
        if name not in entries:
            close = difflib.get_close_matches(name, list(entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(entries)) or "none yet"
            raise WhetstoneError(f"adapter {name!r} is not in the library at {self.root} (known: {known}).{hint}")
        return entries[name]

    def path(self, name: str) -> Path:
        return self.root / name

    # ---- writing -----------------------------------------------------------------
    def _save(self, entries: dict[str, AdapterEntry]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {"version": 1, "adapters": {n: asdict(e) for n, e in sorted(entries.items())}}
        tmp = self.catalogue.with_name(".catalogue.json.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, self.catalogue)  # a crash never leaves half a catalogue

    def add(self, name: str, source: str | Path, *, task: str | None = None, base: str | None = None,
            overwrite: bool = False) -> AdapterEntry:
        """Copy the adapter of a run directory (or an adapter directory) into the library as `name`."""
        if not _NAME.match(name):
            raise WhetstoneError(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' (up to 64), starting "
                                 f"with a letter or digit; it becomes a directory and the server's model id.")
        entries = self.entries()
        if name in entries and not overwrite:
            raise WhetstoneError(f"adapter {name!r} is already in the library; pass --overwrite to replace it, or "
                                 f"remove it first with `whetstone adapters remove {name}`.")
        adapter_dir, config, summary = _read_source(Path(source))
        base = base or _run_base(config) or _adapter_base(adapter_dir)
        if base is None:
            raise WhetstoneError(f"{source}: cannot tell the base model; pass --base MODEL.")
        peft_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        target = self.path(name)
        if name not in entries and (target.exists() or target.is_symlink()):
            raise WhetstoneError(f"{target} already exists but is not in the catalogue, so the library did not "
                                 f"write it and will not replace it. Move it away, or choose another name.")
        with staged(target) as tmp:
            for file in _FILES:
                if (adapter_dir / file).is_file():
                    shutil.copy2(adapter_dir / file, tmp / file)
            swap_in(tmp, target)
        entry = AdapterEntry(
            name=name,
            base=base,
            task=task or _run_task(config),
            metrics=_metrics(summary),
            bytes=(target / "adapter_model.safetensors").stat().st_size,
            base_bytes=_base_bytes(base),
            method="dora" if peft_config.get("use_dora") else (config or {}).get("method", {}).get("name", "lora"),
            rank=peft_config.get("r"),
            source=str(Path(source).resolve()),
            added=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        entries[name] = entry
        self._save(entries)
        return entry

    def remove(self, name: str) -> AdapterEntry:
        entry = self.get(name)
        entries = self.entries()
        del entries[name]
        self._save(entries)
        shutil.rmtree(self.path(name), ignore_errors=True)
        return entry


# ---------------------------------------------------------------------------
# Sources: a run directory or a bare adapter directory.


def _read_source(source: Path) -> tuple[Path, dict | None, dict]:
    """(adapter dir, the run's raw config or None, the run's summary or {})."""
    if RunDir.is_run(source):
        run = RunDir(source)
        if not run.has_adapter():
            kind = "model/ (all weights trained)" if run.model_dir.is_dir() else "no adapter/ yet"
            raise WhetstoneError(f"{source}: this run has {kind}; only adapter runs (lora, dora, qlora) go in the "
                                 f"adapter library.")
        summary = run.summary() or {}
        raw = run.raw_config()
        refuse_stacked(source, raw)
        return run.adapter_dir, raw, summary
    if (source / "adapter_config.json").is_file():
        refuse_stacked(source.parent)
        return source, None, {}
    raise WhetstoneError(f"{source}: neither a run directory (config.yaml + adapter/) nor an adapter directory "
                         f"(adapter_config.json).")


def refuse_stacked(run_dir: Path, raw: dict | None = None) -> None:
    """A run trained on frozen adapters (method.base_adapters) is not its adapter alone: say so, and what works."""
    if raw is None:
        raw = RunDir(run_dir).raw_config() if RunDir.is_run(run_dir) else {}
    method = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    if method.get("base_adapters"):
        raise WhetstoneError(
            f"{run_dir}: this run's adapter was trained on top of {len(method['base_adapters'])} frozen adapter(s) "
            f"(method.base_adapters), so on the base model alone it is not the trained model. Use --run {run_dir} "
            f"(generate, eval), or `whetstone export {run_dir} --format merged` and use that as the model."
        )


def _run_base(config: dict | None) -> str | None:
    if not config:
        return None
    model = config.get("model")
    return model.get("name") if isinstance(model, dict) else model


def _adapter_base(adapter_dir: Path) -> str | None:
    return json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")


def _run_task(config: dict | None) -> str | None:
    train = ((config or {}).get("data") or {}).get("train")
    if isinstance(train, list):
        tasks = sorted({s.get("task") for s in train if isinstance(s, dict) and s.get("task")})
        return "+".join(tasks) or None
    return None


def _metrics(summary: dict) -> dict[str, float]:
    """The run's headline numbers: losses, and the scalar eval results when present."""
    metrics = {k: summary[k] for k in ("train_loss", "eval_loss", "eval_ppl")
               if isinstance(summary.get(k), (int, float))}
    evals = summary.get("eval")
    if isinstance(evals, dict):
        for key, value in evals.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"eval.{key}"] = value
    return metrics


def _base_bytes(base: str) -> int:
    """The size of one full copy: the base model's weight files as stored."""
    try:
        from whetstone.models.load import resolve_model

        path = Path(resolve_model(base).path)
    except WhetstoneError:
        return 0
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else 0


# ---------------------------------------------------------------------------
# Storage saved, and --adapter NAME.


@dataclass
class StorageSummary:
    base: str
    adapters: int
    adapter_bytes: int  # all adapters of this base together
    base_bytes: int  # one copy of the base, shared
    full_copies_bytes: int  # the same number of fully fine-tuned copies

    @property
    def saved_bytes(self) -> int:
        return self.full_copies_bytes - (self.base_bytes + self.adapter_bytes)


def storage_by_base(entries: dict[str, AdapterEntry]) -> list[StorageSummary]:
    groups: dict[str, list[AdapterEntry]] = {}
    for entry in entries.values():
        groups.setdefault(entry.base, []).append(entry)
    out = []
    for base, group in sorted(groups.items()):
        base_bytes = max(e.base_bytes for e in group)
        out.append(StorageSummary(base, len(group), sum(e.bytes for e in group), base_bytes, len(group) * base_bytes))
    return out


def resolve_adapter(spec: str, model: str | None = None, library: str | Path | None = None, *,
                    trust_remote_code: bool = False, allow_pickle: bool = False) -> tuple[str, str | None]:
    """(adapter directory, base model to load) for `--adapter SPEC [--model M]`.

    SPEC is an adapter directory, a run directory, or a name in the library. A library
    adapter brings its base; an explicit --model must be that base. A run directory whose
    config.yaml asks for powers the grants here do not give is refused (run_model_config);
    the base loads with the grants alone, whatever the run or the catalogue says.
    """
    path = Path(spec)
    if (path / "adapter_config.json").is_file():
        refuse_stacked(path.parent)
        return str(path), model
    run = RunDir(path)
    if run.is_run(path) and run.has_adapter():
        from whetstone.models.load import run_model_config

        raw = run.raw_config()
        refuse_stacked(path, raw)
        run_model_config(raw.get("model"), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                         source=run.config_path)
        return str(run.adapter_dir), model or _run_base(raw)
    lib = AdapterLibrary(library)
    if not _NAME.match(spec) or spec not in lib.entries():
        known = ", ".join(sorted(lib.entries())) or "none yet"
        raise WhetstoneError(
            f"--adapter {spec}: not an adapter directory (no adapter_config.json), a run directory, or a name in "
            f"the adapter library at {lib.root} (known: {known}). Add one with `whetstone adapters add NAME RUN_DIR`."
        )
    entry = lib.get(spec)
    if model is not None and not same_base(model, entry.base):
        raise WhetstoneError(f"--adapter {spec} was trained on {entry.base!r}, but --model is {model!r}; an adapter "
                             f"only works on its own base. Drop --model or pass --model {entry.base}.")
    return str(lib.path(spec)), model or entry.base


def same_base(a: str, b: str) -> bool:
    if a == b:
        return True
    from whetstone.models.load import resolve_model

    try:
        return Path(resolve_model(a).path).resolve() == Path(resolve_model(b).path).resolve()
    except WhetstoneError:
        return False
