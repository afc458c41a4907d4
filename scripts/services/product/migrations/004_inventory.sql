-- Stock of each product, one row per product, written in the transaction that creates the
-- product. `stock` is what can still be sold (GET /products/{id} shows it as `stock`);
-- `reserved` is held by uncommitted reservations. The reservation tables and endpoints are
-- later migrations (050+) on top of this table; whoever changes a row here calls
-- services.product.cache.invalidate(product_id) after the commit.
CREATE TABLE inventory (
    product_id  uuid        PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    stock       integer     NOT NULL CHECK (stock >= 0),
    reserved    integer     NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    version     bigint      NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
