-- scripts/services/product/consumers.lua: the outbox relay (product.* events to RabbitMQ) and,
-- with ELASTICSEARCH_URL set, the search indexer: product.created/updated/deleted → the
-- product's current row into (or out of) the index; retried through the broker, ES outages
-- held without burning the delivery limit (lib.consumer).
local consumer = require "lib.consumer"
local host = require "host"
local outbox = require "lib.outbox"

local entries = { outbox.relay_entry() }

local es_url = host.env("ELASTICSEARCH_URL")
if es_url and es_url ~= "" then
  local es = require "services.product.search_es"
  entries[#entries + 1] = consumer.define {
    name = "product-search-index",
    queue = host.env("SEARCH_INDEX_QUEUE") or "product.search-index",
    bindings = { "product.created", "product.updated", "product.deleted" },
    prefetch = 20, delivery_limit = 10,
    handle = function(event)
      return es.sync(event.data and event.data.product_id)
    end,
  }
end

return entries
