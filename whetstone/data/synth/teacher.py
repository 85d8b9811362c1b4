"""The teacher that writes and rewords questions: a local model, a run, or an OpenAI-compatible endpoint.

All three stand behind one method, ``complete(conversations, max_tokens) -> texts``, greedy. The prompts and the
parsers of their replies live here too: a reply that does not parse is dropped and counted, never guessed at.

The endpoint is reached with the standard library (POST ``{url}/chat/completions``, the base URL as the openai
client takes it, e.g. ``http://127.0.0.1:8000/v1`` for `whetstone serve`); its key comes from an environment
variable (``OPENAI_API_KEY`` unless ``--teacher-key-env`` names another) and is never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Protocol

from whetstone.data.synth.chunks import Chunk
from whetstone.data.synth.grounding import content_words
from whetstone.errors import WhetstoneError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
QA_TOKENS = 96
PARAPHRASE_TOKENS = 160
_QA_REPLY = re.compile(r"\**\s*question\s*\**\s*:\s*\**\s*(.+?)\s*\**\s*answer\s*\**\s*:\s*\**\s*(.+)",
                       re.IGNORECASE | re.DOTALL)
_LIST_MARK = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022]|question\s*\d*\s*:)\s*", re.IGNORECASE)
_CODE_TOKEN = re.compile(r"`[^`]+`|\S*[._]\S*\w|--?\w[\w-]*")


class Teacher(Protocol):
    name: str  # said in the report: "smollm2-135m-instruct", "http://127.0.0.1:8000/v1 (model m)"

    def complete(self, conversations: list[list[dict]], max_tokens: int) -> list[str]: ...


class LocalTeacher:
    """A model whetstone loads (an embedded name, a directory, a hub id) or a run, generating greedily on CPU/GPU."""

    def __init__(self, model, tokenizer, name: str, batch_size: int = 8):
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size

    def complete(self, conversations: list[list[dict]], max_tokens: int) -> list[str]:
        from whetstone.models.inference import generate_answers  # lazy: imports torch

        return generate_answers(self.model, self.tokenizer, conversations, max_new_tokens=max_tokens,
                                temperature=0.0, batch_size=self.batch_size)


class EndpointTeacher:
    """Any OpenAI-compatible chat endpoint, `whetstone serve` included; one request per conversation."""

    def __init__(self, url: str, model: str | None = None, key: str | None = None, timeout_s: float = 120.0):
        self.url, self.key, self.timeout_s = url.rstrip("/"), key, timeout_s
        self.model = model or self._first_model()
        self.name = f"{self.url} (model {self.model})"

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            hint = " (the key: set it in the environment variable --teacher-key-env names)" if exc.code in (
                401, 403) else ""
            raise WhetstoneError(f"--teacher-url {self.url}: {path} answered HTTP {exc.code}{hint}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WhetstoneError(f"--teacher-url {self.url}: cannot reach it ({reason}); is the server running, and "
                                 f"is the URL its base (ending in /v1)?") from exc
        except ValueError as exc:
            raise WhetstoneError(f"--teacher-url {self.url}: {path} did not answer JSON ({exc}).") from exc

    def _first_model(self) -> str:
        models = self._request("/models").get("data") or []
        if not models or not isinstance(models[0], dict) or not isinstance(models[0].get("id"), str):
            raise WhetstoneError(f"--teacher-url {self.url}: /models lists no model; name one with --teacher.")
        return models[0]["id"]

    def complete(self, conversations: list[list[dict]], max_tokens: int) -> list[str]:
        texts = []
        for messages in conversations:
            reply = self._request("/chat/completions", {"model": self.model, "messages": messages,
                                                        "max_tokens": max_tokens, "temperature": 0})
            try:
                texts.append(reply["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError):
                texts.append("")  # counted as malformed by the parser
        return texts


def load_teacher(spec: str | None, url: str | None = None, key_env: str | None = None,
                 batch_size: int = 8) -> Teacher | None:
    """The teacher ``--teacher``/``--teacher-url`` name; None for ``--teacher none`` (extraction only)."""
    if url is not None:
        if key_env is not None and not os.environ.get(key_env):
            raise WhetstoneError(f"--teacher-key-env {key_env}: that environment variable is not set; export the "
                                 f"endpoint's key in it.")
        return EndpointTeacher(url, spec, os.environ.get(key_env or DEFAULT_KEY_ENV))
    if spec == "none":
        return None
    from whetstone.models.inference import load_for_inference  # lazy: imports torch
    from whetstone.rundir import RunDir

    if spec is not None and os.path.isdir(spec) and RunDir(spec).config_path.is_file():
        model, tokenizer = load_for_inference(run=spec)
    else:
        model, tokenizer = load_for_inference(model=spec)
    return LocalTeacher(model, tokenizer, spec or "smollm2-135m-instruct (embedded)", batch_size)


def qa_prompt(chunk: Chunk) -> list[dict]:
    where = " > ".join(x for x in (chunk.title, chunk.heading) if x)
    context = f" (from {where})" if where else ""
    return [{"role": "user", "content": (
        f"Here is a passage{context}:\n\n{chunk.text}\n\n"
        "Write one question that this passage answers, and its answer in the passage's own words. "
        "Reply in exactly this form:\nQuestion: <the question>\nAnswer: <the answer>")}]


def parse_qa(reply: str) -> tuple[str, str] | None:
    """(question, answer) from a reply in the form qa_prompt asks for; None when it is not in that form."""
    match = _QA_REPLY.search(reply)
    if not match:
        return None
    question = match.group(1).strip().splitlines()[0].strip(' *"')
    answer = re.split(r"\n\s*\n|\n\s*\**question", match.group(2), maxsplit=1, flags=re.IGNORECASE)[0]
    answer = " ".join(answer.split()).strip(' *"')
    if not question or not answer or len(question) > 300 or len(answer) > 1000:
        return None
    if _normal(answer).startswith("question") or _normal(answer) == _normal(question):  # the question, echoed
        return None
    return question, answer


def paraphrase_prompt(question: str, n: int) -> list[dict]:
    return [{"role": "user", "content": (
        f"Rewrite this question in {n} different ways. Keep its meaning and every name in it. "
        f"Write one question per line, numbered 1 to {n}.\n\nQuestion: {question}")}]


def parse_paraphrases(reply: str, question: str) -> tuple[list[str], int]:
    """(the distinct usable rewordings of ``question`` in ``reply``, how many lines were dropped).

    A line is usable when it keeps every name of the question (code, options, dotted names) and at least half
    of its content words, and is neither the question itself nor far longer than it."""
    names = set(_CODE_TOKEN.findall(question))
    words = set(content_words(question))
    seen = {_normal(question)}
    kept, dropped = [], 0
    for line in reply.splitlines():
        text = _LIST_MARK.sub("", line).strip().strip('"*').strip()
        if not text:
            continue
        shared = len(words & set(content_words(text))) / len(words) if words else 1.0
        if (_normal(text) in seen or len(text.split()) < 3 or text.lower().startswith("answer")
                or len(text) > 2 * len(question) + 40
                or not all(name.strip("`") in text for name in names) or shared < 0.5):
            dropped += 1
            continue
        seen.add(_normal(text))
        kept.append(text)
    return kept, dropped


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
