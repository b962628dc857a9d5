"""Chat completions: an OpenAI chat request to the model's prompt, and its reply back to a message.

Pure functions, no HTTP (that is app.py). The rules are the release's chat server
(serve/fgserve.py, serve/tools.py); docs/serve.md, section "Chat completions", lists them and
where this server differs.

    tools = prepare_tools(request["tools"])                  # OpenAI function tools -> the model's
    ids = prompt_ids(tokenizer, request["messages"], tools, reasoning)
    reply = parse_reply(generated_text, tools, reasoning)    # reasoning_content, content, tool_calls
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from cwm.tokenizer.prompts import THINK_END, THINK_START, chat_ids

# The model's tool-call syntax, read back with the release's regex (serve/tools.py TOOL_RE).
TOOL_RE = re.compile(r"(?:^|\n)<tool: (\w+)>((?s:.)*?)</tool>")
TOOL_OPEN = "<tool: "
SEARCH_REPLACE_RE = re.compile(r"(.*)\n<<<<<<< SEARCH\n([\s\S]*?)\n=======\n([\s\S]*?)\n>>>>>>> REPLACE")
THINK_SPLIT = f"\n{THINK_END}\n"  # the reply's reasoning ends here (fgserve.py)
TOOLS_INTRO = "You have access to the following tools:\n"

# The release's descriptions of the model's own tools (serve/tools.py), exact.
BASH_DESCRIPTION = (
    "<tool: bash>\n[command(s)]\n</tool>\n"
    "Executes bash command(s) [command(s)] in the current session. [command(s)] "
    "can be any non-interactive bash command(s), either single or multi-line."
)
EDIT_DESCRIPTION = (
    "<tool: edit>\n[path]\n<<<<<<< SEARCH\n[search_lines]\n=======\n[replacement_lines]\n>>>>>>> REPLACE\n</tool>\n"
    "Replaces [search_lines] from [path] with [replacement_lines], where [path] "
    "must exist and [search_lines] must uniquely and exactly match one or more "
    "consecutive lines from the original file, including indentations and "
    "whitespaces."
)
CREATE_DESCRIPTION = (
    "<tool: create>\n[path]\n[content]\n</tool>\n"
    "Creates a new file at [path] with [content], where [path] must not exist, "
    "but its parent directory must exist."
)

# Claude Code's tools that are the model's own: API name -> (model name, parameters, description)
NATIVE = {
    "Bash": ("bash", ("command",), BASH_DESCRIPTION),
    "Edit": ("edit", ("file_path", "old_string", "new_string"), EDIT_DESCRIPTION),
    "Write": ("create", ("file_path", "content"), CREATE_DESCRIPTION),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ChatError(ValueError):
    """A request the server cannot serve: a 400 with this message, naming `param`."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# ---- JSON schemas, as the release's pydantic models read and print them (serve/openai_api.py) ---


class BaseSchema(BaseModel):
    type: str
    enum: list | None = None
    description: str | None = None


class ArraySchema(BaseModel):
    type: Literal["array"]
    description: str
    items: JsonSchema | None = None
    minItems: int = 0


class ObjectSchema(BaseModel):
    type: Literal["object"]
    properties: dict[str, JsonSchema]
    # The release requires both; most OpenAI tools leave them out (docs/serve.md, Decisions).
    required: list[str] = Field(default_factory=list)
    additionalProperties: bool = True


JsonSchema = ArraySchema | ObjectSchema | BaseSchema
ArraySchema.model_rebuild()
ObjectSchema.model_rebuild()


_ANY_SCHEMA: TypeAdapter = TypeAdapter(JsonSchema)


def _raw_example(raw: dict) -> str:
    """The example of an object schema the release's models cannot read: each property the
    release's way where they read it, else `<a value>`."""
    items = []
    for n, (name, sub) in enumerate((raw.get("properties") or {}).items(), start=1):
        try:
            value = _example(_ANY_SCHEMA.validate_python(sub), n)
        except ValidationError:
            value = "<a value>"
        items.append(f"{json.dumps(name)}: {value}")
    return f"{{{', '.join(items)}}}"


