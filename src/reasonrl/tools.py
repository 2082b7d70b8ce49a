"""Multi-turn rollouts with tool calls, as TRL 1.16's `GRPOTrainer(tools=[...])` does them.

A tool is a plain Python function (sync or async) with type hints and a Google-style docstring; transformers turns
its signature and docstring into the JSON schema the chat template renders (`apply_chat_template(tools=...)`).
One round, for the G samples of each prompt:

  1. sample a first assistant turn (rollout.generate: the lean decoder when it fits, else the model's forward);
  2. parse it: `tokenizer.parse_response` when the tokenizer has a `response_template`, else the Hermes/Qwen form
     `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` that most tool-calling chat templates use;
  3. run each call (a per-call timeout; a tool that raises, times out or returns something that cannot be turned
     into text gives an error text instead, counted as a failure), render the results as tool messages with the
     chat template, and append their tokens (`tool_suffix_ids`) to the sample;
  4. sample the next assistant turn from prompt + everything so far; repeat while a turn calls a tool, up to
     `max_tool_calling_iterations` rounds of calls and `max_completion_length` tokens in all.

A sample's completion is then its turns and the tool results between them, one token sequence. The tool tokens
are context (attended to, as in generation) but not the model's actions: `tool_mask` is 0 on them and multiplies
the loss mask, so log-probs are computed over the interleaved sequence and only the model's tokens carry loss.
Samples of one prompt may take different numbers of turns.

As TRL: a tool result that would push the completion past `max_completion_length` is dropped and the sample ends
with its tool call unanswered; a tool error becomes the tool message `{'error': '...'}`.
Where it departs: a call runs in a daemon thread with `tool_timeout` (TRL waits forever); a thread that never
returns is abandoned (Python cannot stop it), like a reward past `reward_timeout`. With tool_isolation='process'
a standalone tool runs in a forked child process instead, killed at the timeout (`call_in_process`; an
environment's methods stay in the training process, since they change the environment).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reasonrl.errors import ToolError, reason_of
from reasonrl.rollout import generate

MAX_TOOL_RESULT_CHARS = 4096
"""A tool result longer than this is cut (with a marker): it bounds the text tokenized per call."""

_EXIT = os._exit  # the real one: during training scoring.ProcessExitGuard replaces os._exit with a raise

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


# ---------------------------------------------------------------------------------------------- set-up


def load_tools(tools) -> list[Callable]:
    """The tool functions `tools` names: callables, or specs `module:function` / `path/to/file.py:function`
    (built in: `reasonrl.tools:python`, the sandboxed interpreter; `reasonrl.tasks.calculator:calculator`).
    A spec that does not import, a non-callable, two tools of one name or a function transformers cannot describe
    (no docstring, no type hints) raises ToolError."""
    if tools is None:
        return []
    if callable(tools) or isinstance(tools, str):
        tools = [tools]
    loaded = [_load_spec(tool) if isinstance(tool, str) else tool for tool in tools]
    names = set()
    for tool in loaded:
        if not callable(tool):
            raise ToolError(f"tool {tool!r:.60} is a {type(tool).__name__}, not a function; tools must be Python "
                            f"functions (or 'module:function' specs)")
        name = getattr(tool, "__name__", None)
        if not name:
            raise ToolError(f"tool {tool!r:.60} has no __name__; pass a plain function (not a partial or an object)")
        if name in names:
            raise ToolError(f"two tools are named '{name}'; tool names must be unique (the model calls them by name)")
        names.add(name)
    return loaded


def _load_spec(spec: str) -> Callable:
    return load_spec(spec, "tool", ToolError)


def load_spec(spec: str, what: str, error=ToolError):
    """The object a spec `module:attribute` or `path/to/file.py:attribute` names (as `tools` are named in a YAML
    config or on the command line); `error` (a ReasonRLError) naming `what` when it cannot be imported."""
    location, _, attribute = spec.strip().rpartition(":")
    if not location or not attribute:
        raise error(f"{what} '{spec}' is not a spec; write module:function or path/to/file.py:function")
    try:
        if location.endswith(".py") or "/" in location:
            path = Path(location).expanduser().resolve()
            module_spec = importlib.util.spec_from_file_location(f"_reasonrl_{what}_{path.stem}", path)
            if not path.is_file() or module_spec is None or module_spec.loader is None:
                raise error(f"{what} '{spec}': no Python file {path} (relative paths start at the current "
                            f"directory)")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
    except error:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever importing the user's module raises
        raise error(f"{what} '{spec}' could not be imported: {type(exc).__name__}: {reason_of(exc, 150)}") from None
    if not hasattr(module, attribute):
        raise error(f"{what} '{spec}' not found: {location} has no '{attribute}'")
    return getattr(module, attribute)


def tool_schemas(tools: list[Callable]) -> list[dict]:
    """The JSON schemas the chat template renders (transformers' get_json_schema: name, docstring, parameters)."""
    from transformers.utils import get_json_schema

    schemas = []
    for tool in tools:
        try:
            schemas.append(get_json_schema(tool))
        except Exception as error:  # noqa: BLE001 - DocstringParsingException, TypeHintParsingException
            raise ToolError(f"tool '{tool.__name__}' cannot be described to the model ({reason_of(error, 150)}); "
                            f"give it type hints and a docstring with an Args: section") from None
    return schemas


def check_tool_template(tokenizer) -> None:
    """ToolError unless the chat template renders a whole tool exchange (the call's name and arguments and the
    tool's answer) and renders earlier messages the same whatever follows (needed to cut tool tokens out of a
    conversation: `tool_suffix_ids`). As TRL's supports_tool_calling and is_chat_template_prefix_preserving."""
    if tokenizer.chat_template is None:
        raise ToolError("tools need a chat template that renders tool calls, and the tokenizer has none")
    call = [{"type": "function", "function": {"name": "tool_name_x7", "arguments": {"arg_key_x7": "arg_value_x7"}}}]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": call},
                {"role": "tool", "name": "tool_name_x7", "content": "tool_content_x7"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        head = tokenizer.apply_chat_template(messages[:2], tokenize=True, return_dict=False)
        whole = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, add_generation_prompt=True)
    except Exception as error:  # noqa: BLE001 - jinja's TemplateError and whatever the template raises
        raise ToolError(f"the chat template fails on a tool call conversation ({reason_of(error, 150)}); use a "
                        f"model whose template supports tools") from None
    missing = [s for s in ("tool_name_x7", "arg_key_x7", "arg_value_x7", "tool_content_x7") if s not in text]
    if missing:
        raise ToolError(f"the chat template does not render tool calls and tool results (it drops {missing[0]}); "
                        f"use a model whose template supports tools")
    if list(whole[: len(head)]) != list(head):
        raise ToolError("the chat template renders a conversation's earlier messages differently once a tool "
                        "message follows; multi-turn training needs a prefix-preserving template")


# ---------------------------------------------------------------------------------------------- built-in tools


def python(code: str) -> str:
    """Run a Python program in a sandbox (no network, no files outside its folder, 5 s) and return its output.

    Args:
        code: the program; print what you want to see
    """
    from reasonrl.sandbox import run_python

    result = run_python(code, timeout=5.0, memory_mb=256, max_output_bytes=2048)
    text = result.stdout + (result.stderr[-1000:] if result.stderr else "")
    if result.outcome.value != "finished":
        text += f"[{result.outcome.value}: {result.detail}]" if result.detail else f"[{result.outcome.value}]"
    return text


# ---------------------------------------------------------------------------------------------- parsing


def parse_turn(tokenizer, ids: list[int], prefix: list[int], schemas: list[dict]) -> dict:
    """One assistant turn as a message {"role": "assistant", "content": str, "tool_calls"?: [...]}.

    With a `response_template` on the tokenizer, transformers' parse_response reads it (as TRL); else the
    Hermes/Qwen form `<tool_call>{"name", "arguments"}</tool_call>`. A turn whose calls cannot be read is plain
    text (as TRL's fallback): the model wrote no usable call."""
    if getattr(tokenizer, "response_template", None) is not None:
        try:
            parsed = tokenizer.parse_response(ids, prefix=prefix, tools=schemas)
            if parsed is None:
                raise ValueError("nothing parsed")
            if isinstance(parsed.get("content"), str) and tokenizer.eos_token:
                parsed["content"] = parsed["content"].removesuffix(tokenizer.eos_token)
            parsed["content"] = parsed.get("content") or ""
            calls = parsed.get("tool_calls")
            if calls is not None and not all(_is_call(call) for call in calls):
                raise ValueError("a tool call without a name or arguments")
            return parsed
        except (ValueError, TypeError, KeyError):
            return {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}
    text = tokenizer.decode(ids, skip_special_tokens=True)
    blocks = _TOOL_CALL.findall(text)
    if not blocks:
        return {"role": "assistant", "content": text}
    calls = []
    for block in blocks:
        try:
            data = json.loads(block)
            arguments = data.get("arguments", {})
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            call = {"type": "function", "function": {"name": data["name"], "arguments": arguments}}
        except (ValueError, TypeError, KeyError, AttributeError):
            return {"role": "assistant", "content": text}
        if not _is_call(call):
            return {"role": "assistant", "content": text}
        calls.append(call)
    return {"role": "assistant", "content": text[: text.index("<tool_call>")].strip(), "tool_calls": calls}


def _is_call(call) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return (isinstance(function, dict) and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), dict))


