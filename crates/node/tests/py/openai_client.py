"""Drive a ragfleet node with the official `openai` Python client (PyPI).
Usage: openai_client.py BASE_URL. Prints one JSON line with what it saw;
exits non-zero on any unexpected failure."""
import os
import json
import sys

import openai
from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base + "/v1", api_key=os.environ.get("RAGFLEET_API_KEY", "unused"), max_retries=0)
models = [m.id for m in client.models.list()]
out = {"models": models}
r = client.chat.completions.create(
    model="ragfleet/default",
    messages=[{"role": "user", "content": "Which museum is the most visited?"}],
)
out["answer"] = r.choices[0].message.content
out["finish_reason"] = r.choices[0].finish_reason
out["completion_tokens"] = r.usage.completion_tokens
out["model"] = r.model
stream = client.chat.completions.create(
    model="extractive",
    messages=[{"role": "user", "content": "How do bees communicate?"}],
    stream=True,
)
parts = []
stream_models = set()
for chunk in stream:
    stream_models.add(chunk.model)
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
out["streamed"] = "".join(parts)
out["chunks"] = len(parts)
out["stream_models"] = sorted(stream_models)
# A model the node does not have: the client raises NotFoundError with
# OpenAI's error body.
try:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Which museum is the most visited?"}],
    )
    out["unknown_model"] = "accepted"
except openai.NotFoundError as e:
    out["unknown_model"] = {
        "status": e.status_code,
        "code": e.code,
        "type": e.type,
        "param": e.param,
        "message": e.message,
    }
print(json.dumps(out))