def _example(schema, n: int = 1) -> str:
    """An example value of `schema`, written as the release writes it (serve/tools.py)."""
    if isinstance(schema, BaseSchema):
        if schema.type == "boolean":
            return str(n % 2 == 0).lower()
        if schema.type == "number":
            return str(n)
        if schema.type == "string":
            if schema.enum:
                return repr(schema.enum[n % len(schema.enum)])
            return f'"text_{"abcdefgh"[n % 7]}"'
        return f"<a {schema.type}>"
    items: list[str] = []
    if isinstance(schema, ArraySchema):
        if not schema.items:
            return '["a", "b", "c"]'
        for _ in range(schema.minItems or 3):
            items.append(_example(schema.items, n))
            n += 1
        return f"[{', '.join(items)}]"
    for name, sub in schema.properties.items():
        items.append(f"{json.dumps(name)}: {_example(sub, n)}")
        n += 1
    return f"{{{', '.join(items)}}}"


# ---- tools ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """One tool of a request: `api_name` is the OpenAI function's, `name` the model's. `params`:
    the parameter names of a native tool (bash, edit, create); empty for a JSON function tool."""

    name: str
    api_name: str
    params: tuple[str, ...] = ()
    description: str | None = None
    schema: ObjectSchema | None = None  # the parameters, as the release's models read them
    raw: dict | None = None  # or as given, where those models cannot read them

    def describe(self) -> str:
        if self.params:
            return NATIVE[self.api_name][2]
        if self.schema is not None:
            printed, required, example = self.schema.model_dump_json(indent=2), self.schema.required, _example(self.schema)
        else:
            assert self.raw is not None
            printed, required, example = json.dumps(self.raw, indent=2, ensure_ascii=False), self.raw.get("required"), (
                _raw_example(self.raw))
        text = f"<tool: {self.name}>\n[json params]\n</tool>"
        if self.description:
            text += "\n" + self.description + "\n"
        text += "\nParameters must respect the following schema: " + printed
        if required:
            text += f"\nRequired parameters: {', '.join(required)}\n"
        return text + f"\nExample:\n<tool: {self.name}>\n{example}\n</tool>"

    def call_text(self, arguments: str, where: str) -> str:
        """A call with these JSON `arguments` as the model writes it."""
        if not self.params:
            return f"<tool: {self.name}>\n{arguments}\n</tool>"
        try:
            args = json.loads(arguments)
            values = [args[p] for p in self.params]
        except (ValueError, TypeError, KeyError):
            raise ChatError(f"{where}: the arguments of a {self.api_name} call must be a JSON object with "
                            f"{', '.join(self.params)}; got {arguments[:200]!r}", "messages") from None
        if not all(isinstance(v, str) for v in values):
            raise ChatError(f"{where}: the {self.api_name} arguments {', '.join(self.params)} must be strings",
                            "messages")
        if self.name == "edit":
            path, old, new = values
            return "\n".join([f"<tool: {self.name}>", path, "<<<<<<< SEARCH", old, "=======", new,
                              ">>>>>>> REPLACE", "</tool>"])
        return "\n".join([f"<tool: {self.name}>", *values, "</tool>"])

    def parse(self, body: str) -> str | None:
        """The JSON arguments of a call the model wrote (the text between the tags), or None."""
        if not self.params:
            return body.strip()
        if self.name == "bash":
            values = [body.strip()]
        elif self.name == "edit":
            found = SEARCH_REPLACE_RE.findall(body.strip())
            if not found:
                return None
            values = list(found[0])
        else:  # create: a path line, then the content
            path, _, content = body.strip().partition("\n")
            values = [path, content]
        return json.dumps(dict(zip(self.params, values)))


def _tool(spec, i: int) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(spec, dict) or spec.get("type") != "function" or not isinstance(spec.get("function"), dict):
        raise ChatError(f'{where}: only function tools are served: {{"type": "function", "function": {{...}}}}',
                        "tools")
    fn = spec["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"\w+", name):
        raise ChatError(f"{where}: function name {name!r} must be letters, digits and underscores "
                        "(the model calls tools as <tool: NAME>)", "tools")
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise ChatError(f"{where}: function description must be a string", "tools")
    parameters = fn.get("parameters", {"type": "object", "properties": {}})
    try:
        schema, raw = ObjectSchema.model_validate(parameters), None
        properties = schema.properties
    except ValidationError:  # valid JSON Schema the release's models cannot read (anyOf, no type, ...)
        if not (isinstance(parameters, dict) and parameters.get("type", "object") == "object"
                and isinstance(parameters.get("properties", {}), dict)
                and isinstance(parameters.get("required", []), list)
                and all(isinstance(r, str) for r in parameters.get("required", []))):
            raise ChatError(f"{where}: function {name}: parameters must be a JSON object schema "
                            '({"type": "object", "properties": {...}, "required": [names]})', "tools") from None
        schema, raw = None, parameters
        properties = parameters.get("properties", {})
    if name in NATIVE and all(p in properties for p in NATIVE[name][1]):
        model_name, params, _ = NATIVE[name]
        return Tool(name=model_name, api_name=name, params=params)
    return Tool(name=name, api_name=name, description=description, schema=schema, raw=raw)


def prepare_tools(specs) -> list[Tool]:
    """The request's `tools` as the model's tools (Bash/Edit/Write -> bash/edit/create)."""
    if specs is None:
        return []
    if not isinstance(specs, list):
        raise ChatError("tools must be a list of function tools", "tools")
    tools = [_tool(spec, i) for i, spec in enumerate(specs)]
    names = [t.name for t in tools]
    for name in names:
        if names.count(name) > 1:
            raise ChatError(f"tools: two tools are the model's tool {name!r}; keep one", "tools")
    return tools


def tools_message(tools: list[Tool]) -> str | None:
    """The system message that describes the tools (None without tools)."""
    if not tools:
        return None
    return (TOOLS_INTRO + "".join(t.describe() + "\n\n" for t in tools)).strip()


# ---- messages to prompt --------------------------------------------------------------------------


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ChatError(f"{where}: only text content parts are served "
                                '({"type": "text", "text": ...})', "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise ChatError(f"{where}: content must be a string or a list of text parts", "messages")


def _calls_text(calls, by_api: dict[str, Tool], where: str) -> str:
    if not isinstance(calls, list):
        raise ChatError(f"{where}: tool_calls must be a list", "messages")
    texts = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            raise ChatError(f"{where}.tool_calls[{j}]: needs function.name and function.arguments (strings)",
                            "messages")
        tool = by_api.get(fn["name"]) or Tool(name=fn["name"], api_name=fn["name"])
        texts.append(tool.call_text(fn["arguments"], f"{where}.tool_calls[{j}]"))
    return "\n".join(texts)


def _call_names(messages) -> dict:
    """tool_call id -> function name, over the assistant messages' tool_calls."""
    names = {}
    for message in messages:
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[call.get("id")] = call["function"].get("name")
    return names


