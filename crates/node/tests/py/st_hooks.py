"""schemathesis hooks for the node's API (crates/node/tests/schemathesis.rs).

`POST /api/v1/documents/batch` takes `application/x-ndjson` (JSON Lines),
documented as a string body; schemathesis has no serializer for that media
type, so generated bodies are sent as they are (UTF-8), whatever they hold:
the endpoint must answer every one of them with a documented status.
"""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    # Non-string values (negative tests): one JSON value on one line.
    return (json.dumps(value) + "\n").encode("utf-8")
