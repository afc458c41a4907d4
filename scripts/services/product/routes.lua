-- scripts/services/product/routes.lua: what the product service answers (CONTRACT §6).
-- Roles and scopes are checked in C; ownership (seller_id = token sub) in the handlers.
local products = require "services.product.handlers.products"
local categories = require "services.product.handlers.categories"
local inventory = require "services.product.handlers.inventory"
local images = require "services.product.handlers.images"

local SMALL = 64 * 1024   -- a product document: name, 5000-character description, 20 tags
local WRITERS = { "seller", "admin" }
local ADMIN = { "admin" }

return {
  { "GET",    "/products",         products.list },
  { "POST",   "/products",         products.create, roles = WRITERS, max_body = SMALL },
  { "GET",    "/products/{id}",    products.show, auth = "optional" },   -- a token shows its owner a deleted product
  { "PATCH",  "/products/{id}",    products.update, roles = WRITERS, max_body = SMALL },
  { "DELETE", "/products/{id}",    products.delete, roles = WRITERS },
  { "GET",    "/categories",       categories.list },
  { "POST",   "/categories",       categories.create, roles = ADMIN, max_body = SMALL },
  { "GET",    "/categories/{id}",  categories.show },
  { "PATCH",  "/categories/{id}",  categories.update, roles = ADMIN, max_body = SMALL },
  { "DELETE", "/categories/{id}",  categories.delete, roles = ADMIN },
  { "GET",    "/tags",             categories.tags },

  { "GET",    "/products/{id}/inventory",           inventory.show },
  { "PUT",    "/products/{id}/inventory",           inventory.put, roles = WRITERS, max_body = 4 * 1024 },
  { "POST",   "/internal/reservations",             inventory.reserve, scope = "inventory", max_body = SMALL },
  { "POST",   "/internal/reservations/{id}/commit", inventory.commit, scope = "inventory", max_body = 4 * 1024 },
  { "DELETE", "/internal/reservations/{id}",        inventory.release, scope = "inventory" },
  { "POST",   "/products/{id}/images",              images.upload, roles = WRITERS, max_body = images.MAX_BYTES },
  { "GET",    "/images/{key*}",                     images.serve },
}
