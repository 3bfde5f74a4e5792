"""The hello function: greets whoever the query string or JSON body names."""

import json


def handler(event, context):
    event = event or {}
    name = (event.get("queryStringParameters") or {}).get("name")
    if name is None and event.get("body"):
        try:
            name = json.loads(event["body"]).get("name")
        except (ValueError, AttributeError):
            name = None
    if name is None:
        name = event.get("name", "world")
    return {
        "hello": name,
        "function": context.function_name,
        "version": context.function_version,
        "request_id": context.request_id,
    }
