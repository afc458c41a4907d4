-- bench/svc/wrk/request.lua: one fixed request for wrk, from the environment (bench/services.sh
-- exports these around each run; wrk builds the request once and sends it over and over):
--   BENCH_METHOD  GET (default) or POST
--   BENCH_BODY    a JSON body (sent with Content-Type: application/json), e.g. the login document
--   BENCH_TOKEN   an access token, sent as Authorization: Bearer <token>
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
