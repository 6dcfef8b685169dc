"""The official `openai` Python SDK against the real stellarchat server.

Run: `.venv/bin/python -m pytest tests/python -q` (the justfile creates `.venv` and installs
`openai` and `pytest`). The fixture starts `stellarchat serve --port 0` on the default model
(binary: $STELLARCHAT_BIN, else $CARGO_TARGET_DIR or target/, debug/stellarchat) and reads its address from stdout.
"""

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import threading
import time
import urllib.request

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_FILE = ROOT / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "SmolLM2-135M-Instruct.Q4_1"
API_KEY = "sk-python-tests"
GOLDEN = ROOT.parent / "shared" / "golden" / "smollm2-135m-instruct-q4_1.json"


def golden_capital():
    data = json.loads(GOLDEN.read_text())
    return next(c for c in data["chats"] if c["name"] == "capital")


@pytest.fixture(scope="session")
def server():
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    binary = os.environ.get("STELLARCHAT_BIN") or str(target / "debug" / "stellarchat")
    assert pathlib.Path(binary).exists(), f"{binary} is missing: cargo build -p stellarchat"
    assert MODEL_FILE.exists(), f"{MODEL_FILE} is missing: just weights"
    proc = subprocess.Popen(
        [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--model", str(MODEL_FILE), "--api-key", API_KEY],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Drain stderr so the server never blocks on a full pipe.
    log = []
    threading.Thread(target=lambda: [log.append(line) for line in proc.stderr], daemon=True).start()
    base = None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on http://"):
            base = line.strip()[len("listening on "):]
            break
    assert base, "the server did not start:\n" + "".join(log)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/ready") as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(0.2)
    else:
        pytest.fail("the server did not become ready:\n" + "".join(log))
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)


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
