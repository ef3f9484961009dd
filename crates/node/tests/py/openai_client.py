"""Drive a ragfleet node with the official `openai` Python client (PyPI).
Usage: openai_client.py BASE_URL. Prints one JSON line with what it saw;
exits non-zero on any failure."""
import os
import json
import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base + "/v1", api_key=os.environ.get("RAGFLEET_API_KEY", "unused"), max_retries=0)
models = [m.id for m in client.models.list()]
out = {"models": models}
r = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "Which museum is the most visited?"}],
)
out["answer"] = r.choices[0].message.content
out["finish_reason"] = r.choices[0].finish_reason
out["completion_tokens"] = r.usage.completion_tokens
stream = client.chat.completions.create(
    model="ragfleet",
    messages=[{"role": "user", "content": "How do bees communicate?"}],
    stream=True,
)
parts = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
out["streamed"] = "".join(parts)
out["chunks"] = len(parts)
print(json.dumps(out))