# ---------------------------------------------------------------------------------------------- execution


@dataclass
class ToolResult:
    name: str
    content: str
    failed: bool = False
    timed_out: bool = False


def run_tool_call(call: dict, tools: dict[str, Callable], timeout: float | None,
                  isolated: frozenset = frozenset()) -> ToolResult:
    """One parsed tool call, contained: never raises. The call runs in a daemon thread when there is a timeout;
    past it the thread is abandoned (it may finish in the background; its result is dropped). A function in
    `isolated` runs in a forked child process instead, killed at the timeout (call_in_process)."""
    function = call.get("function", {})
    name = function.get("name", "unknown")
    if call.get("type", "function") != "function":
        return ToolResult(name, str({"error": f"Unsupported tool call type: {call.get('type')}"}), failed=True)
    if name not in tools:
        return ToolResult(name, str({"error": f"Tool {name} not found."}), failed=True)
    try:
        if tools[name] in isolated:
            result = call_in_process(tools[name], function.get("arguments", {}), timeout)
        else:
            result = call_with_timeout(tools[name], function.get("arguments", {}), timeout, f"tool-{name}")
    except concurrent.futures.TimeoutError:
        return ToolResult(name, str({"error": f"timed out after {timeout:g} s"}), failed=True, timed_out=True)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a tool's failure is the model's result, not ours
        kind = error.kind if isinstance(error, _ChildFailed) else type(error).__name__
        return ToolResult(name, str({"error": f"{kind}: {reason_of(error, 300)}"}), failed=True)
    try:
        content = str(result)  # a result whose __str__ raises is a failing tool too
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a tool's failure is the model's result, not ours
        return ToolResult(name, str({"error": f"{type(error).__name__}: {reason_of(error, 300)}"}), failed=True)
    if len(content) > MAX_TOOL_RESULT_CHARS:
        content = content[:MAX_TOOL_RESULT_CHARS] + "...[truncated]"
    return ToolResult(name, content)


