-- scripts/services/product/seed.lua: the demo catalogue — 18 categories in a two-level tree and
-- luacheck: max line length 170
-- 228 products with tags, prices and stock, all derived from the tables below (no randomness),
-- with fixed ids (md5 of the name), so running it again changes nothing.
--
--   SERVICE=product DATABASE_URL=... build/mercato migrate
--   SERVICE=product DATABASE_URL=... build/mercato lua scripts/services/product/seed.lua
--
-- SEED_SELLER_ID names the owning seller: `make run` sets it to the id of a real seller account
-- (DEMO_SELLER_EMAIL, registered with the user service by scripts/dev/demo_account.sh), so the
-- demo catalogue can be managed by logging in; unset (specs), a fixed id that is no account.
-- New products are announced as product.created through the outbox, so a running service's
-- search index picks them up.
local db = require "db"
local host = require "host"
local json = require "json"
local outbox = require "lib.outbox"
local uuid = require "lib.uuid"

local SELLER = host.env("SEED_SELLER_ID") or "0191d2a8-0000-7000-8000-00000000de70"
if not uuid.valid(SELLER) then
  io.stderr:write(("seed: SEED_SELLER_ID must be a seller's user id (a UUID), got %q\n"):format(SELLER))
  os.exit(2)
end
SELLER = SELLER:lower()

-- slug, name, parent slug
local CATEGORIES = {
  { "electronics", "Electronics" }, { "home", "Home & Kitchen" }, { "sports", "Sports & Outdoors" },
  { "fashion", "Fashion" }, { "books", "Books" }, { "toys", "Toys & Games" },
  { "audio", "Audio", "electronics" }, { "computers", "Computers", "electronics" },
  { "phones", "Phones & Tablets", "electronics" }, { "cameras", "Cameras", "electronics" },
  { "kitchen", "Kitchen", "home" }, { "furniture", "Furniture", "home" }, { "lighting", "Lighting", "home" },
  { "cycling", "Cycling", "sports" }, { "camping", "Camping", "sports" }, { "fitness", "Fitness", "sports" },
  { "shoes", "Shoes", "fashion" }, { "bags", "Bags", "fashion" },
}

-- category slug → { noun, base price in cents, what it is for }
local NOUNS = {
  { "audio", "Headphones", 8900, "over-ear sound with deep bass" },
  { "audio", "Earbuds", 4900, "in-ear listening on the go" },
  { "audio", "Speaker", 6900, "room-filling music" },
  { "audio", "Soundbar", 15900, "clear dialogue for your TV" },
  { "audio", "Microphone", 7900, "podcasts and streaming" },
  { "computers", "Laptop", 89900, "work and study anywhere" },
  { "computers", "Keyboard", 5900, "fast, quiet typing" },
  { "computers", "Mouse", 2900, "precise pointing" },
  { "computers", "Monitor", 21900, "a sharp 27-inch picture" },
  { "computers", "Webcam", 4900, "video calls in full HD" },
  { "computers", "Router", 9900, "fast home Wi-Fi" },
  { "phones", "Smartphone", 49900, "calls, photos and apps" },
  { "phones", "Tablet", 32900, "reading and drawing" },
  { "phones", "Phone Case", 1900, "drop protection" },
  { "phones", "Charger", 2500, "fast USB-C charging" },
  { "phones", "Power Bank", 3500, "a full charge away from home" },
  { "cameras", "Camera", 64900, "sharp photos in low light" },
  { "cameras", "Tripod", 3900, "steady shots" },
  { "cameras", "Drone", 79900, "aerial video" },
  { "kitchen", "Coffee Grinder", 4500, "fresh coffee every morning" },
  { "kitchen", "Blender", 6900, "smoothies and soups" },
  { "kitchen", "Kettle", 3900, "boiling water in a minute" },
  { "kitchen", "Chef Knife", 5900, "slicing and dicing" },
  { "kitchen", "Frying Pan", 3400, "non-stick cooking" },
  { "kitchen", "Crème Brûlée Torch", 2900, "caramelising desserts" },
  { "kitchen", "Toaster", 3900, "golden toast" },
  { "furniture", "Desk", 19900, "a tidy workspace" },
  { "furniture", "Office Chair", 24900, "all-day comfort" },
  { "furniture", "Bookshelf", 12900, "books and plants" },
  { "furniture", "Sofa", 59900, "lazy Sunday afternoons" },
  { "lighting", "Desk Lamp", 3900, "glare-free reading light" },
  { "lighting", "Floor Lamp", 7900, "warm ambient light" },
  { "lighting", "LED Strip", 2400, "colourful accent lighting" },
  { "cycling", "Bike Helmet", 5900, "safe rides" },
  { "cycling", "Bike Light", 2900, "being seen at night" },
  { "cycling", "Road Bike", 99900, "long rides on tarmac" },
  { "camping", "Tent", 14900, "two people and their gear" },
  { "camping", "Sleeping Bag", 7900, "warm nights outdoors" },
  { "camping", "Backpack", 8900, "multi-day hikes" },
  { "camping", "Camping Stove", 4900, "hot meals at camp" },
  { "fitness", "Yoga Mat", 2900, "grip and cushioning" },
  { "fitness", "Dumbbells", 4900, "strength training at home" },
  { "fitness", "Jump Rope", 1200, "cardio anywhere" },
  { "fitness", "Running Shoes", 11900, "daily miles" },
  { "books", "Cookbook", 2900, "weeknight dinners" },
  { "books", "Novel", 1900, "a gripping story" },
  { "books", "Travel Guide", 2400, "planning your next trip" },
  { "toys", "Board Game", 3900, "family game night" },
  { "toys", "Puzzle", 1900, "a thousand pieces of calm" },
  { "toys", "Building Blocks", 4900, "creative building" },
  { "shoes", "Sneakers", 8900, "everyday style" },
  { "shoes", "Hiking Boots", 13900, "rough trails" },
  { "shoes", "Sandals", 4900, "summer days" },
  { "bags", "Tote Bag", 2900, "groceries and books" },
  { "bags", "Laptop Bag", 5900, "commuting with a laptop" },
  { "bags", "Suitcase", 14900, "weekend trips" },
  { "audio", "Turntable", 24900, "vinyl nights" },
}

