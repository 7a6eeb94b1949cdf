-- wrk script: POST one JSON body (read from $BENCH_BODY_FILE), stop after $BENCH_MAX_REQUESTS
-- responses (0: no cap; wrk's -d bounds the time), print the result as one JSON line.
--   BENCH_BODY_FILE=body.json wrk -t1 -c64 -d10s -s bench/post.lua http://127.0.0.1:8080/v1/chat/completions

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local cap = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0") or 0
if cap > 0 then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen >= cap then wrk.thread:stop() end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
