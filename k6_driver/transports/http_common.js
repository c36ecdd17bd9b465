// What the HTTP transports share: the basic-auth header, what a request that got no HTTP
// answer at all means, and a JSON POST executor.

import encoding from "k6/encoding";
import http from "k6/http";

// Basic auth goes in a header, never in the URL: k6 tags and logs request URLs.
export function basicAuthorization(user, password) {
  return `Basic ${encoding.b64encode(`${user}:${password}`)}`;
}

// k6 reports status 0 when no answer came; its error code 1050 is a request timeout, the rest
// of the 1xxx range is the network (DNS, refused, reset, TLS).
export function networkFailure(response) {
  const kind = response.error_code === 1050 ? "timeout" : "connection";
  return { kind, error: response.error || `k6 error code ${response.error_code}` };
}

// Server messages can be long (stack traces); a result line keeps the start.
const MESSAGE_MAX = 500;

export function shortened(text) {
  const message = String(text);
  return message.length > MESSAGE_MAX ? `${message.slice(0, MESSAGE_MAX)}...` : message;
}

export function timeoutWords(message) {
  return /time ?out|timed out|deadline exceeded/i.test(message);
}

// An executor that POSTs `bodyOf(sql)` as JSON to `url` and reads the whole answer, which
// `failureOf(response)` judges: null for a success, else `{kind, error}`.
export function jsonPostExecutor(url, headers, timeoutMs, bodyOf, failureOf) {
  const timeout = `${timeoutMs}ms`;
  return {
    execute(sql, tags) {
      const response = http.post(url, JSON.stringify(bodyOf(sql)), {
        headers,
        tags,
        timeout,
        responseType: "text",
      });
      const ms = response.timings.duration;
      const failure = failureOf(response);
      if (failure === null) {
        return { ok: true, ms, kind: null, error: null };
      }
      return { ok: false, ms, ...failure };
    },
  };
}
