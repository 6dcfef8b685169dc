"""Fixtures shared by the Python suites: one `stellarchat serve --port 0` on the default model
for the whole session (binary: $STELLARCHAT_BIN, else $CARGO_TARGET_DIR or target/,
debug/stellarchat), its base URL, and an OpenAI client for it.
"""

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


def binary():
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    return os.environ.get("STELLARCHAT_BIN") or str(target / "debug" / "stellarchat")


def serve(model_args, ready_timeout=300):
    """Runs `stellarchat serve --port 0 <model_args>` until the generator is closed; yields its
    base URL and its log lines so far (stderr is drained into them so the server never blocks
    on a full pipe)."""
    bin_path = binary()
    assert pathlib.Path(bin_path).exists(), f"{bin_path} is missing: cargo build"
    proc = subprocess.Popen(
        [bin_path, "serve", "--host", "127.0.0.1", "--port", "0", *model_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    deadline = time.time() + ready_timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/ready") as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(0.2)
    else:
        pytest.fail("the server did not become ready:\n" + "".join(log))
    try:
        yield base, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def server():
    """The server's base URL (`http://127.0.0.1:PORT`): the default model, with an API key."""
    assert MODEL_FILE.exists(), f"{MODEL_FILE} is missing: just weights"
    for base, _log in serve(["--model", str(MODEL_FILE), "--api-key", API_KEY]):
        yield base


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
