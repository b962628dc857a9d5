"""Chat completions (docs/serve.md, "Chat completions"): the pure message/reply rules of
cwm.serve.chat, pinned against the release's texts, then `cwm serve` over HTTP with the `openai`
client: a real tiny model, taught here (a few seconds of training) to answer one request with
reasoning and two tool calls, so that the whole path (prompt, generation, parsing, streaming)
runs for real. Nothing is mocked.
"""

import json
import re

import httpx
import openai
import pytest
import torch

from conftest import make_tiny_checkpoint, serving
from cwm.backends import LocalBackend
from cwm.serve import chat
from cwm.serve.chat import ChatError, parse_reply, prepare_tools, prompt_ids, render_messages, settled

BASH = {"type": "function", "function": {
    "name": "Bash", "description": "Run a command.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"],
                   "additionalProperties": False}}}
EDIT = {"type": "function", "function": {"name": "Edit", "parameters": {"type": "object", "properties": {
    "file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}}}}}
WRITE = {"type": "function", "function": {"name": "Write", "parameters": {"type": "object", "properties": {
    "file_path": {"type": "string"}, "content": {"type": "string"}}}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "array", "description": "days ahead", "items": {"type": "integer"}},
    }, "required": ["city"], "additionalProperties": False}}}

# The release's serve/tools.py prepare_tools([BASH, WEATHER]) message, byte for byte (computed by
# running the release's file on these two tools).
RELEASE_TOOLS_MESSAGE = (
    'You have access to the following tools:\n<tool: bash>\n[command(s)]\n</tool>\nExecutes bash command(s) '
    '[command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single '
    'or multi-line.\n\n<tool: get_weather>\n[json params]\n</tool>\nThe weather of a city.\n\nParameters must '
    'respect the following schema: {\n  "type": "object",\n  "properties": {\n    "city": {\n      "type": '
    '"string",\n      "enum": null,\n      "description": "the city"\n    },\n    "unit": {\n      "type": '
    '"string",\n      "enum": [\n        "c",\n        "f"\n      ],\n      "description": null\n    },\n    '
    '"days": {\n      "type": "array",\n      "description": "days ahead",\n      "items": {\n        "type": '
    '"integer",\n        "enum": null,\n        "description": null\n      },\n      "minItems": 0\n    }\n  },\n'
    '  "required": [\n    "city"\n  ],\n  "additionalProperties": false\n}\nRequired parameters: city\n\nExample:'
    '\n<tool: get_weather>\n{"city": "text_b", "unit": \'c\', "days": [<a integer>, <a integer>, <a integer>]}'
    '\n</tool>'
)
RELEASE_EDIT = (
    "<tool: edit>\n[path]\n<<<<<<< SEARCH\n[search_lines]\n=======\n[replacement_lines]\n>>>>>>> REPLACE\n"
    "</tool>\nReplaces [search_lines] from [path] with [replacement_lines], where [path] must exist and "
    "[search_lines] must uniquely and exactly match one or more consecutive lines from the original file, "
    "including indentations and whitespaces."
)
RELEASE_CREATE = (
    "<tool: create>\n[path]\n[content]\n</tool>\nCreates a new file at [path] with [content], where [path] must "
    "not exist, but its parent directory must exist."
)
HEX_ID = re.compile(r"^(\w+)-[0-9a-f]{32}$")
TIMEOUT = 120  # seconds: a busy 2-core machine generates slowly


# --- tools ---------------------------------------------------------------------------------------


def test_the_tools_system_message_is_the_releases_text():
    assert chat.tools_message(prepare_tools([BASH, WEATHER])) == RELEASE_TOOLS_MESSAGE
    # Edit and Write are the model's edit and create (their schemas leave out `required`: accepted)
    assert chat.tools_message(prepare_tools([EDIT, WRITE])) == (
        "You have access to the following tools:\n" + RELEASE_EDIT + "\n\n" + RELEASE_CREATE)
    assert [(t.api_name, t.name) for t in prepare_tools([BASH, EDIT, WRITE, WEATHER])] == [
        ("Bash", "bash"), ("Edit", "edit"), ("Write", "create"), ("get_weather", "get_weather")]
    assert chat.tools_message(prepare_tools([])) is None and prepare_tools(None) == []


def test_a_claude_code_name_without_its_parameters_is_a_plain_function_tool():
    odd = {"type": "function", "function": {"name": "Bash", "parameters": {
        "type": "object", "properties": {"cmd": {"type": "string"}}}}}
    (tool,) = prepare_tools([odd])
    assert tool.name == "Bash" and "[json params]" in tool.describe()


def test_a_schema_the_releases_models_cannot_read_is_described_as_given():
    """anyOf, a list of types, no type: valid JSON Schema that the release drops the tool for."""
    parameters = {"type": "object", "properties": {
        "path": {"type": "string"}, "mode": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "any": {}},
        "required": ["path"]}
    (tool,) = prepare_tools([{"type": "function", "function": {"name": "read", "parameters": parameters}}])
    assert tool.describe() == (
        "<tool: read>\n[json params]\n</tool>\nParameters must respect the following schema: "
        + json.dumps(parameters, indent=2) + "\nRequired parameters: path\n\nExample:\n<tool: read>\n"
        '{"path": "text_b", "mode": <a value>, "any": <a value>}\n</tool>')
    # and Bash with such a schema is still the model's bash
    bash = {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object", "properties": {
        "command": {"type": "string"}, "timeout": {"type": ["number", "null"]}}}}}
    assert prepare_tools([bash])[0].name == "bash"


