"""Reward models: a scalar head on the backbone, trained on preference pairs (Bradley-Terry).

    r(x, y) = head(h_last)          h_last: the decoder's hidden state at the last real token
    L = -log sigmoid(r(x, y_w) - r(x, y_l) - m)

Two heads, both read the same hidden state:

- ``seq_cls``: ``score``, a bias-free Linear(H, 1), the head of transformers'
  ``*ForSequenceClassification`` with one label. A fully fine-tuned run's
  ``model/`` loads as ``AutoModelForSequenceClassification`` unchanged.
- ``value``: ``v_head``, a Linear(H, 1) with bias beside the LM head, as in
  TRL's value-head models; the causal LM keeps its LM head.

What trains beside the head is the method: ``full`` (every weight), ``freeze``
(frozen backbone, only the new head unless blocks are unfrozen) or ``lora`` (the
head is saved with the adapter through peft's ``modules_to_save``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from whetstone.config import RunConfig
from whetstone.data.records import Message
from whetstone.errors import WhetstoneError
from whetstone.methods import is_adapter_model
from whetstone.models.forward import logits_in_fp32, unwrap
from whetstone.objectives.base import LossOutput, Objective
from whetstone.objectives.logprobs import pad_rows, render_completion
from whetstone.objectives.preference import collate_pairs, count_pairs, pair_metrics, prepare_pairs
from whetstone.rundir import RunDir

HEAD_NAMES = {"seq_cls": "score", "value": "v_head"}


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Bradley-Terry pairwise loss (Bradley & Terry 1952; used for RLHF by Ouyang et al. 2022, "InstructGPT").

        L = -log sigmoid(r_w - r_l - m)

    m > 0 asks for a margin between the rewards (Touvron et al. 2023, "Llama 2").
    Takes per-pair rewards (B,), returns per-pair losses (B,).
    """
    return -F.logsigmoid(chosen - rejected - margin)


def attach_head(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """Add a new scalar head to the transformers model under `model`; register it with peft if adapted."""
    lm = unwrap(model)
    name = HEAD_NAMES[kind]
    weight = lm.get_output_embeddings().weight
    head = torch.nn.Linear(lm.config.hidden_size, 1, bias=kind == "value")
    # The initialisation transformers gives a fresh classification head.
    torch.nn.init.normal_(head.weight, std=getattr(lm.config, "initializer_range", 0.02))
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    setattr(lm, name, head.to(device=weight.device))  # fp32 on any base: it trains (methods.trainable_in_fp32)
    if kind == "seq_cls":
        lm.config.num_labels = 1  # so a saved full model loads as AutoModelForSequenceClassification
    if is_adapter_model(model):
        from peft.utils.other import set_additional_trainable_modules

        # The head trains in full beside the adapters, and PeftModel.save_pretrained stores it in adapter/.
        for adapter_name, peft_config in model.peft_config.items():
            peft_config.modules_to_save = list(peft_config.modules_to_save or []) + [name]
            set_additional_trainable_modules(model, peft_config, lm.config, adapter_name)
    return getattr(lm, name)


def sequence_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The scalar reward of each right-padded row (R,), read at its last real token."""
    lm = unwrap(model)
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (R, T, H)
    last = batch["attention_mask"].sum(dim=1) - 1  # (R,)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (R, H)
    return logits_in_fp32(getattr(lm, HEAD_NAMES[kind]), pooled).squeeze(-1)  # (R,)


# ---------------------------------------------------------------------------
# The objective.


@dataclass
class RewardContext:
    head: str  # seq_cls | value
    margin: float


def setup_reward(model, config: RunConfig, train_set, eval_set=None) -> RewardContext:
    attach_head(model, config.objective.head)
    return RewardContext(config.objective.head, config.objective.margin)


def reward_loss(model, batch: dict[str, torch.Tensor], context: RewardContext) -> LossOutput:
    n = count_pairs(batch)
    rewards = sequence_rewards(model, batch, context.head)  # (2B,): chosen rows, then rejected rows
    chosen, rejected = rewards[:n], rewards[n:]
    losses = bradley_terry_loss(chosen, rejected, context.margin)
    return LossOutput(loss_sum=losses.sum(), units=n, metrics=pair_metrics(chosen, rejected))


REWARD = Objective(name="reward", prepare=prepare_pairs, collate=collate_pairs, units=count_pairs,
                   loss=reward_loss, setup=setup_reward)


# ---------------------------------------------------------------------------
# Loading a trained reward model from its run directory, and scoring with it.


@dataclass
class RewardModel:
    model: torch.nn.Module
    tokenizer: object
    head: str
    max_length: int

    @torch.no_grad()
    def score(self, prompts: list[tuple[Message, ...]], completions: list[tuple[Message, ...]],
              batch_size: int = 8) -> list[float]:
        """The reward of each (prompt, completion); completions are assistant turns."""
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(prompts), batch_size):
            rows = []
            for prompt, completion in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
                rendered = render_completion(self.tokenizer, prompt, completion, self.max_length)
                rows.append((rendered.input_ids, rendered.labels))
            batch = {k: v.to(device) for k, v in pad_rows(rows, self.tokenizer.pad_token_id).items()}
            out += sequence_rewards(self.model, batch, self.head).tolist()
        return out


def load_reward_model(run: str | Path, device: torch.device | str = "cpu", *, trust_remote_code: bool = False,
                      allow_pickle: bool = False) -> RewardModel:
    """The reward model of a finished `objective: reward` run: base + adapter + head, or model/ + head.

    Its model gets only the powers granted here, whatever the run's config.yaml asks (see run_model_config).
    """
    from whetstone.models import load_tokenizer
    from whetstone.models.headed import load_headed_run

    found = RunDir.open(run, flag="reward run")
    config = found.config(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if config.objective.name != "reward":
        raise WhetstoneError(
            f"reward run {run}: it was trained with objective '{config.objective.name}', not 'reward'; "
            f"train a reward model with objective: reward and point at its run directory."
        )
    kind = config.objective.head
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    model = load_headed_run(found.path, config, lambda m: attach_head(m, kind), HEAD_NAMES[kind], f"reward run {run}",
                            device)
    return RewardModel(model, tokenizer, kind, config.data.max_length)
