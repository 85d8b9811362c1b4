"""Tools a policy may call during an online rollout: Python functions a config names, run with a time limit.

    objective:
      tools: ["whetstone.tools:calculator", "my_tools.py:lookup"]
      max_tool_calls: 2          # per completion; 0: no tools
      tool_timeout: 5.0          # seconds per call

A tool is a plain Python function with typed arguments and a Google-style docstring (its schema, which the chat
template shows the model, is read from them by transformers' get_json_schema). It returns something printable.

Each call runs in a forked child process that is killed when the time limit passes. The child cannot start a
shell or another program (os.system, os.exec*, os.spawn*, os.popen and subprocess are disabled there), and what it
changes in memory stays in the child. This is a guard against a runaway or careless tool, not a security boundary
against a hostile one: name only functions you trust, as with reward functions.
"""

from __future__ import annotations

import ast
import multiprocessing
import operator
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from whetstone.errors import WhetstoneError


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}


def load_tools(specs: list[str]) -> dict[str, Tool]:
    """The tools a config names ('module:function' or 'path/file.py:function'), by name."""
    from transformers.utils import get_json_schema

    from whetstone.rewards import import_function

    tools: dict[str, Tool] = {}
    for spec in specs:
        function = import_function(spec, what="objective.tools")
        try:
            schema = get_json_schema(function)
        except Exception as exc:  # transformers raises its own DocstringParsingException / TypeHintParsingException
            raise WhetstoneError(f"objective.tools {spec!r}: cannot read its schema ({exc}). Give the function type "
                                 f"hints and a Google-style docstring with an Args: section.") from None
        name = schema["function"]["name"]
        if name in tools:
            raise WhetstoneError(f"objective.tools: two tools are named {name!r}; name each once.")
        tools[name] = Tool(name, function, schema)
    return tools


def run_tool(tool: Tool | None, arguments: dict, timeout: float) -> str:
    """The tool's answer to one call as text: its result, or an error the model can read (it never raises)."""
    if tool is None:
        return "error: no such tool"
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_call_in_child, args=(tool.function, arguments, send), daemon=True)
    child.start()
    send.close()
    answer = receive.recv() if receive.poll(timeout) else None
    child.join(0.1 if answer is not None else 0)
    if child.is_alive():
        child.kill()
        child.join()
    if answer is None:
        return f"error: {tool.name} did not answer within {timeout:g} s"
    return answer


def _call_in_child(function: Callable, arguments: dict, send) -> None:
    _no_programs()
    try:
        result = function(**arguments)
        send.send(str(result))
    except Exception as exc:  # the model sees the error, as a tool's caller would
        send.send(f"error: {type(exc).__name__}: {exc}")


def _refuse(*args, **kwargs):
    raise PermissionError("a tool may not start another program")


def _no_programs() -> None:
    for name in ("system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "posix_spawn", "posix_spawnp",
                 "fork", "forkpty"):
        if hasattr(os, name):
            setattr(os, name, _refuse)
    subprocess.Popen = _refuse  # run, call, check_output and getoutput all go through Popen


# ---------------------------------------------------------------------------
# The calculator: arithmetic on numbers, read as a syntax tree (never eval).

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers combined with + - * / // % ** and parentheses, for example "(12 + 30) * 4".
    """
    try:
        value = _evaluate(ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"),
                                    mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers and + - * / // % ** ( ) are allowed")
