"""The Responses API (`/v1/responses`) through the official openai SDK against the real server:
`responses.create`, `responses.stream` and `create(stream=True)`, `responses.parse` with a
pydantic model, a function tool round trip with `previous_response_id`, and stored responses
(`retrieve`, `delete`). The `server` and `client` fixtures come from conftest.py.
"""

import json
import pathlib

import openai
import pydantic
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"
GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "smollm2-135m-instruct-q4_1.json"
QUESTION = "What is the capital of France?"

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def capital():
    data = json.loads(GOLDEN.read_text())
    chat = next(c for c in data["chats"] if c["name"] == "capital")
    # The golden chat is this one question (the template adds its default system prompt).
    assert chat["messages"] == [{"role": "user", "content": QUESTION}]
    return chat


def test_create(client, capital):
    response = client.responses.create(model=MODEL, input=QUESTION, temperature=0, metadata={"suite": "sdk"})
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == capital["reference_greedy_text"]
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens == len(capital["ids"])
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.metadata == {"suite": "sdk"}


def test_stream_helper_and_raw_stream(client, capital):
    with client.responses.stream(model=MODEL, input=QUESTION, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == capital["reference_greedy_text"]

    events = list(client.responses.create(model=MODEL, input=QUESTION, temperature=0, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text == capital["reference_greedy_text"]


class Place(pydantic.BaseModel):
    city: str
    country: str


def test_parse_with_a_pydantic_model(client):
    response = client.responses.parse(
        model=MODEL,
        input="Name the capital of France and its country.",
        text_format=Place,
        temperature=0,
        max_output_tokens=60,
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, Place)
    assert response.output_parsed.city


def test_function_tool_round_trip(client):
    call_response = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in call_response.output if item.type == "function_call"]
    assert calls, call_response.output
    assert calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)

    answer = client.responses.create(
        model=MODEL,
        previous_response_id=call_response.id,
        input=[
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": json.dumps({"temperature_c": 21})}
        ],
        tools=[WEATHER_TOOL],
        temperature=0,
        max_output_tokens=40,
    )
    assert answer.previous_response_id == call_response.id
    assert answer.output[0].type == "message"
    assert answer.output_text

    # Stored responses: retrieve, delete, then gone.
    assert client.responses.retrieve(call_response.id).id == call_response.id
    client.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)


def test_unknown_previous_response_and_unsupported_tools(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_unknown")
    assert e.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert e.value.param == "tools[0].type"