@pytest.mark.parametrize("tools, words", [
    ("Bash", "list"),
    ([{"type": "retrieval"}], "only function tools"),
    ([{"type": "function", "function": {"name": "get-weather"}}], "letters, digits and underscores"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "object schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": [1]}}}],
     "object schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "a"}}}],
     "object schema"),
    ([BASH, {"type": "function", "function": {"name": "bash"}}], "two tools"),
])
def test_bad_tools_are_named(tools, words):
    with pytest.raises(ChatError, match=words):
        prepare_tools(tools)


# --- messages to prompt --------------------------------------------------------------------------


def test_messages_render_in_the_releases_chat_format(tok):
    tools = prepare_tools([BASH, WEATHER])
    messages = [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": [{"type": "text", "text": "Files "}, {"type": "text", "text": "and weather?"}]},
        {"role": "assistant", "content": "On it.", "reasoning_content": "Two tools.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls"}'}},
            {"id": "get_weather-" + "a" * 32, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.py\n"},  # named by the call's id
        {"role": "tool", "tool_call_id": "get_weather-" + "a" * 32, "content": "sunny"},
        {"role": "tool", "name": "Bash", "content": " x "},  # named: the model's name of Bash
    ]
    text = tok.decode(prompt_ids(tok, messages, tools, reasoning=True))
    turn = "<|start_header_id|>{}<|end_header_id|>\n\n{}"
    assert text == "<|begin_of_text|>" + "<|eot_id|>".join([
        turn.format("system", "Be brief."),
        turn.format("system", RELEASE_TOOLS_MESSAGE),  # after the last system message
        turn.format("user", "Files and weather?"),
        turn.format("assistant", "<think>\nTwo tools.\n</think>\nOn it.\n<tool: bash>\nls\n</tool>\n"
                                 "<tool: get_weather>\n{\"city\": \"Paris\"}\n</tool>"),
        turn.format("tool: bash", "a.py\n"),  # tool results are not stripped
        turn.format("tool: get_weather", "sunny"),
        turn.format("tool: bash", " x "),
        turn.format("assistant", "<think>\n"),
    ])


def test_the_tools_message_goes_first_without_a_system_message_and_developer_is_system():
    turns = render_messages([{"role": "user", "content": "hi"}], prepare_tools([BASH]))
    assert [t["role"] for t in turns] == ["system", "user"]
    turns = render_messages([{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}], [])
    assert turns == [{"role": "system", "content": "d"}, {"role": "user", "content": "u"}]


def test_edit_and_create_calls_render_as_the_model_writes_them():
    tools = prepare_tools([EDIT, WRITE])
    calls = [{"id": "e", "type": "function", "function": {"name": "Edit", "arguments": json.dumps(
                 {"file_path": "a.py", "old_string": "x = 1", "new_string": "x = 2"})}},
             {"id": "w", "type": "function", "function": {"name": "Write", "arguments": json.dumps(
                 {"file_path": "b.py", "content": "print(1)\nprint(2)"})}},
             {"id": "o", "type": "function", "function": {"name": "other", "arguments": "{}"}}]
    turn = render_messages([{"role": "assistant", "content": None, "tool_calls": calls}], tools)[-1]
    assert turn["content"] == ("<tool: edit>\na.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n</tool>\n"
                               "<tool: create>\nb.py\nprint(1)\nprint(2)\n</tool>\n<tool: other>\n{}\n</tool>")


@pytest.mark.parametrize("messages, words", [
    ([], "non-empty"),
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"content": "x"}], "unknown role None"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "only text content parts"),
    ([{"role": "user", "content": 3}], "string or a list"),
    ([{"role": "tool", "content": "out"}], "needs a 'name'"),
    ([{"role": "tool", "tool_call_id": "nowhere", "content": "out"}], "needs a 'name'"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "Bash", "arguments": "ls"}}]}],
     "Bash call must be a JSON object with command"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}], "function.name"),
    ([{"role": "user", "content": "u"}, {"role": "assistant", "content": "prefix"}], "reasoning needs a new"),
])
def test_bad_messages_are_named(tok, messages, words):
    with pytest.raises(ChatError, match=re.escape(words)):
        prompt_ids(tok, messages, prepare_tools([BASH]), reasoning=True)


