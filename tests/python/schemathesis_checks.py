"""Schemathesis checks for StellarChat, loaded by `st run` through $SCHEMATHESIS_HOOKS
(see test_schemathesis.py).

`positive_data_accepted` is schemathesis' `positive_data_acceptance` (a request valid for
/openapi.json must not be refused with a 4xx other than 401/403/404/409/429) with two
exceptions that /openapi.json documents and a JSON schema cannot state: 400
`context_length_exceeded` (it depends on how the prompt tokenizes) and 400 for a
`previous_response_id` the server does not hold (as OpenAI answers; a schema cannot know
which ids exist).
"""

import json

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


def _error(response):
    try:
        return json.loads(response.text)["error"]
    except (ValueError, KeyError, TypeError):
        return {}


@schemathesis.check
def positive_data_accepted(ctx, response, case):
    if response.status_code == 400:
        error = _error(response)
        if error.get("code") == "context_length_exceeded" or error.get("param") == "previous_response_id":
            return None
    return positive_data_acceptance(ctx, response, case)
