-- lib.problem: RFC 9457 bodies and the binding error codes' statuses (STYLE 11).
local problem = require "lib.problem"

describe("lib.problem", function()
  it("answers status, an RFC 9457 body and the problem+json content type", function()
    local status, body, headers = problem.new(409, "Taken.")
    assert.equal(409, status)
    assert.same({ type = "about:blank", title = "Conflict", status = 409, detail = "Taken." }, body)
    assert.equal("application/problem+json", headers["Content-Type"])
  end)

  it("maps binding codes to 503, 504, 409, 422 and 404 without leaking the message", function()
    local want = { unavailable = 503, timeout = 504, conflict = 409, invalid = 422, not_found = 404, weird = 503 }
    for code, st in pairs(want) do
      local status, body = problem.from(code, "relation users: SELECT secret FROM x")
      assert.equal(st, status, code)
      assert.is_nil(body.detail:find("SELECT", 1, true))
    end
    local _, _, headers = problem.from("unavailable", "down")
    assert.equal("5", headers["Retry-After"])
  end)

  it("sends WWW-Authenticate with 401 and Retry-After with 429", function()
    local _, _, h = problem.unauthorized()
    assert.equal("Bearer", h["WWW-Authenticate"])
    _, _, h = problem.unauthorized("x", "invalid_token")
    assert.equal('Bearer error="invalid_token"', h["WWW-Authenticate"])
    _, _, h = problem.too_many(2.2, { ["RateLimit-Limit"] = "10" })
    assert.equal("3", h["Retry-After"])
    assert.equal("10", h["RateLimit-Limit"])
  end)

  it("always encodes, whatever bytes of a client's it quotes", function()
    local json = require "json"
    local _, body = problem.not_found("product", "\255\192\175")
    assert.equal("No product with id \239\191\189\239\191\189\239\191\189.", body.detail)
    _, body = problem.validation({ { field = "\255", message = "is not allowed" } })
    assert.same({ { field = "\239\191\189", message = "is not allowed" } }, body.errors)
    assert.is_string(json.encode(body))
    _, body = problem.new(400, "bad", { errors = json.array {}, ["x\237"] = { "\226\130" } })
    assert.equal("[]", json.encode(body.errors))
    assert.same({ "\239\191\189\239\191\189" }, body["x\239\191\189"])
  end)

  it("carries validation errors", function()
    local status, body = problem.validation({ { field = "email", message = "is required" } })
    assert.equal(422, status)
    assert.equal("email", body.errors[1].field)
  end)
end)
