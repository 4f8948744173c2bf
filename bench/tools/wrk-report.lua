-- wrk script: print the run's figures as one JSON line (latencies in microseconds),
-- so the harness does not have to parse wrk's human-readable output.
--
-- Per-request latencies. Before a script sees the latency histogram, wrk
-- "corrects" it for coordinated omission (stats_correct in wrk.c): every
-- request that took n ≥ 2 × the mean interval between requests on a
-- connection adds phantom samples at n − interval, n − 2 × interval, … —
-- the waits of requests an open-loop sender would have sent meanwhile. At one
-- connection (mean interval ~150 µs) one 2 ms request becomes ~13 samples, so
-- the slowest 0.1 % of requests set the "p99". This script takes the phantoms
-- out again (wrk adds them in a fixed pattern) and reports the requests' own
-- percentiles, with wrk's corrected p50/p99 beside them.

-- Up to this many µs between the fastest and the slowest request the
-- histogram is walked (wrk's accessor scans the range once per value).
local MAX_RANGE_US = 2000000

-- Nearest rank, as the harness takes it of merged histograms (lib/stats.ts).
local function percentile(values, counts, total, p)
  local rank = math.ceil(p / 100 * total)
  if rank < 1 then rank = 1 end
  local seen = 0
  for _, v in ipairs(values) do
    seen = seen + counts[v]
    if seen >= rank then return v end
  end
  return values[#values] or 0
end

-- wrk's histogram: values ascending and the count per value.
local function histogram(latency)
  local values, counts = {}, {}
  for i = 1, #latency do
    local v, c = latency(i)
    values[i] = v
    counts[v] = c
  end
  return values, counts
end

-- "[[value,count],…]" for the harness, which merges the histograms of several runs.
local function pairs_json(values, counts)
  local parts = {}
  for _, v in ipairs(values) do
    if counts[v] > 0 then parts[#parts + 1] = string.format('[%d,%d]', v, counts[v]) end
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- The histogram without wrk's phantom samples: values ascending, count per value, and the total.
local function uncorrected(latency, requests, duration_us, connections)
  local values, counts = histogram(latency)
  local per_connection = math.floor(requests / connections)
  if per_connection == 0 then return values, counts, requests end
  local interval = math.floor(duration_us / per_connection)
  local phantom, total = {}, 0
  -- Phantoms only ever sit below the request that made them: walk down, subtracting what the values above added.
  for i = #values, 1, -1 do
    local n = values[i]
    local own = counts[n] - (phantom[n] or 0)
    counts[n] = own
    total = total + own
    if own > 0 and n >= 2 * interval then
      local m = n - interval
      while m > interval do
        phantom[m] = (phantom[m] or 0) + own
        m = m - interval
      end
    end
  end
  return values, counts, total
end

done = function(summary, latency, requests)
  local e = summary.errors
  local connections = tonumber(os.getenv('BENCH_CONNECTIONS') or '') or 1
  local p50, p90, p99, mean = latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean
  local corrected_p50, corrected_p99 = p50, p99
  local own = 0 -- requests in the per-request histogram (0: it could not be rebuilt)
  local histograms = '' -- both histograms, when the harness asks (BENCH_HISTOGRAM=1)
  if #latency > 0 and latency.max - latency.min <= MAX_RANGE_US then
    local want = os.getenv('BENCH_HISTOGRAM') == '1'
    local corrected_json = want and pairs_json(histogram(latency)) or nil
    local values, counts, total = uncorrected(latency, summary.requests, summary.duration, connections)
    if total > 0 then
      if want then histograms = string.format(',"histogram":%s,"corrected_histogram":%s', pairs_json(values, counts), corrected_json) end
      local sum = 0
      for _, v in ipairs(values) do sum = sum + v * counts[v] end
      p50, p90, p99 = percentile(values, counts, total, 50), percentile(values, counts, total, 90), percentile(values, counts, total, 99)
      mean = sum / total
      own = total
    end
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f},' ..
    '"per_request_count":%d,"corrected":{"p50":%.1f,"p99":%.1f}%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    p50, p90, p99, latency.max, mean,
    own, corrected_p50, corrected_p99, histograms))
end