def test_a_last_assistant_message_is_continued(tok):
    ids = prompt_ids(tok, [{"role": "user", "content": "u"}, {"role": "assistant", "content": "Sure, "}], [], False)
    assert tok.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\nSure, ")


def test_reasoning_switch_is_the_releases_rule():
    assert chat.reasoning_requested({"enabled": True}, None) and chat.reasoning_requested(None, "low")
    assert not chat.reasoning_requested({"enabled": False}, None) and not chat.reasoning_requested(None, None)


# --- reply to message ----------------------------------------------------------------------------

REPLY = ("Files first.\n</think>\n\nLet me look.\n<tool: bash>\nls -la\n</tool>\n"
         "<tool: get_weather>\n{\"city\": \"Paris\"}\n</tool>\n<tool: nope>\nx\n</tool>\n")


def test_a_reply_splits_into_reasoning_content_and_tool_calls():
    reply = parse_reply(REPLY, prepare_tools([BASH, WEATHER]), reasoning=True)
    assert reply.reasoning_content == "Files first."
    assert reply.content == "Let me look.\n<tool: nope>\nx\n</tool>"  # not a tool of the request: kept
    assert [c["function"] for c in reply.tool_calls] == [
        {"name": "Bash", "arguments": '{"command": "ls -la"}'},
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert [HEX_ID.match(c["id"]).group(1) for c in reply.tool_calls] == ["Bash", "get_weather"]
    assert all(c["type"] == "function" for c in reply.tool_calls)
    # without reasoning nothing is split; without tools nothing is parsed
    plain = parse_reply(REPLY, [], reasoning=False)
    assert plain.reasoning_content is None and plain.tool_calls == [] and plain.content == REPLY.strip()
    # an unclosed thought is all reasoning, and there is no content yet (null)
    assert parse_reply("still thinking", [], reasoning=True) == chat.Reply(content=None, reasoning_content="still thinking")
    assert parse_reply("done\n</think>\n", [], reasoning=True) == chat.Reply(content="", reasoning_content="done")


def test_edit_and_create_calls_parse_and_render_back_to_the_same_text():
    tools = prepare_tools([EDIT, WRITE])
    text = ("<tool: edit>\na.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n</tool>\n"
            "<tool: create>\nb.py\nprint(1)\n</tool>")
    reply = parse_reply(text, tools, reasoning=False)
    assert [json.loads(c["function"]["arguments"]) for c in reply.tool_calls] == [
        {"file_path": "a.py", "old_string": "x = 1", "new_string": "x = 2"},
        {"file_path": "b.py", "content": "print(1)"}]
    turn = render_messages([reply.message() | {"content": ""}], tools)[-1]
    assert turn["content"] == text
    # an edit without a SEARCH/REPLACE block is no call: it stays in the text
    broken = "<tool: edit>\na.py\n</tool>"
    assert parse_reply(broken, tools, False) == chat.Reply(content=broken)


@pytest.mark.parametrize("text", [
    REPLY, "  \n</think>\n  <tool: bash>\nls\n</tool> after", "a\n</think\nb", "plain answer  \n ",
    "x\n</think>\n<tool: bash>\nunclosed", "<tool: bash>\nls\n</tool>", "\n</think>\n\n<tool: get_weather>\n{}\n</tool>",
])
@pytest.mark.parametrize("reasoning", [True, False])
@pytest.mark.parametrize("tools", [[], [BASH, WEATHER]])
def test_what_a_stream_sends_is_always_a_prefix_of_the_final_message(text, reasoning, tools):
    tools = prepare_tools(tools)
    final = parse_reply(text, tools, reasoning)
    before = ("", "")
    for end in range(len(text) + 1):
        thought, content = settled(text[:end], tools, reasoning)
        assert (final.reasoning_content or "").startswith(thought) and (final.content or "").startswith(content), end
        assert thought.startswith(before[0]) and content.startswith(before[1]), end  # never taken back
        before = (thought, content)


# --- over HTTP, with the openai client -----------------------------------------------------------

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "List the files, and tell me the weather in Paris."}]
TAUGHT = ("The user wants two things.\n</think>\nLet me look.\n<tool: bash>\nls -la\n</tool>\n"
          "<tool: get_weather>\n{\"city\": \"Paris\"}\n</tool>")