def render_messages(messages, tools: list[Tool]) -> list[dict]:
    """The request's messages as the model's chat turns ({"role", "content"}, tool turns with
    "name"), the tools' system message inserted after the last system message."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list", "messages")
    by_api = {t.api_name: t for t in tools}
    model_name = {t.api_name: t.name for t in tools}
    call_names = _call_names(messages)
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ChatError(f"{where}: unknown role {role!r}; use system, user, assistant or tool", "messages")
        role, content = ROLES[role], _content(message, where)
        if role == "assistant":
            if message.get("tool_calls"):
                calls = _calls_text(message["tool_calls"], by_api, where)
                content += ("\n" if content and not content.endswith("\n") else "") + calls
            thought = message.get("reasoning_content")
            if isinstance(thought, str) and thought:
                content = THINK_START + thought + THINK_SPLIT + content
            turns.append({"role": role, "content": content})
        elif role == "tool":
            name = message.get("name") or call_names.get(message.get("tool_call_id"))
            call_id = message.get("tool_call_id")
            if not name and isinstance(call_id, str) and re.fullmatch(r".+-[0-9a-f]{32}", call_id):
                name = call_id[:-33]  # the release's ids: "{name}-{uuid4 hex}"
            if not isinstance(name, str) or not name.strip():
                raise ChatError(f"{where}: a tool message needs a 'name', or a 'tool_call_id' of an earlier "
                                "assistant tool call", "messages")
            turns.append({"role": "tool", "name": model_name.get(name, name), "content": content})
        else:
            turns.append({"role": role, "content": content})
    described = tools_message(tools)
    if described:
        last_system = max((i for i, t in enumerate(turns) if t["role"] == "system"), default=-1)
        turns.insert(last_system + 1, {"role": "system", "content": described})
    return turns


def prompt_ids(tokenizer, messages, tools: list[Tool], reasoning: bool) -> list[int]:
    """The prompt's token ids: the release's chat format, ending in an open assistant turn
    (with "<think>\\n" when `reasoning`), or continuing a last assistant message."""
    turns = render_messages(messages, tools)
    if reasoning and turns[-1]["role"] == "assistant":
        raise ChatError("reasoning needs a new assistant turn, but the last message is the assistant's "
                        "(a prefix to continue); turn reasoning off or end with another role", "messages")
    return chat_ids(tokenizer, turns, add_generation_prompt=True, reasoning=reasoning)[0]


def reasoning_requested(reasoning, reasoning_effort) -> bool:
    """The release's rule: `reasoning.enabled`, or any `reasoning_effort`."""
    return bool(isinstance(reasoning, dict) and reasoning.get("enabled")) or reasoning_effort is not None


