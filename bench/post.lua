-- wrk script: POST a small chat completion body as JSON.
--   wrk ... -s bench/post.lua URL                 plain request
--   wrk ... -s bench/post.lua URL -- stream       the same body with "stream": true
-- temperature 0.7: a sampled request, so the response cache (deterministic requests only) does
-- not answer it and every request reaches the upstream, as most chat traffic does.
-- At the end it prints one line "BENCH_JSON {...}" that bench/run.py parses (exact percentiles
-- in microseconds instead of wrk's rounded text).

local plain = '{"model":"bench-model","messages":[' ..
  '{"role":"system","content":"You are a concise assistant."},' ..
  '{"role":"user","content":"Say hello to the benchmark in one short sentence."}],' ..
  '"max_tokens":32,"temperature":0.7}'
local streamed = '{"model":"bench-model","messages":[' ..
  '{"role":"system","content":"You are a concise assistant."},' ..
  '{"role":"user","content":"Say hello to the benchmark in one short sentence."}],' ..
  '"max_tokens":32,"temperature":0.7,"stream":true,"stream_options":{"include_usage":true}}'

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = plain

function init(args)
  if args[1] == "stream" then
    wrk.body = streamed
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