@pytest.fixture(scope="module")
def taught(tmp_path_factory, tok):
    """A tiny model that answers MESSAGES (with BASH and WEATHER, reasoning on) with TAUGHT."""
    backend = LocalBackend.from_dir(make_tiny_checkpoint(tmp_path_factory.mktemp("chat"), tok, max_seq_len=2048))
    model = backend.model
    prompt = prompt_ids(tok, MESSAGES, prepare_tools([BASH, WEATHER]), reasoning=True)
    reply = tok.encode(TAUGHT) + [tok.special_id("<|eot_id|>")]
    ids = torch.tensor([prompt + reply])
    targets = ids[0, len(prompt):]
    torch.manual_seed(0)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~0.5 s a step even on a busy 2-core machine; more threads only contend
    model.train()
    try:
        for _ in range(100):
            logits = model(ids[:, :-1])[0, len(prompt) - 1:]
            loss = torch.nn.functional.cross_entropy(logits, targets)
            if torch.equal(logits.argmax(-1), targets) and loss.item() < 0.05:  # learnt, with a margin
                break
            optim.zero_grad()
            loss.backward()
            optim.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()
    assert torch.equal(logits.argmax(-1), targets), "the tiny model did not learn the reply"
    return backend


@pytest.fixture(scope="module")
def server(taught):
    with serving(taught) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


def ask(client, **more):
    body = {"model": "tiny", "messages": MESSAGES, "tools": [BASH, WEATHER], "temperature": 0,
            "extra_body": {"reasoning": {"enabled": True}}} | more
    return client.chat.completions.create(**body)


def test_openai_client_gets_reasoning_content_and_tool_calls(client, server, tok):
    out = ask(client)
    (choice,) = out.choices
    message = choice.message
    assert message.role == "assistant" and message.content == "Let me look."
    assert message.reasoning_content == "The user wants two things."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("Bash", {"command": "ls -la"}), ("get_weather", {"city": "Paris"})]
    assert all(HEX_ID.match(c.id) and c.type == "function" for c in message.tool_calls)
    assert choice.finish_reason == "tool_calls" and out.object == "chat.completion"
    prompt = prompt_ids(tok, MESSAGES, prepare_tools([BASH, WEATHER]), reasoning=True)
    generated = len(tok.encode(TAUGHT)) + 1  # and the <|eot_id|> that ended it
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        len(prompt), generated, len(prompt) + generated)
    # reasoning_effort turns reasoning on too; /chat/completions (the release's path) is the same handler
    via_effort = ask(client, extra_body={"reasoning_effort": "high"})
    assert via_effort.choices[0].message.reasoning_content == message.reasoning_content
    raw = httpx.post(server + "/chat/completions", timeout=TIMEOUT, json={
        "messages": MESSAGES, "tools": [BASH, WEATHER], "temperature": 0, "reasoning": {"enabled": True}}).json()
    assert raw["choices"][0]["message"]["content"] == "Let me look." and raw["model"] == "tiny"


def test_the_reply_goes_back_in_as_the_same_text(client, tok):
    """The assistant message a client gets, sent back, renders as exactly what the model wrote."""
    message = ask(client).choices[0].message.model_dump(exclude_none=True)
    tools = prepare_tools([BASH, WEATHER])
    ids = prompt_ids(tok, [*MESSAGES, message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                                                "content": "a.py"}], tools, reasoning=True)
    assert tok.decode(ids).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n" + TAUGHT
        + "<|eot_id|><|start_header_id|>tool: bash<|end_header_id|>\n\na.py<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")