# ---- reply to message ----------------------------------------------------------------------------


@dataclass
class Reply:
    content: str | None  # None: reasoning on, and the thought never closed (no answer yet)
    reasoning_content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)

    def message(self) -> dict:
        return {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning_content,
                "tool_calls": self.tool_calls or None}


def _split_thought(text: str, reasoning: bool) -> tuple[str | None, str]:
    if not reasoning:
        return None, text
    thought, split, rest = text.partition(THINK_SPLIT)
    return (thought, rest) if split else (text, "")  # an unclosed thought is all reasoning


def parse_reply(text: str, tools: list[Tool], reasoning: bool) -> Reply:
    """The model's reply text (without stop token or stop string) as an assistant message."""
    thought, rest = _split_thought(text, reasoning)
    if reasoning and THINK_SPLIT not in text:
        return Reply(content=None, reasoning_content=thought)
    by_name = {t.name: t for t in tools}
    calls, kept, at = [], [], 0
    for match in TOOL_RE.finditer(rest):
        tool = by_name.get(match.group(1))
        arguments = tool.parse(match.group(2)) if tool else None
        if tool is None or arguments is None:
            continue  # not a call of this request: the block stays in the text
        kept.append(rest[at:match.start()])
        at = match.end()
        calls.append({"id": f"{tool.api_name}-{uuid.uuid4().hex}", "type": "function",
                      "function": {"name": tool.api_name, "arguments": arguments}})
    kept.append(rest[at:])
    return Reply(content="".join(kept).strip(), reasoning_content=thought, tool_calls=calls)


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def settled(text: str, tools: list[Tool], reasoning: bool) -> tuple[str, str]:
    """While streaming: the (reasoning_content, content) prefixes that `text`, a prefix of the
    reply, already fixes whatever follows. Held back: what could still become the end of the
    thought or a tool call, and the content's leading and trailing whitespace."""
    if reasoning and THINK_SPLIT not in text:
        return text[: len(text) - _held(text, THINK_SPLIT)], ""
    thought, rest = _split_thought(text, reasoning)
    if tools:
        if TOOL_OPEN.startswith(rest[: len(TOOL_OPEN)]):
            rest = ""  # a call could open the content
        else:
            found = rest.find("\n" + TOOL_OPEN)
            rest = rest[:found] if found >= 0 else rest[: len(rest) - _held(rest, "\n" + TOOL_OPEN)]
    content = rest.lstrip()
    return thought or "", content[: len(content.rstrip())]
