"""Tool calling through the official openai SDK against the real server (default model):
`tool_choice` required, named and streamed (reassembled by the SDK's stream helper), each
followed by the tool's result and the model's answer. The fixtures come from conftest.py.
"""

import json

import openai
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def ask(client, messages, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], temperature=0, max_tokens=60, **kwargs
    )


def answer_after(client, messages, message):
    """Sends each call's result back and returns the model's answer."""
    messages = messages + [message.model_dump(exclude_none=True)]
    for call in message.tool_calls:
        result = {"temperature_c": 21, "sky": "sunny"} if call.function.name == "get_weather" else {"time": "12:00"}
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    out = ask(client, messages, tool_choice="none")
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.choices[0].message.tool_calls is None
    assert out.choices[0].message.content.strip()
    return out


def test_required_then_round_trip(client):
    out = ask(client, QUESTION, tool_choice="required")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in ("get_weather", "get_time")
        json.loads(call.function.arguments)
    answer_after(client, QUESTION, choice.message)


def test_named_then_round_trip(client):
    out = ask(client, QUESTION, tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    answer_after(client, QUESTION, choice.message)


def test_streamed_then_round_trip(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    with client.chat.completions.stream(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice=named, temperature=0, max_tokens=60
    ) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert deltas, "the arguments arrive in pieces"
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"] * len(calls)
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET", "PST")
    # The same call as without streaming (greedy).
    plain = ask(client, QUESTION, tool_choice=named).choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in plain
    ]
    answer_after(client, QUESTION, choice.message)


def test_raw_stream_deltas(client):
    stream = ask(client, QUESTION, tool_choice="required", stream=True)
    calls = {}
    finish = []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            if call.index not in calls:
                assert call.id and call.type == "function" and call.function.name and call.function.arguments == ""
                calls[call.index] = [call.function.name, ""]
            else:
                assert call.id is None and call.function.name is None
                calls[call.index][1] += call.function.arguments
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert finish == ["tool_calls"]
    assert calls
    for name, arguments in calls.values():
        json.loads(arguments)


def test_bad_tool_requests(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, QUESTION, tool_choice={"type": "function", "function": {"name": "get_stock"}})
    assert e.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, QUESTION + [{"role": "tool", "tool_call_id": "call_unknown", "content": "x"}])
    assert e.value.param == "messages[1].tool_call_id"
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[bad_schema])
    assert e.value.param == "tools[0].function.parameters"