def call_with_timeout(fn: Callable, arguments: dict, timeout: float | None, thread_name: str = "tool"):
    """fn(**arguments), awaited when it is a coroutine function; with a timeout in a daemon thread, raising
    concurrent.futures.TimeoutError past it (the thread is abandoned: Python cannot stop it). Whatever fn raises
    is raised here."""
    def call():
        if inspect.iscoroutinefunction(fn):
            return asyncio.run(fn(**arguments))
        return fn(**arguments)

    if timeout is None:
        return call()
    future: concurrent.futures.Future = concurrent.futures.Future()

    def work():
        try:
            future.set_result(call())
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(error)

    threading.Thread(target=work, name=thread_name, daemon=True).start()
    return future.result(timeout=timeout)


class _ChildFailed(Exception):
    """What a tool raised in its child process (its type name and message, which cannot cross as the object)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def call_in_process(fn: Callable, arguments: dict, timeout: float | None) -> str:
    """str(fn(**arguments)) computed in a forked child process, which is killed (SIGKILL) past `timeout`
    (concurrent.futures.TimeoutError then): a hanging tool leaves nothing behind. Fork shares the parent's memory
    copy-on-write, so any function runs (nothing is pickled but the result's text); what it changes stays in the
    child. What it raises is raised here as _ChildFailed with the type's name."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child():
        try:
            value = call_with_timeout(fn, arguments, None)
            sender.send(("ok", str(value)[: MAX_TOOL_RESULT_CHARS + 1]))
        except BaseException as error:  # noqa: BLE001 - reported to the parent, which counts the failure
            sender.send(("error", type(error).__name__, reason_of(error, 300)))
        finally:
            sender.close()
            _EXIT(0)  # no atexit handlers, no flushing of the parent's copied buffers

    process = context.Process(target=child, daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise concurrent.futures.TimeoutError
        message = receiver.recv()
    except EOFError:  # the child died without a word (os._exit in the tool, a signal, out of memory)
        process.join(1.0)
        raise _ChildFailed("ChildProcessError", f"the tool's process ended with exit code {process.exitcode}") from None
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()
    if message[0] == "ok":
        return message[1]
    raise _ChildFailed(message[1], message[2])


def tool_suffix_ids(tokenizer, tool_messages: list[dict]) -> list[int]:
    """The tokens the chat template puts after an assistant turn's EOS for these tool messages, up to and including
    the next assistant header: rendered in a dummy conversation with and without them (as TRL)."""
    calls = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": calls}]
    head = list(tokenizer.apply_chat_template(dummy, tokenize=True, return_dict=False))
    whole = list(tokenizer.apply_chat_template(dummy + tool_messages, tokenize=True, return_dict=False,
                                               add_generation_prompt=True))
    eos = [i for i, token in enumerate(head) if token == tokenizer.eos_token_id]
    if eos:  # the sampled turn ends at its EOS; what the template writes after it belongs to the suffix
        head = head[: eos[-1] + 1]
    if whole[: len(head)] != head:
        raise ToolError("the chat template is not prefix-preserving around tool messages; tool results cannot be "
                        "appended to a sampled turn")
    return whole[len(head):]


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class ToolRollout:
    """Multi-turn completions, B = prompts x G rows grouped by prompt; each row: turn, tool tokens, turn, ..."""

    completion_ids: torch.Tensor  # [B, C] right-padded with pad_token_id
    completion_mask: torch.Tensor  # [B, C] 1 on every token of the row (model turns and tool results)
    tool_mask: torch.Tensor  # [B, C] 0 on tool-result tokens (and padding), 1 on the model's tokens
    is_truncated: torch.Tensor  # [B] the last turn has no EOS within max_completion_length
    completions: list[list[dict]] = field(default_factory=list)  # per row: assistant and tool messages, as TRL
    turns: list[int] = field(default_factory=list)  # assistant turns per row
    tool_calls: int = 0
    tool_failures: int = 0  # calls that raised, timed out, returned junk, named no tool (timeouts counted too)
    tool_timeouts: int = 0
    sampling_logps: torch.Tensor | None = None  # [B, C] with a rollout_func's first turns (continue_turns)

    def counts(self, device=None) -> torch.Tensor:
        """[calls, failures, timeouts, turns, rows]: what tool_metrics needs, summable over processes."""
        return torch.tensor([self.tool_calls, self.tool_failures, self.tool_timeouts, sum(self.turns),
                             len(self.turns)], dtype=torch.float64, device=device)


def tool_metrics(counts: torch.Tensor) -> dict:
    """TRL's tools/call_frequency (calls per completion) and tools/failure_frequency (failed calls per call), and
    reasonrl's tools/timeouts (calls) and tools/mean_turns (assistant turns per completion), from `counts`; with
    environments (environments.py) a sixth count, environments/reset_failures (resets of the round that failed)."""
    calls, failures, timeouts, turns, rows, *resets = counts.tolist()
    metrics = {"tools/call_frequency": calls / max(1.0, rows),
               "tools/failure_frequency": failures / calls if calls else 0.0,
               "tools/timeouts": int(timeouts), "tools/mean_turns": turns / max(1.0, rows)}
    if resets:
        metrics["environments/reset_failures"] = int(resets[0])
    return metrics


class ToolCalling:
    """The tools of a run and its multi-turn generation; built once at start-up (`ToolCalling.build`)."""

    def __init__(self, tools: list[Callable], tokenizer, *, max_iterations: int | None, timeout: float | None,
                 isolated: list[Callable] = ()):
        self.functions = {tool.__name__: tool for tool in tools}
        self.isolated = frozenset(isolated)  # run in a killable child process (tool_isolation='process')
        self.schemas = tool_schemas(tools)
        self.tokenizer = tokenizer
        self.max_iterations = max_iterations
        self.timeout = timeout
        check_tool_template(tokenizer)

    @classmethod
    def build(cls, tools, tokenizer, prompts: list, args,
              standalone: list[Callable] | None = None) -> ToolCalling | None:
        """None without tools; ToolError for tools that cannot work (see load_tools) or prompts that are not
        conversations (only a chat template renders tools). `standalone`: the tools that are no environment's
        methods (all of them by default), those tool_isolation='process' runs in a child process."""
        from reasonrl.data import is_conversational

        tools = load_tools(tools)
        if not tools:
            return None
        standalone = tools if standalone is None else standalone
        if prompts and not is_conversational(prompts[0]):
            raise ToolError("tools need conversational prompts (lists of {role, content} messages, rendered by the "
                            "chat template with the tools); the dataset's prompts are plain text")
        isolated = standalone if args.tool_isolation == "process" else ()
        return cls(tools, tokenizer, max_iterations=args.max_tool_calling_iterations, timeout=args.tool_timeout,
                   isolated=isolated)

    def generate(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, num_generations: int,
                 max_new_tokens: int, eos_token_id, pad_token_id: int, seeds: list[int] | None = None,
                 generator: torch.Generator | None = None, row_tools: list[dict] | None = None,
                 **sampling) -> ToolRollout:
        """Multi-turn completions for prompt_ids [N, P] (left-padded, rendered with the tools); `sampling` as
        rollout.generate (temperature, top_p, top_k, repetition_penalty, greedy, lean). `row_tools`: the
        functions each of the N*G rows may call ({name: function}, an environment's bound methods), else the run's.

        Randomness: turn 1 as rollout.generate; a later turn of row j of prompt i samples from its own seed
        (seeds[i], j, turn), so no row depends on which others called tools (or on the batch, or a resume)."""
        g = num_generations
        ids, mask, _, _ = generate(model, prompt_ids, prompt_mask, num_generations=g, max_new_tokens=max_new_tokens,
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, seeds=seeds,
                                   generator=generator, **sampling)
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask) for _ in range(g)]
        completions = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        return self.continue_turns(model, prompts, completions, num_generations=g, max_new_tokens=max_new_tokens,
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, seeds=seeds,
                                   generator=generator, row_tools=row_tools, device=prompt_ids.device, **sampling)

    def continue_turns(self, model, prompts: list[list[int]], completions: list[list[int]], *, num_generations: int,
                       max_new_tokens: int, eos_token_id, pad_token_id: int, device, seeds: list[int] | None = None,
                       generator: torch.Generator | None = None, row_tools: list[dict] | None = None,
                       first_mask: list[list[int]] | None = None, first_logps: list[list[float]] | None = None,
                       **sampling) -> ToolRollout:
        """The tool loop from first turns already sampled: `completions` (token ids per row, N*G rows grouped by
        prompt) after `prompts` (the rows' prompt ids). A rollout_func's first turns come here as TRL runs its
        tool loop on them: `first_mask` (its env_mask, 1 where the model wrote) and `first_logps` (its logprobs;
        the result's sampling_logps then hold them, the later turns' and 0 on tool tokens)."""
        g, tokenizer = num_generations, self.tokenizer
        eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
        completions = [list(row) for row in completions]  # token ids per row, growing
        tool_mask = [list(m) for m in first_mask] if first_mask is not None else [[1] * len(r) for r in completions]
        logps = [list(row) for row in first_logps] if first_logps is not None else None
        messages = [[parse_turn(tokenizer, row, prompt, self.schemas)] for row, prompt in zip(completions, prompts)]
        turns = [1] * len(completions)
        result = ToolRollout(None, None, None, None, messages, turns)
        calling = [i for i, row in enumerate(completions) if _wants_tools(messages[i][-1], row, eos_ids)]
        iteration = 0
        while calling and (self.max_iterations is None or iteration < self.max_iterations):
            contexts, budgets, rows = [], [], []
            for i in calling:
                functions = self.functions if row_tools is None else row_tools[i]
                results = [run_tool_call(call, functions, self.timeout, self.isolated)
                           for call in messages[i][-1]["tool_calls"]]
                result.tool_calls += len(results)
                result.tool_failures += sum(r.failed for r in results)
                result.tool_timeouts += sum(r.timed_out for r in results)
                tool_messages = [{"role": "tool", "name": r.name, "content": r.content} for r in results]
                suffix = tool_suffix_ids(tokenizer, tool_messages)
                room = max_new_tokens - len(completions[i]) - len(suffix)
                if room < 1:  # the results do not fit: the row ends with its call unanswered (as TRL)
                    continue
                messages[i].extend(tool_messages)
                completions[i] = completions[i] + suffix
                tool_mask[i] = tool_mask[i] + [0] * len(suffix)
                if logps is not None:
                    logps[i] = logps[i] + [0.0] * len(suffix)
                contexts.append(prompts[i] + completions[i])
                budgets.append(room)
                rows.append(i)
            if not rows:
                break
            width = max(len(context) for context in contexts)
            context_ids = torch.tensor([[pad_token_id] * (width - len(c)) + c for c in contexts], device=device)
            context_mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
            turn_seeds = None if seeds is None else [_turn_seed(seeds[i // g], i % g, iteration + 1) for i in rows]
            new_ids, new_mask, new_logps, _ = generate(model, context_ids, context_mask, num_generations=1,
                                                       max_new_tokens=max(budgets), eos_token_id=eos_token_id,
                                                       pad_token_id=pad_token_id, seeds=turn_seeds,
                                                       generator=generator, **sampling)
            for k, i in enumerate(rows):
                turn = new_ids[k][new_mask[k].bool()].tolist()[: budgets[k]]
                messages[i].append(parse_turn(tokenizer, turn, contexts[k], self.schemas))
                completions[i] = completions[i] + turn
                tool_mask[i] = tool_mask[i] + [1] * len(turn)
                if logps is not None:
                    logps[i] = logps[i] + new_logps[k][new_mask[k].bool()].tolist()[: len(turn)]
                turns[i] += 1
            calling = [i for i in rows if _wants_tools(messages[i][-1], completions[i], eos_ids)]
            iteration += 1

        width = max(len(row) for row in completions)
        if logps is not None:
            result.sampling_logps = torch.tensor([row + [0.0] * (width - len(row)) for row in logps], device=device)
        result.completion_ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in completions],
                                             device=device)
        result.completion_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in completions],
                                              device=device)
        result.tool_mask = torch.tensor([row + [0] * (width - len(row)) for row in tool_mask], device=device)
        result.is_truncated = torch.tensor([not row or row[-1] not in eos_ids for row in completions], device=device)
        return result


def _wants_tools(message: dict, ids: list[int], eos_ids: set) -> bool:
    """A turn that called a tool and ended (a turn cut by the length limit leaves no room for results)."""
    return bool(message.get("tool_calls")) and bool(ids) and ids[-1] in eos_ids


def _turn_seed(prompt_seed: int, sample: int, turn: int) -> int:
    return (int(prompt_seed) * 1_000_003 + sample * 7_919 + turn) % (2**63)
