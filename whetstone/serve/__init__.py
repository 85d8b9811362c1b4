"""`whetstone serve`: a local OpenAI-compatible HTTP server for a base model and its adapters.

    POST /v1/chat/completions   messages (and tools) -> the chat template -> tokens; "stream": true sends
                                SSE chunks. The reply is taken apart as the template writes it
                                (whetstone/data/tool_parse.py): reasoning_content, content, tool_calls
    POST /v1/completions        a raw prompt, no template
    GET  /v1/models             the base model's id and every adapter's name
    GET  /health                no auth; for scripts waiting on start-up

The request's `model` field picks the weights: the base model's id, or an adapter
name. All adapters sit on one PeftModel over one copy of the base, so N adapters cost
N small weight files, and switching is `set_adapter` (no reload).

Safety: it binds 127.0.0.1 unless told otherwise; an API key can be required
(`Authorization: Bearer KEY`); without one, the Host and Origin of each request must
be this server's own (so a web page in the user's browser cannot use it). Every
request is bounded in body size, in tokens and in time, and the open connections in
number. A bad request gets a 4xx with an OpenAI-style JSON error, and no request can
take the server down: each one runs in its own thread inside a catch-all.

One generation runs at a time (a lock around the model): on CPU a second one in
parallel would only halve the speed of both. A request waits for the lock at most
its timeout, then gets 503.

The code: request.py (limits, errors, request bodies), engine.py (the model and its adapters,
generation), server.py (HTTP), commands.py (the verb).
"""

from whetstone.serve.engine import Engine, Generation, adapter_paths, check_adapter_tokenizers
from whetstone.serve.request import RequestError, ServeLimits
from whetstone.serve.server import Handler, Server, make_server

__all__ = ["Engine", "Generation", "Handler", "RequestError", "Server", "ServeLimits", "adapter_paths",
           "check_adapter_tokenizers", "make_server"]
