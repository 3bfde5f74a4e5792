"""The runtime conformance suite (``easyfaas.testing.conformance``), run by the Node.js runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyfaas.testing.conformance import RuntimeAdapter, RuntimeConformance

OPS = """
console.log('loading ops');

class BoomError extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

exports.handler = async (event, context) => {
  if (event === null || typeof event !== 'object' || Array.isArray(event) || !('op' in event)) return event;
  switch (event.op) {
    case 'fail':
      throw new BoomError(event.message);
    case 'sleep':
      await sleep(event.seconds * 1000);
      return { slept: event.seconds };
    case 'log':
      console.log(event.marker);
      return { logged: event.marker };
    case 'env':
      return Object.fromEntries(event.names.map((name) => [name, name in process.env ? process.env[name] : null]));
    case 'context':
      return {
        request_id: context.awsRequestId, function_name: context.functionName,
        function_version: context.functionVersion, memory_mb: context.memoryLimitInMB,
        remaining_ms: context.getRemainingTimeInMillis(), arn: context.invokedFunctionArn,
        log_stream: context.logStreamName,
      };
    default:
      throw new Error(`unknown op ${event.op}`);
  }
};
"""


class NodeAdapter(RuntimeAdapter):
    runtime = "node"
    error_type = "BoomError"
    stack_hint = "ops.js"

    def write_function(self, directory: Path) -> dict[str, Any]:
        (directory / "ops.js").write_text(OPS)
        return {"handler": "ops.handler"}

    def write_custom(self, directory: Path) -> dict[str, Any]:
        # A subdirectory, an ES module and a nested export, with callback style for good measure.
        (directory / "lib").mkdir()
        (directory / "lib" / "app.mjs").write_text(
            "export const routes = { main: (event, context, callback) => callback(null, { handler: 'custom' }) };\n"
        )
        return {"handler": "lib/app.routes.main"}


class TestNodeConformance(RuntimeConformance):
    adapter = NodeAdapter()
