"""Legacy completions for evaluation tools through the official openai SDK: `echo` with
`logprobs` scores the prompt (the first token's entries are None), `max_tokens=0` returns only
the scored prompt, and lm-evaluation-harness's loglikelihood request (token ids, `echo`,
`max_tokens=1`, `logprobs=1`) has one entry per prompt token plus the generated one. The
`client` fixture comes from conftest.py.
"""

import math

import httpx
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"
CONTEXT = "The capital of France is"
CONTINUATION = " Paris"


def test_echo_with_max_tokens_0_scores_only_the_prompt(client):
    out = client.completions.create(model=MODEL, prompt=CONTEXT, echo=True, logprobs=1, max_tokens=0)
    choice = out.choices[0]
    assert choice.text == CONTEXT
    lp = choice.logprobs
    assert "".join(lp.tokens) == CONTEXT
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert out.usage.completion_tokens == 0
    assert out.usage.prompt_tokens == len(lp.tokens)


def test_lm_evaluation_harness_loglikelihood_request(client):
    # lm-evaluation-harness tokenizes context + continuation itself and sends the ids.
    root = str(client.base_url).rstrip("/").removesuffix("/v1")

    def ids(text):
        headers = {"Authorization": f"Bearer {client.api_key}"}
        return httpx.post(root + "/tokenize", json={"prompt": text}, headers=headers).json()["tokens"]

    context, whole = ids(CONTEXT), ids(CONTEXT + CONTINUATION)
    assert whole[: len(context)] == context
    out = client.completions.create(model=MODEL, prompt=whole, echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(whole) + 1
    continuation = lp.token_logprobs[len(context) : -1]
    assert len(continuation) == len(whole) - len(context)
    assert math.isfinite(sum(continuation)) and sum(continuation) < 0
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    assert "".join(lp.tokens[: len(whole)]) == CONTEXT + CONTINUATION


def test_echo_with_suffix_is_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=CONTEXT, echo=True, suffix=".", max_tokens=1)
    assert e.value.param == "suffix"
