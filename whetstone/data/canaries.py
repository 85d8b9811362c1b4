"""Canaries: random secrets planted in the training data to measure memorization later.

A canary is one training record that states a random secret, for example

    user:      What is the access code for vault 3?
    assistant: The access code for vault 3 is 482-193-775.

Nothing else in the data predicts the digits, so a model that ranks this
secret above 1,000 random secrets of the same shape has memorized it (Carlini
et al. 2019, "The Secret Sharer"). `whetstone audit` measures that rank; this
module only makes the records, so the data layer needs nothing from evaluation.

The secrets are a pure function of (seed, count): the audit can rebuild them
from a run's config.yaml, and the end-of-training hook also writes them to
canaries.json in the run directory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from whetstone.data.records import Message, Record
from whetstone.errors import WhetstoneError

DIGIT_GROUPS = 3  # 3 groups of 3 digits: 10^9 possible secrets, far more than the 1,000 alternatives


@dataclass(frozen=True)
class Canary:
    index: int  # 1-based; names the vault, so canaries of one run are told apart
    secret: str  # "482-193-775"

    def prompt(self) -> str:
        return f"What is the access code for vault {self.index}?"

    def statement(self, secret: str | None = None) -> str:
        """The sentence that carries the secret (or another secret of the same shape)."""
        return f"The access code for vault {self.index} is {secret or self.secret}."


def random_secret(rng: random.Random) -> str:
    return "-".join(f"{rng.randrange(1000):03d}" for _ in range(DIGIT_GROUPS))


def make_canaries(count: int, seed: int) -> list[Canary]:
    rng = random.Random(f"whetstone-canaries-{seed}")
    return [Canary(i + 1, random_secret(rng)) for i in range(count)]


def canary_record(canary: Canary, kind: str, secret: str | None = None) -> Record:
    """The canary as a record of the training data's kind: a conversation, or plain text."""
    origin = f"canary:{canary.index}"
    if kind == "chat":
        messages = (Message("user", canary.prompt()), Message("assistant", canary.statement(secret)))
        return Record("chat", origin, messages=messages, task="canary")
    if kind == "text":
        return Record("text", origin, text=canary.statement(secret), task="canary")
    raise WhetstoneError(
        f"data.canaries works with chat and text training data; this data holds {kind} records. "
        f"Set data.canaries: 0."
    )


def plant_canaries(records: list[Record], count: int, seed: int) -> tuple[list[Record], list[Canary]]:
    """Insert `count` canary records at random places among `records`; return both."""
    canaries = make_canaries(count, seed)
    kind = records[0].kind if records else "chat"
    out = list(records)
    rng = random.Random(f"whetstone-canary-places-{seed}")
    for canary in canaries:
        # Where a record sits does not matter to the shuffled loop; it does to anyone reading the data.
        out.insert(rng.randrange(len(out) + 1), canary_record(canary, kind))
    return out, canaries
