-- wrk script for POST /v1/send: a few hundred pre-formatted requests (users
-- spread over every partition) cycled per connection, keep-alive.
-- Arguments after "--": API key; a delay in ms between two requests of one
-- connection (to drive a fixed rate for latency figures); a pipeline depth
-- (requests written back to back before reading the answers; 1 = none); a
-- batch size (> 1: POST /v1/batch with that many messages per request).
local reqs = {}
local n = 0
local delay_ms = 0
local depth = 1

function init(args)
  local key = args[1] or "bench"
  delay_ms = tonumber(args[2] or "0")
  depth = tonumber(args[3] or "1")
  local batch = tonumber(args[4] or "1")
  for i = 1, 512 do
    local body, path
    if batch > 1 then
      local items = {}
      for j = 1, batch do
        items[j] = string.format('{"user":"bench-user-%d","data":{"seq":%d}}', (i * batch + j) % 4096, j)
      end
      body = '{"messages":[' .. table.concat(items, ",") .. ']}'
      path = "/v1/batch"
    else
      body = string.format('{"user":"bench-user-%d","data":{"seq":%d,"text":"hello from wrk"}}', i, i)
      path = "/v1/send"
    end
    reqs[i] = wrk.format("POST", path, {
      ["Authorization"] = "Bearer " .. key,
      ["Content-Type"] = "application/json",
    }, body)
  end
  n = math.random(512)
end

function request()
  if depth <= 1 then
    n = n % 512 + 1
    return reqs[n]
  end
  local batch = {}
  for i = 1, depth do
    n = n % 512 + 1
    batch[i] = reqs[n]
  end
  return table.concat(batch)
end

function delay()
  return delay_ms
end

local errors = 0
function response(status, headers, body)
  if status ~= 202 then
    errors = errors + 1
    if errors <= 3 then
      io.stderr:write("status " .. status .. ": " .. body .. "\n")
    end
  end
end
