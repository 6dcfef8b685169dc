"""LangChain's `ChatOpenAI` against the real server (default model): `bind_tools` with a forced
tool (invoked and streamed), a round trip with the tool's result, and `with_structured_output`
with a pydantic model (the default method, and `json_schema` / `function_calling`).
The `server` fixture comes from conftest.py.
"""

import pydantic
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

MODEL = "SmolLM2-135M-Instruct.Q4_1"
API_KEY = "sk-python-tests"


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 21 C in {city}."


class Person(pydantic.BaseModel):
    """A person."""

    name: str = pydantic.Field(max_length=30)
    age: int


@pytest.fixture
def llm(server):
    return ChatOpenAI(base_url=server + "/v1", api_key=API_KEY, model=MODEL, temperature=0, max_tokens=60, max_retries=0)


def test_bind_tools_round_trip(llm):
    question = HumanMessage("What is the weather in Paris?")
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    assert ai.tool_calls, ai
    call = ai.tool_calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str)
    assert call["id"].startswith("call_")
    result = get_weather.invoke(call["args"])
    answer = llm.bind_tools([get_weather]).invoke([question, ai, ToolMessage(result, tool_call_id=call["id"])])
    assert isinstance(answer.content, str)


def test_bind_tools_streamed(llm):
    merged = None
    for chunk in llm.bind_tools([get_weather], tool_choice="any").stream("What is the weather in Rome?"):
        assert isinstance(chunk, AIMessageChunk)
        merged = chunk if merged is None else merged + chunk
    assert merged.tool_calls, merged
    assert merged.tool_calls[0]["name"] == "get_weather"
    assert isinstance(merged.tool_calls[0]["args"]["city"], str)


@pytest.mark.parametrize("method", [None, "json_schema", "function_calling"])
def test_with_structured_output(llm, method):
    kwargs = {} if method is None else {"method": method}
    person = llm.with_structured_output(Person, **kwargs).invoke("Ada is 36 years old. Describe her.")
    assert isinstance(person, Person)