-- adjective, price factor (percent), tag
local ADJECTIVES = {
  { "Wireless", 120, "wireless" }, { "Portable", 100, "portable" }, { "Compact", 90, "compact" },
  { "Premium", 180, "premium" }, { "Classic", 100, "classic" }, { "Eco", 110, "eco-friendly" },
  { "Smart", 150, "smart" }, { "Pro", 200, "pro" },
}
local COLORS = { "black", "white", "red", "blue", "green", "grey" }
local MATERIALS = { "recycled aluminium", "bamboo", "steel", "organic cotton", "walnut wood", "recycled plastic" }

-- The product list, in a fixed order: 4 adjectives per noun.
local function products()
  local out = {}
  for n, noun in ipairs(NOUNS) do
    for k = 0, 3 do
      local adj = ADJECTIVES[((n - 1) + 2 * k) % #ADJECTIVES + 1]
      local i = #out + 1
      local color, material = COLORS[(i - 1) % #COLORS + 1], MATERIALS[(n + k - 1) % #MATERIALS + 1]
      local name = adj[1] .. " " .. noun[2]
      out[i] = {
        name = name, category = noun[1],
        description = ("%s in %s %s, made for %s. A demo product of the mercato catalogue."):format(name, color, material, noun[4]),
        price_cents = math.floor(noun[3] * adj[2] / 100 / 100) * 100 + 99,
        tags = { noun[2]:lower(), adj[3], color },
        stock = 5 + (i * 37) % 120,
        created_offset = i,   -- hours after the epoch of the demo: a stable "newest" order
      }
    end
  end
  return out
end

local function run()
  local created = 0
  local ok, err, code = db.tx(function()
    for _, c in ipairs(CATEGORIES) do
      local n, e, cd = db.exec([[INSERT INTO categories (id, slug, name, parent_id)
          VALUES (md5('mercato-demo-category:' || $1)::uuid, $1, $2, (SELECT id FROM categories WHERE slug = $3))
          ON CONFLICT (slug) DO NOTHING]], c[1], c[2], c[3] or db.null)
      if not n then return nil, e, cd end
    end
    for _, p in ipairs(products()) do
      local row, e, cd = db.query_one([[INSERT INTO products (id, seller_id, name, description, price_cents, currency,
          category_id, category_text, tags, created_at, updated_at)
        SELECT md5('mercato-demo-product:' || $2)::uuid, $1, $2, $3, $4, 'eur', c.id, coalesce(category_path_text(c.id), ''),
          ARRAY(SELECT jsonb_array_elements_text($6::jsonb)),
          timestamptz '2026-01-01T00:00:00Z' + $7 * interval '1 hour', timestamptz '2026-01-01T00:00:00Z' + $7 * interval '1 hour'
        FROM categories c WHERE c.slug = $5
        ON CONFLICT (id) DO NOTHING
        RETURNING id, seller_id, name, price_cents, currency, category_id, version]],
        SELLER, p.name, p.description, p.price_cents, p.category, json.encode(json.array(p.tags)), p.created_offset)
      if e then return nil, e, cd end
      if row then
        local n
        n, e, cd = db.exec("INSERT INTO inventory (product_id, stock) VALUES ($1, $2) ON CONFLICT DO NOTHING", row.id, p.stock)
        if not n then return nil, e, cd end
        local ev
        ev, e, cd = outbox.add("product.created", {
          product_id = row.id, seller_id = row.seller_id, name = row.name, price_cents = row.price_cents,
          currency = row.currency, category_id = row.category_id, tags = json.array(p.tags), version = row.version,
        })
        if not ev then return nil, e, cd end
        created = created + 1
      end
    end
    return true
  end)
  if not ok then
    io.stderr:write(("seed: failed: %s (%s)\n"):format(tostring(err), tostring(code)))
    return 1
  end
  print(("seed: %d categories, %d products in the demo catalogue; %d new"):format(#CATEGORIES, #products(), created))
  return 0
end

return run()
