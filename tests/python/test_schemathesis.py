"""Schema tests: schemathesis against /openapi.json of the real binary.

The server runs the `synthetic:tiny` model (random weights, milliseconds per token) with
small limits (`--max-tokens-limit 8`, `--max-n 2`) that the description states, so most
generated requests reach generation and the run stays short; it has an API key, which the
description requires on the API routes, and schemathesis sends it. Checks: no 5xx, every status
and content type documented, every JSON body valid for its schema, and no schema-valid
request refused (`positive_data_accepted`, schemathesis_checks.py).

STELLARCHAT_SCHEMATHESIS_EXAMPLES (default 12) sets the examples per operation and phase;
`just schemathesis` runs a longer session. STELLARCHAT_SCHEMATHESIS_SEED fixes the seed
(default: a fixed one, so CI runs are repeatable). Streaming answers (`stream: true`) are
`text/event-stream`: schemathesis checks their status and content type, not the events
(the SSE tests in tests/tests/ and test_openai_sdk.py do).
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import API_KEY, serve

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "positive_data_accepted",
])


def st_binary():
    found = pathlib.Path(sys.executable).parent / "st"
    return str(found) if found.exists() else shutil.which("st")


@pytest.fixture(scope="module")
def tiny_server():
    yield from serve(["--model", "synthetic:tiny", "--max-tokens-limit", "8", "--max-n", "2", "--api-key", API_KEY],
                     ready_timeout=60)


def test_every_operation_conforms_to_the_openapi_description(tiny_server, tmp_path):
    base, log = tiny_server
    st = st_binary()
    assert st, "schemathesis is missing: just venv"
    examples = os.environ.get("STELLARCHAT_SCHEMATHESIS_EXAMPLES", "12")
    seed = os.environ.get("STELLARCHAT_SCHEMATHESIS_SEED", "2026")
    env = dict(os.environ, SCHEMATHESIS_HOOKS=str(pathlib.Path(__file__).with_name("schemathesis_checks.py")))
    # The WebSocket (GET /v1/chat/ws) and the docs page are not JSON operations.
    cmd = [
        st, "run", base + "/openapi.json",
        "--header", f"Authorization: Bearer {API_KEY}",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", examples,
        "--seed", seed,
        # One worker: hypothesis' lambda descriptions (ast.parse) are not thread-safe on
        # Python 3.11 ("AST constructor recursion depth mismatch").
        "--workers", "1",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--no-color",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    print(run.stdout[-20000:])
    assert run.returncode == 0, (
        f"schemathesis found failures (rc {run.returncode}):\n{run.stdout[-20000:]}\n{run.stderr[-4000:]}"
        f"\nserver log tail:\n{''.join(log[-40:])}"
    )
