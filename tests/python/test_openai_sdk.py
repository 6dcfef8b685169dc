"""The official `openai` Python SDK against the real stellarchat server.

Run: `just test-python` (the justfile creates `.venv` and installs `openai` and `pytest`). The
server and client fixtures are conftest.py's: one `stellarchat serve --port 0` on the default
model for the whole session.
"""

import asyncio
import json

import openai
import pytest
from conftest import API_KEY, MODEL, ROOT

# The golden data, copied byte-identical into the repository (tests/golden/README.md).
GOLDEN = ROOT / "tests" / "golden" / "smollm2-135m-instruct-q4_1.json"


def golden_capital():
    data = json.loads(GOLDEN.read_text())
    return next(c for c in data["chats"] if c["name"] == "capital")


@pytest.fixture
def capital():
    return golden_capital()


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_sync(client, capital):
    out = client.chat.completions.create(model=MODEL, messages=capital["messages"], temperature=0)
    assert out.choices[0].message.content == capital["reference_greedy_text"]
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == len(capital["ids"])


def test_chat_stream_with_usage(client, capital):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=capital["messages"],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == capital["reference_greedy_text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == len(capital["ids"])


def test_chat_async(server, capital):
    async def main():
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
        out = await client.chat.completions.create(model=MODEL, messages=capital["messages"], temperature=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=capital["messages"], temperature=0, stream=True
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        await client.close()
        return out.choices[0].message.content, text

    non_stream, streamed = asyncio.run(main())
    assert non_stream == capital["reference_greedy_text"]
    assert streamed == capital["reference_greedy_text"]


def test_completions(client, capital):
    out = client.completions.create(model=MODEL, prompt=capital["prompt"], max_tokens=20, temperature=0)
    assert out.choices[0].text == capital["reference_greedy_text"]
    stream = client.completions.create(model=MODEL, prompt=capital["prompt"], max_tokens=20, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == capital["reference_greedy_text"]


def test_seed_reproducibility(client, capital):
    def sample():
        out = client.chat.completions.create(
            model=MODEL, messages=capital["messages"], temperature=1.0, seed=7, max_tokens=16
        )
        return out.choices[0].message.content

    assert sample() == sample()


def test_stop(client, capital):
    out = client.chat.completions.create(model=MODEL, messages=capital["messages"], temperature=0, stop=[" Paris"])
    assert out.choices[0].message.content == "The capital of France is"
    assert out.choices[0].finish_reason == "stop"


def test_max_tokens_length(client, capital):
    out = client.chat.completions.create(model=MODEL, messages=capital["messages"], temperature=0, max_tokens=3)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 3


def test_bad_request(client, capital):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=capital["messages"], temperature=7)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=capital["messages"], tools=[{"type": "function", "function": {"name": "bad name"}}]
        )
    assert e.value.param == "tools[0].function.name"


def test_not_found(client, capital):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=capital["messages"])
    assert e.value.code == "model_not_found"


def test_authentication(server, capital):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
