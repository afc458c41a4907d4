-- bench/svc/micro.lua: single-thread micro-benchmarks of the C crypto on the auth path, for
-- bench/services.sh (issue 4). Runs in one `mercato lua` state (one thread, no server):
--
--   JWT_PRIVATE_KEY_FILE=key.pem build/mercato lua bench/svc/micro.lua jwt SECONDS
--   build/mercato lua bench/svc/micro.lua argon2 SECONDS
--
-- jwt:    jwt.verify of one RS256 access token (signed here with the key's private half; the
--         host verifies with its public half, as the user service's `auth = "required"` does),
--         in a loop for SECONDS.
-- argon2: crypto.argon2_verify of one password against its argon2id hash (the login's cost).
-- Prints one line: "<kind> <operations> <wall s> <cpu s> <ops per wall s> <ops per cpu s>".
-- The process CPU time (os.clock) is this thread's alone, so ops per CPU second is the rate of
-- one core, whatever else the machine is doing; ops per wall second drops when it is shared.
local crypto = require "crypto"
local host = require "host"
local jwt = require "jwt"

local kind, secs = arg[1], tonumber(arg[2]) or 3

local op
if kind == "jwt" then
  local token = assert(jwt.sign({ sub = "0191d2a8-0000-7000-8000-0000000000b1", role = "buyer", scope = "" }, { ttl = 3600 }))
  op = function()
    local c = jwt.verify(token)
    if not c or c.role ~= "buyer" then error("jwt.verify failed") end
  end
elseif kind == "argon2" then
  local hash = assert(crypto.argon2_hash("bench password 123"))
  op = function()
    local ok, err = crypto.argon2_verify(hash, "bench password 123")
    if not ok then error("argon2_verify failed: " .. tostring(err)) end
  end
else
  io.stderr:write("usage: mercato lua bench/svc/micro.lua jwt|argon2 SECONDS\n")
  return 2
end

for _ = 1, 3 do op() end   -- warm-up (key lookup, JIT)
local batch = kind == "jwt" and 64 or 1
local n, w0, c0 = 0, host.now(), os.clock()
local deadline = w0 + secs
repeat
  for _ = 1, batch do op() end
  n = n + batch
until host.now() >= deadline
local wall, cpu = host.now() - w0, os.clock() - c0
if cpu <= 0 then cpu = wall end
print(("%s %d %.3f %.3f %.1f %.1f"):format(kind, n, wall, cpu, n / wall, n / cpu))
return 0
