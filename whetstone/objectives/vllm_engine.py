"""vLLM rollouts (objective.engine: vllm): a vLLM copy of the policy on the same GPU samples, the policy trains.

    rollout   VLLMEngine.generate: token ids in, new token ids out (the `Generate` of tool_rollouts.py), with the
              distribution the hf path samples from: temperature, top-p, no top-k, no repetition penalty, stopping
              at the template's end of turn or EOS (whetstone's stop ids, not vLLM's own EOS)
    update    the policy, as with the hf engine: the log-probs of the update are the policy's own, recomputed on
              the sampled tokens, so vLLM only decides WHICH tokens are sampled
    sync      VLLMEngine.sync: the policy's weights written into vLLM's model (each LoRA/DoRA layer merged into a
              copy of its base weight, under the checkpoint's names), then vLLM's prefix cache dropped

The engine runs in this process beside the policy (vLLM's "colocate" mode, as TRL's GRPOTrainer runs it), so a
sync copies GPU to GPU and holds one merged layer at a time. The cost is a second copy of the weights in GPU memory
plus vLLM's KV cache, objective.vllm_gpu_memory_utilization of the GPU in all.

vllm is imported inside these functions only: importing whetstone never imports it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Iterator

import torch

from whetstone.config import RunConfig
from whetstone.data.render import stop_ids
from whetstone.errors import WhetstoneError
from whetstone.models import resolve_model
from whetstone.models.forward import unwrap

# ppo's value head is whetstone's, registered on the policy as v_head (online.py): no checkpoint holds it.
NOT_IN_CHECKPOINT = ("v_head",)


def require_vllm() -> None:
    """Fail before any work when objective.engine vllm cannot run here: it needs a CUDA GPU and the vllm package."""
    if not torch.cuda.is_available():
        raise WhetstoneError("objective.engine: vllm samples on a CUDA GPU, and torch sees none on this machine; set "
                             "objective.engine: hf (the default), which samples with the policy on any device.")
    if importlib.util.find_spec("vllm") is None:
        raise WhetstoneError("objective.engine: vllm needs the vllm package, which is not installed in this "
                             "environment: pip install vllm (in the GPU machine's environment; it pins the torch "
                             "build it was compiled for). Or set objective.engine: hf (the default).")


class VLLMEngine:
    """One vllm.LLM of the policy's model, in this process, sampling rollouts; `sync` gives it the policy's weights."""

    def __init__(self, model_path: str, *, dtype: torch.dtype, seed: int, stops: list[int], temperature: float,
                 top_p: float, max_model_len: int, gpu_memory_utilization: float, revision: str | None = None,
                 trust_remote_code: bool = False):
        # vLLM's engine core runs in a subprocess by default; in this process, `sync` reaches its model directly
        # (apply_model runs on the model without serialising the tensors).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            from vllm import LLM
        except ImportError as exc:
            raise WhetstoneError(f"objective.engine: vllm: importing vllm failed ({exc}); reinstall it (pip install "
                                 f"vllm) or set objective.engine: hf.") from None
        self.llm = LLM(model=model_path, revision=revision, trust_remote_code=trust_remote_code,
                       dtype=str(dtype).removeprefix("torch."), seed=seed, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization,
                       enforce_eager=True)  # no CUDA-graph capture: its start-up time and memory beside the policy
        self.stops, self.temperature, self.top_p, self.max_model_len = list(stops), temperature, top_p, max_model_len

    @classmethod
    def for_run(cls, model, config: RunConfig, tokenizer, autocast) -> VLLMEngine:
        """The engine of a run: the policy's checkpoint, computing in the policy's dtype (bf16 under bf16 autocast),
        seeded by train.seed, with room for data.max_length tokens (prompt and completion)."""
        context = autocast()
        dtype = context.fast_dtype if isinstance(context, torch.autocast) else unwrap(model).dtype
        obj = config.objective
        return cls(resolve_model(config.model.name).path, dtype=dtype, seed=config.train.seed,
                   stops=stop_ids(tokenizer), temperature=obj.temperature, top_p=obj.top_p,
                   max_model_len=config.data.max_length, gpu_memory_utilization=obj.vllm_gpu_memory_utilization,
                   revision=config.model.revision, trust_remote_code=config.model.trust_remote_code)

    def generate(self, contexts: list[list[int]], max_new_tokens: int, seed: int | None = None) -> list[list[int]]:
        """Each context's new tokens, up to and including the first stop token (`Generate`, tool_rollouts.py).

        `seed` fixes row i's sample with seed + i (the held-out evaluation); without it, the engine's own
        generator (seeded by train.seed) draws, so the G copies of a grpo prompt draw different completions.
        """
        from vllm import SamplingParams, TokensPrompt

        params = [SamplingParams(n=1, temperature=self.temperature, top_p=self.top_p, top_k=-1, min_p=0.0,
                                 repetition_penalty=1.0, stop_token_ids=self.stops,
                                 ignore_eos=True,  # the stops are whetstone's alone, as in the hf path
                                 max_tokens=max(1, min(max_new_tokens, self.max_model_len - len(ids))),
                                 seed=None if seed is None else seed + row, detokenize=False)
                  for row, ids in enumerate(contexts)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in contexts], params,
                                    use_tqdm=False)
        return [through_first_stop(list(output.outputs[0].token_ids), self.stops) for output in outputs]

    def sync(self, model) -> None:
        """Write the policy's current weights into vLLM's model, and drop the KV blocks it cached for prompt
        prefixes: they were computed with the old weights."""
        weights = checkpoint_weights(model)  # a generator: one merged layer at a time is held
        self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        self.llm.reset_prefix_cache()


def through_first_stop(ids: list[int], stops: list[int]) -> list[int]:
    """`ids` up to and including the first stop token (all of them when none came)."""
    end = next((k + 1 for k, t in enumerate(ids) if t in stops), len(ids))
    return ids[:end]


@torch.no_grad()
def checkpoint_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name in the HF checkpoint, tensor) of every weight of the policy, as vLLM's `load_weights` reads them.

    A LoRA or DoRA layer is merged by peft into a copy of itself, so the base weight comes out as
    merge_and_unload would write it while the policy keeps its adapter unmerged (a merge and unmerge in place
    would round the base weights a little on every sync). A tied weight is sent once, under its first name.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    sent: set[int] = set()
    merged_layer = None  # the name of the adapter layer whose submodules were already sent, merged
    for name, module in unwrap(model).named_modules():  # unwrap: peft's base_model.model. prefix is gone
        if merged_layer is not None and name.startswith(merged_layer + "."):
            continue
        if name.split(".")[0] in NOT_IN_CHECKPOINT:
            continue
        if isinstance(module, BaseTunerLayer):
            merged_layer = name
            merged = copy.deepcopy(module)
            # B @ A in the adapter's own dtype, as merge_and_unload computes it, even when called under autocast
            with torch.autocast(merged.get_base_layer().weight.device.type, enabled=False):
                merged.merge()
            # The merged base layer's parameters are the checkpoint's, under the adapter layer's own name.
            for leaf, param in merged.get_base_layer().named_parameters(recurse=False):
                yield f"{name}.{leaf}", param.detach()
            continue
        for leaf, param in module.named_parameters(recurse=False):
            if id(param) in sent:  # the policy's own parameters live throughout, so their ids stay theirs
                continue
            sent.add(id(param))
            yield (f"{name}.{leaf}" if name else leaf), param.detach()
