// What the HTTP transports share: the basic-auth header, and what a request that got no HTTP
// answer at all means.

import encoding from "k6/encoding";

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
