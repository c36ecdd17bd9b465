// Trino's client protocol: POST the statement to `/v1/statement`, then GET every `nextUri`
// until an answer has none. The rows of each page are read and dropped.
//
// The session (user, catalog, schema, source, client tags, session properties) travels in the
// X-Trino-* headers of every request. `ms` is the sum of the requests' `timings.duration`, so
// the waits between retries are not service time. A statement that is still running when
// `timeout_ms` has passed is cancelled (DELETE of its nextUri) and counted as a timeout.
//
// Limitation: tested against a protocol-compatible stand-in server, not a real Trino cluster.

import http from "k6/http";
import { sleep } from "k6";
import { basicAuthorization, networkFailure, shortened } from "./http_common.js";

// The protocol says: 502, 503 and 504 come from proxies and load balancers and are retried
// after 50 to 100 ms; 429 says when to come back in Retry-After.
const RETRY_STATUSES = [502, 503, 504];
const BUSY_STATUS = 429;
const RETRY_AFTER_MAX_S = 5;
const CANCEL_TIMEOUT = "2s";

export function connect(transport, password) {
  const headers = {
    "Content-Type": "text/plain; charset=utf-8",
    "X-Trino-User": transport.user,
    "X-Trino-Source": transport.source,
  };
  if (transport.catalog) {
    headers["X-Trino-Catalog"] = transport.catalog;
  }
  if (transport.schema) {
    headers["X-Trino-Schema"] = transport.schema;
  }
  if (transport.client_tags && transport.client_tags.length > 0) {
    headers["X-Trino-Client-Tags"] = transport.client_tags.join(",");
  }
  const session = Object.keys(transport.session || {})
    .map((name) => `${name}=${encodeURIComponent(transport.session[name])}`)
    .join(",");
  if (session) {
    headers["X-Trino-Session"] = session;
  }
  // Trino takes a password only over HTTPS; the Python side refuses one on plain HTTP.
  if (password) {
    headers.Authorization = basicAuthorization(transport.user, password);
  }
  const timeoutErrors = new Set(transport.timeout_errors || []);
  const statementUrl = `${transport.url}/v1/statement`;

  function send(method, url, body, tags, deadline) {
    let ms = 0;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        return { response: null, ms };
      }
      const params = { headers, tags, timeout: `${remaining}ms`, responseType: "text" };
      const response = http.request(method, url, body, params);
      ms += response.timings.duration;
      const wait = retryWait(response);
      if (wait === null) {
        return { response, ms };
      }
      if (Date.now() + wait * 1000 >= deadline) {
        return { response: null, ms };
      }
      sleep(wait);
    }
  }

  function cancel(url, tags) {
    http.request("DELETE", url, null, { headers, tags, timeout: CANCEL_TIMEOUT });
  }

  return {
    execute(sql, tags) {
      const deadline = Date.now() + transport.timeout_ms;
      let ms = 0;
      let method = "POST";
      let url = statementUrl;
      let body = sql;
      for (;;) {
        const sent = send(method, url, body, tags, deadline);
        ms += sent.ms;
        const response = sent.response;
        if (response === null) {
          if (method === "GET") {
            cancel(url, tags);
          }
          const error = `no answer within ${transport.timeout_ms} ms; the statement was cancelled`;
          return { ok: false, ms, kind: "timeout", error };
        }
        const answer = readAnswer(response);
        if (answer.failure) {
          if (method === "GET" && answer.failure.kind === "timeout") {
            cancel(url, tags);
          }
          return { ok: false, ms, ...answer.failure };
        }
        if (answer.page.error) {
          return { ok: false, ms, ...trinoFailure(answer.page.error, timeoutErrors) };
        }
        if (!answer.page.nextUri) {
          return { ok: true, ms, kind: null, error: null };
        }
        method = "GET";
        url = answer.page.nextUri;
        body = null;
      }
    },
  };
}

function retryWait(response) {
  if (RETRY_STATUSES.includes(response.status)) {
    return 0.05 + Math.random() * 0.05;
  }
  if (response.status === BUSY_STATUS) {
    const seconds = Number(response.headers["Retry-After"]);
    return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, RETRY_AFTER_MAX_S) : 0.1;
  }
  return null;
}

function readAnswer(response) {
  if (response.status === 0) {
    return { failure: networkFailure(response) };
  }
  if (response.status === 401) {
    const error = "HTTP 401: access denied (wrong user or password?)";
    return { failure: { kind: "other", error } };
  }
  if (response.status !== 200) {
    const detail = response.body ? `: ${shortened(response.body)}` : "";
    return { failure: { kind: "other", error: `HTTP ${response.status}${detail}` } };
  }
  try {
    return { page: JSON.parse(response.body) };
  } catch (error) {
    const detail = shortened(response.body);
    return { failure: { kind: "other", error: `the answer is not JSON: ${detail}` } };
  }
}

function trinoFailure(error, timeoutErrors) {
  const kind = timeoutErrors.has(error.errorName) ? "timeout" : "other";
  const name = error.errorType ? `${error.errorName} (${error.errorType})` : error.errorName;
  return { kind, error: shortened(`${name}: ${error.message}`) };
}
