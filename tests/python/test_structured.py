"""Structured outputs through the official openai SDK against the real server (default model):
`chat.completions.parse` with a pydantic model (a strict json_schema), JSON mode, and a
schema the server refuses. The fixtures come from conftest.py.
"""

import json

import openai
import pydantic
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population_millions: float


class Trip(pydantic.BaseModel):
    destination: City
    days: int
    highlights: list[str] = pydantic.Field(max_length=3)


def test_parse_with_a_pydantic_model(client):
    out = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about Paris as JSON: its name, country and population."}],
        response_format=City,
        temperature=0,
        max_tokens=80,
    )
    message = out.choices[0].message
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, City)
    assert message.parsed == City.model_validate_json(message.content)


def test_parse_nested_models(client):
    out = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Plan a short trip to Rome as JSON."}],
        response_format=Trip,
        temperature=0,
        max_tokens=150,
    )
    trip = out.choices[0].message.parsed
    assert isinstance(trip, Trip) and isinstance(trip.destination, City)
    assert len(trip.highlights) <= 3


def test_json_mode(client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply in JSON: what is the capital of France?"}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=80,
    )
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_refused_schema(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}},
        )
    assert e.value.param == "response_format"