def test_n_stop_and_max_tokens(client):
    out = ask(client, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    a, b = (c.message for c in out.choices)
    assert (a.content, a.reasoning_content) == (b.content, b.reasoning_content) == (
        "Let me look.", "The user wants two things.")
    assert [c.function for c in a.tool_calls] == [c.function for c in b.tool_calls]
    assert a.tool_calls[0].id != b.tool_calls[0].id  # every call has its own id
    # a stop string ends the reply before it: the bash call is never closed, so it is no call
    stopped = ask(client, stop=["ls"]).choices[0]
    assert stopped.finish_reason == "stop" and not stopped.message.tool_calls
    assert stopped.message.content == "Let me look.\n<tool: bash>"
    # cut off inside the thought: all of it is reasoning
    short = ask(client, max_tokens=3).choices[0]
    assert short.finish_reason == "length" and short.message.content is None
    assert "The user wants two things.".startswith(short.message.reasoning_content) and short.message.reasoning_content
    assert ask(client, max_tokens=3).usage.completion_tokens == 3


def test_streaming_sends_deltas_that_add_up_to_the_message(client):
    plain = ask(client).choices[0].message
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    thoughts = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    assert len(thoughts) > 3  # the thought streamed as it came, not in one piece
    assert "".join(thoughts) == plain.reasoning_content
    assert "".join(d.content or "" for d in deltas) == plain.content
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert [(tc.index, tc.function.name, tc.function.arguments) for tc in calls] == [
        (i, tc.function.name, tc.function.arguments) for i, tc in enumerate(plain.tool_calls)]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ask(client).usage.completion_tokens


def test_streaming_n_choices_and_plain_text(client, server):
    """Without tools or reasoning: the content streams as it comes, each choice with its index."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "def f(x):"}], "max_tokens": 20,
            "temperature": 0, "n": 2}
    plain = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert "".join(c.delta.content or "" for c in mine) == plain.choices[index].message.content
        assert mine[-1].finish_reason == plain.choices[index].finish_reason
    reply = httpx.post(server + "/v1/chat/completions", json=body, timeout=TIMEOUT)  # not asked to stream: one body
    assert reply.headers["content-type"] == "application/json" and reply.json()["object"] == "chat.completion"
    with httpx.stream("POST", server + "/v1/chat/completions", json=body | {"stream": True}, timeout=TIMEOUT) as reply:
        events = [line for line in reply.iter_lines() if line]
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])


@pytest.mark.parametrize("body, words, param", [
    ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'", "messages"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "a-b"}}]},
     "letters, digits and underscores", "tools"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "needs a 'name'", "messages"),
    ({"messages": MESSAGES, "max_tokens": 10**5}, "context", None),
    ({"messages": "hi"}, "messages", "messages"),
    ({"messages": MESSAGES, "temperature": -1}, "temperature", "temperature"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "p"}],
      "reasoning_effort": "low"}, "reasoning needs a new assistant turn", "messages"),
])
def test_bad_chat_requests_get_openais_400(client, server, body, words, param):
    with pytest.raises(openai.BadRequestError, match=re.escape(words)) as caught:
        client.chat.completions.create(model="tiny", **body)
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param
    # the same body streamed: the 400 comes before any event
    reply = httpx.post(server + "/v1/chat/completions", json=body | {"stream": True}, timeout=TIMEOUT)
    assert reply.status_code == 400 and words in reply.json()["error"]["message"]


def test_the_projects_chat_client_reads_the_same_text_as_the_local_model(server, taught):
    """`cwm eval ... --server` (cwm.eval.reasoning.OpenAIChat) against this server gets the text the
    model generates locally from the same chat (TokenChat): prompt, split and join agree."""
    from cwm.backends import Sampling
    from cwm.eval.reasoning import OpenAIChat, TokenChat

    sampling = Sampling(temperature=0, max_new_tokens=40)
    for messages in (MESSAGES, [{"role": "user", "content": "Why?"}]):
        local = TokenChat(taught).reply(messages, sampling)
        remote = OpenAIChat(server, timeout_s=TIMEOUT).reply(messages, sampling)
        assert (remote.text, remote.tokens, remote.prompt_tokens) == (local.text, local.tokens, local.prompt_tokens)
