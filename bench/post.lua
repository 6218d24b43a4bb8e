-- wrk script: POST a small chat completion body as JSON.
--   wrk ... -s bench/post.lua URL                         plain request, always the same body
--   wrk ... -s bench/post.lua URL -- stream               the same body with "stream": true
--   wrk ... -s bench/post.lua URL -- unique NONCE         deterministic (temperature 0) and
--                                                         unique per request: a cache lookup
--                                                         that misses, every time
--   wrk ... -s bench/post.lua URL -- check                look at every response body and
--                                                         count those that are not what an
--                                                         OpenAI client expects (plain: no
--                                                         "chat.completion"; stream: no
--                                                         "data: [DONE]" or an error event) as
--                                                         errors.body: a 200 stream broken half
--                                                         way is an error wrk's status count
--                                                         misses (a Lua call per response in
--                                                         wrk; the server pays nothing)
--   (the words combine: -- stream unique NONCE check)
-- BENCH_KEYS_FILE=path (one API key per line) sends "Authorization: Bearer <key>", the keys
-- taken in turn, request by request; BENCH_MODELS_FILE=path (one model alias per line) takes
-- the "model" in turn from the list (unset: "bench-model"); BENCH_HEADERS="name: value;
-- name: value" adds headers.
-- Without "unique", temperature 0.7: a sampled request, so the response cache (deterministic
-- requests only) passes it by and every request reaches the upstream.
-- At the end it prints one line "BENCH_JSON {...}" that bench/run.py parses (exact percentiles
-- in microseconds instead of wrk's rounded text).

local prefix = '{"model":"'
local system = '","messages":[' ..
  '{"role":"system","content":"You are a concise assistant."},' ..
  '{"role":"user","content":"Say hello to the benchmark in one short sentence.'
local sampled = '"}],"max_tokens":32,"temperature":0.7'
local deterministic = '"}],"max_tokens":32,"temperature":0'
local streaming = ',"stream":true,"stream_options":{"include_usage":true}'

local threads = {}
local stream, unique, check, nonce = false, false, false, ""
local keys = {}
local models = {"bench-model"}
local counter = 0
local mcounter = 0
bad = 0  -- global: done() reads it from each thread with thread:get
local headers = {["Content-Type"] = "application/json"}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local function checked(status, hdrs, resp)
  if status ~= 200 then return end  -- wrk counts these itself (errors.status)
  if stream then
    if not string.find(resp, "data: [DONE]", 1, true)
        or string.find(resp, '"error"', 1, true) then
      bad = bad + 1
    end
  elseif not string.find(resp, '"chat.completion"', 1, true) then
    bad = bad + 1
  end
end


function init(args)
  local i = 1
  while i <= #args do
    if args[i] == "stream" then
      stream = true
    elseif args[i] == "check" then
      check = true
    elseif args[i] == "unique" then
      unique = true
      nonce = args[i + 1] or ""
      i = i + 1
    end
    i = i + 1
  end
  local path = os.getenv("BENCH_KEYS_FILE")
  if path and path ~= "" then
    for line in io.lines(path) do
      if #line > 0 then keys[#keys + 1] = line end
    end
  end
  local mpath = os.getenv("BENCH_MODELS_FILE")
  if mpath and mpath ~= "" then
    local list = {}
    for line in io.lines(mpath) do
      if #line > 0 then list[#list + 1] = line end
    end
    if #list > 0 then models = list end
  end
  local extra = os.getenv("BENCH_HEADERS")
  if extra and extra ~= "" then
    for name, value in string.gmatch(extra, "%s*([^:;]+):%s*([^;]*)") do
      headers[name] = value
    end
  end
  -- wrk asks whether a response() exists after init (in the first thread): defined only
  -- with "check", so without it wrk hands no bodies to Lua, as with post.lua.
  if check then response = checked end
  -- Spread the threads over the key (and model) lists instead of all starting at the first.
  counter = ((tid or 1) - 1) * 7919
  mcounter = ((tid or 1) - 1) * 7919
end

local function body()
  mcounter = mcounter + 1
  local text = prefix .. models[(mcounter % #models) + 1] .. system
  if unique then
    counter = counter + 1
    text = text .. " [" .. nonce .. "-" .. (tid or 1) .. "-" .. counter .. "]" .. deterministic
  else
    text = text .. sampled
  end
  if stream then text = text .. streaming end
  return text .. "}"
end

function request()
  if #keys > 0 then
    if not unique then counter = counter + 1 end
    headers["Authorization"] = "Bearer " .. keys[(counter % #keys) + 1]
  end
  return wrk.format("POST", nil, headers, body())
end

function done(summary, latency, requests)
  local e = summary.errors
  local body_errors = 0
  for _, t in ipairs(threads) do
    body_errors = body_errors + (t:get("bad") or 0)
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"body":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, body_errors,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
