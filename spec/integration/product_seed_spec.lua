-- The demo catalogue's seller is a real account: scripts/dev/demo_account.sh registers it with
-- luacheck: max line length 170
-- the user service (as `make run` does) and prints its id, and the product seed files every
-- demo product under that id (SEED_SELLER_ID). Real user and product services on the stack.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_seed_spec.lua
local P = require "support.product_helpers"
local U = require "support.user_helpers"

describe("the demo seller", function()
  local users, products

  setup(function()
    users = U.start()
    products = P.start()
  end)
  teardown(function()
    U.stop(users)
    P.stop(products)
  end)

  it("is registered as a seller by demo_account.sh, once, and owns the seeded catalogue", function()
    local email, password = U.email("demo-seller"), "demo seller password 1"
    local cmd = ("scripts/dev/demo_account.sh %s %s %s"):format(P.q(users.url), P.q(email), P.q(password))
    local out, rc = P.sh(cmd)
    assert.equal(0, rc, out)
    local id = out:match("^%s*(%x+%-%x+%-%x+%-%x+%-%x+)%s*$")
    assert.truthy(id, out)
    -- a second run finds the same account
    local again, rc2 = P.sh(cmd)
    assert.equal(0, rc2, again)
    assert.equal(id, again:match("^%s*(%S+)%s*$"))
    -- a real seller: it logs in, and its token names that id and role
    local claims = U.claims(U.login(users, email, password).access_token)
    assert.equal(id, claims.sub)
    assert.equal("seller", claims.role)
    -- the seed files the demo products under it
    local seed, src = P.sh(("SERVICE=product DATABASE_URL=%s SEED_SELLER_ID=%s %s lua scripts/services/product/seed.lua")
      :format(P.q(products.db_url), id, os.getenv("MERCATO_BIN") or "build/mercato"))
    assert.equal(0, src, seed)
    assert.equal("228 " .. id, P.psql(products.db_url, "SELECT count(*) || ' ' || min(seller_id::text) FROM products"))
    assert.equal("1", P.psql(products.db_url, "SELECT count(DISTINCT seller_id) FROM products"))
  end)

  it("refuses a SEED_SELLER_ID that is not a user id", function()
    local out, rc = P.sh(("SERVICE=product DATABASE_URL=%s SEED_SELLER_ID=nobody %s lua scripts/services/product/seed.lua")
      :format(P.q(products.db_url), os.getenv("MERCATO_BIN") or "build/mercato"))
    assert.are_not.equal(0, rc)
    assert.matches("SEED_SELLER_ID", out)
  end)
end)
