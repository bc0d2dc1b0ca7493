"""The official `openai` package, unmodified, against a running safeloop-serve.

Usage: python openai_sdk_check.py BASE_URL MODEL
Exits non-zero (with the failing check) if anything does not behave as the SDK expects.
"""
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)

    # Models list.
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert model in ids, ids

    # Chat.
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hi there"}],
        max_tokens=8,
        temperature=0,
        seed=1,
        logprobs=True,
        top_logprobs=2,
    )
    choice = chat.choices[0]
    assert chat.object == "chat.completion", chat
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert len(choice.logprobs.content) == chat.usage.completion_tokens
    assert chat.system_fingerprint

    # Streaming chat, with usage.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi there"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens > 0
    # Same greedy request without streaming gives the same text.
    same = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi there"}], max_tokens=8, temperature=0
    )
    assert same.choices[0].message.content == text, (same.choices[0].message.content, text)

    # Completions with echo and log-probs.
    comp = client.completions.create(model=model, prompt="Hello world", max_tokens=4, temperature=0, echo=True, logprobs=1)
    assert comp.object == "text_completion"
    assert comp.choices[0].text.startswith("Hello world")
    assert comp.choices[0].logprobs.token_logprobs[0] is None
    assert len(comp.choices[0].logprobs.tokens) == comp.usage.prompt_tokens + comp.usage.completion_tokens

    # An invalid request raises the SDK's BadRequestError with our error object.
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], temperature=9)
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["param"] == "temperature", e.body
    else:
        raise AssertionError("temperature=9 was accepted")
    # An unknown model raises NotFoundError.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as e:
        assert e.status_code == 404
    else:
        raise AssertionError("unknown model was accepted")
    print("openai SDK checks passed")


if __name__ == "__main__":
    main()
