-- lib.template: escaping by default, loops, conditions, partials, the money and date helpers,
-- and compile errors that name file:line.
local template = require "lib.template"

local function render(src, ctx, opts)
  return template.compile(src, opts)(ctx)
end

local function compile_error(src, opts)
  local ok, err = pcall(template.compile, src, opts or { name = "t.html" })
  assert.is_false(ok)
  return err
end

describe("lib.template", function()
  it("escapes every value in html mode", function()
    local out = render("<p>Hi {{ name }}</p>", { name = "{{name}}<script>alert(1)</script>&\"'" })
    assert.equal("<p>Hi {{name}}&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;</p>", out)
  end)

  it("does not evaluate template syntax found in data", function()
    assert.equal("{{ secret }}", render("{{ name }}", { name = "{{ secret }}", secret = "leak" }, { mode = "text" }))
  end)

  it("writes values as they are in text mode and flattens control characters in header mode", function()
    assert.equal("a<b>", render("{{ v }}", { v = "a<b>" }, { mode = "text" }))
    assert.equal("Hi  Bcc: x", render("{{ v }}", { v = "Hi\r\nBcc: x" }, { mode = "header" }))
  end)

  it("refuses raw output for data", function()
    assert.matches("t.html:2: {{{ }}} %(raw output%) is not allowed", compile_error("a\n{{{ name }}}"))
  end)

  it("resolves dotted paths and renders missing values as empty", function()
    assert.equal("Lyon|", render("{{ a.city }}|{{ a.zip.code }}", { a = { city = "Lyon" } }))
    assert.equal("3|1.5|true|", render("{{ n }}|{{ f }}|{{ b }}|{{ t }}", { n = 3, f = 1.5, b = true, t = {} }))
  end)

  it("loops over items with an index and shadows outer names", function()
    local src = "{{#each items as item}}{{ item_index }}. {{ item.name }} x{{ item.quantity }} ({{ currency }})\n{{/each}}"
    local out = render(src, { currency = "usd", items = { { name = "Lamp", quantity = 2 }, { name = "<Mug>", quantity = 1 } } })
    assert.equal("1. Lamp x2 (usd)\n2. &lt;Mug&gt; x1 (usd)\n", out)
    assert.equal("", render("{{#each items as i}}x{{/each}}", { items = "not a list" }))
  end)

  it("takes or skips conditional blocks", function()
    local src = "{{#if refunded}}refunded{{else}}not refunded{{/if}}"
    assert.equal("refunded", render(src, { refunded = true }))
    assert.equal("not refunded", render(src, { refunded = false }))
    assert.equal("not refunded", render(src, {}))
    assert.equal("not refunded", render(src, { refunded = "" }))
    assert.equal("not refunded", render(src, { refunded = {} }))
  end)

  it("drops the lines of standalone block tags", function()
    local src = "Items:\n  {{#each items as i}}\n- {{ i }}\n  {{/each}}\nEnd\n"
    assert.equal("Items:\n- a\n- b\nEnd\n", render(src, { items = { "a", "b" } }, { mode = "text" }))
    assert.equal("x y\n", render("x {{#if a}}y{{/if}}\n", { a = 1 }, { mode = "text" }))
  end)

  it("includes partials compiled in the same mode, so their values are escaped too", function()
    local partials = { header = "<h1>{{ title }}</h1>", nested = "[{{> header}}]" }
    local opts = { name = "main.html", partial = function(n) return partials[n], "partials/" .. n .. ".html" end }
    assert.equal("<h1>&lt;b&gt;</h1>!", render("{{> header}}!", { title = "<b>" }, opts))
    assert.equal("[<h1>T</h1>]", render("{{> nested }}", { title = "T" }, opts))
  end)

  it("names the partial's file and line in its errors", function()
    local partials = { bad = "ok\n{{#if x}}" }
    local function partial(n) return partials[n], "partials/" .. n .. ".html" end
    local err = compile_error("{{> bad}}", { name = "main.html", partial = partial })
    assert.equal("partials/bad.html:2: {{#if}} is never closed", err)
  end)

  it("reports a missing partial and a partial cycle", function()
    local none = function() end
    assert.equal("t.html:1: partial \"nope\" not found", compile_error("{{> nope}}", { name = "t.html", partial = none }))
    local err = compile_error("{{> a}}", { name = "t.html", partial = function() return "{{> a}}", "a.html" end })
    assert.matches("a.html:1: partial \"a\" nests deeper than", err)
  end)

  it("reports malformed tags with their line", function()
    assert.equal("t.html:3: unclosed {{", compile_error("a\nb\n{{ name"))
    assert.equal("t.html:1: {{/each}} closes {{#if}} of line 1", compile_error("{{#if a}}{{/each}}"))
    assert.equal("t.html:2: {{/if}} closes nothing", compile_error("x\n{{/if}}"))
    assert.equal("t.html:1: {{else}} outside {{#if}}", compile_error("{{else}}"))
    assert.equal("t.html:1: expecting {{#each list as name}}", compile_error("{{#each items}}{{/each}}"))
    assert.equal("t.html:1: unknown block {{#with x}}", compile_error("{{#with x}}"))
    assert.equal("t.html:1: unknown helper \"shout\"", compile_error("{{ shout name }}"))
    assert.equal("t.html:1: money takes 2 arguments, got 1", compile_error("{{ money total }}"))
    assert.equal("t.html:1: empty {{ }}", compile_error("{{ }}"))
    assert.matches("t.html:1: \"a%-b\" is not a name", compile_error("{{ a-b }}"))
    assert.matches("unterminated string", compile_error("{{ default x \"y }}"))
  end)

  it("formats money by currency", function()
    assert.equal("$129.99", template.money(12999, "usd"))
    assert.equal("$1,299,999.05", template.money(129999905, "USD"))
    assert.equal("€0.05", template.money(5, "eur"))
    assert.equal("-£3.00", template.money(-300, "gbp"))
    assert.equal("¥1,500", template.money(1500, "jpy"))
    assert.equal("KWD 1.234", template.money(1234, "kwd"))
    assert.equal("12.34 XYZ", template.money(1234, "xyz"))
    assert.equal("1.5", template.money(1.5, "usd"))
    assert.equal("", template.money(nil, "usd"))
    assert.equal("Total: $129.99", render("Total: {{ money total_cents currency }}", { total_cents = 12999, currency = "usd" }))
  end)

  it("formats dates in UTC", function()
    assert.equal("3 December 2026", template.date("2026-12-03T16:00:00Z"))
    assert.equal("3 December 2026, 16:05 UTC", template.datetime("2026-12-03T18:05:00+02:00"))
    assert.equal("1 January 1970", template.date(0))
    assert.equal("not a date", template.date("not a date"))
    assert.equal("", template.datetime(nil))
    assert.equal("on 3 December 2026", render("on {{ date occurred_at }}", { occurred_at = "2026-12-03T16:00:00Z" }))
  end)

  -- Found by fuzz_lua_template (the input: tests/fuzz/corpus/fuzz_lua_template/helper_table_arg):
  -- a helper given a table wrote Lua's "table: 0x..." — an address in an e-mail, new on every render.
  it("renders a helper's non-scalar argument as empty, as a plain variable renders it", function()
    local item = { name = "x" }
    assert.equal("", template.money(item, "usd"))
    assert.equal("", template.date(item))
    assert.equal("", template.datetime(function() end))
    assert.equal("true", template.money(true, "usd"))
    assert.equal("[] [] []", render("[{{ money item currency }}] [{{ date item }}] [{{ datetime item }}]",
      { item = item, currency = "usd" }))
    assert.equal("[]", render("[{{ default item.missing item }}]", { item = item }))
  end)

  it("offers a default for empty values", function()
    assert.equal("there", render("{{ default name \"there\" }}", {}))
    assert.equal("Ann", render("{{ default name \"there\" }}", { name = "Ann" }))
    assert.equal("7", render("{{ 7 }}", {}))
  end)

  it("refuses a bad mode or source", function()
    assert.has_error(function() template.compile("x", { mode = "pdf" }) end)
    assert.has_error(function() template.compile(nil) end)
  end)
end)
