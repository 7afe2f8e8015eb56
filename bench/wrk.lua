-- wrk script for bench/run.sh: unique URLs when asked, and the result as
-- JSON in bench/loadgen's format.
--
-- Environment:
--   WRK_PATH  path template (empty: the URL given to wrk); "{n}" becomes a
--             number unique per request (thread index * 10^9 + a counter,
--             from WRK_N_START)
--   WRK_OUT   file the JSON result is written to
--
-- wrk sees no status codes beyond "2xx/3xx or not" without parsing every
-- response in Lua, which would slow it down; run.sh checks statuses and
-- X-Cache with a short loadgen run instead.

local template = os.getenv("WRK_PATH")
if template == "" then template = nil end
local n_start = tonumber(os.getenv("WRK_N_START") or "0")
local threads = {}
local next_index = 0

function setup(thread)
  thread:set("index", next_index)
  next_index = next_index + 1
  table.insert(threads, thread)
end

-- Defined only for numbered URLs: without request(), wrk sends one
-- prebuilt request for the URL it was given, at no cost per request.
if template ~= nil and template:find("{n}", 1, true) then
  local counter = 0
  function request()
    counter = counter + 1
    local n = string.format("%d", n_start + index * 1000000000 + counter)
    return wrk.format("GET", (template:gsub("{n}", n)))
  end
end

local function ms(us)
  return math.floor(us / 10 + 0.5) / 100
end

function done(summary, latency, requests)
  local e = summary.errors
  local transport = e.connect + e.read + e.write + e.timeout
  local seconds = summary.duration / 1e6
  local ok = summary.requests - e.status
  local status = string.format('"2xx/3xx":%d', ok)
  if e.status > 0 then
    status = status .. string.format(',"other":%d', e.status)
  end
  local out = io.open(os.getenv("WRK_OUT"), "w")
  out:write(string.format(
    '{"loader":"wrk","requests":%d,"rps":%.1f,"latency_ms":{"p50":%s,"p90":%s,"p99":%s,"max":%s,"mean":%s},' ..
    '"status":{%s},"errors":%d,"error_samples":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"bytes":%d,"duration_s":%.3f}\n',
    summary.requests, summary.requests / seconds,
    ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)), ms(latency.max), ms(latency.mean),
    status, transport, e.connect, e.read, e.write, e.timeout, summary.bytes, seconds))
  out:close()
end
