-- Products. Sellers own their rows (seller_id is the token's sub, never the client's word);
-- `version` is the ETag and the If-Match precondition; a delete is soft (status 'deleted') so
-- orders and events can still name the product. Stock lives in `inventory` (004).
CREATE TABLE products (
    id             uuid        PRIMARY KEY,
    seller_id      uuid        NOT NULL,
    name           text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description    text        NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    price_cents    bigint      NOT NULL CHECK (price_cents BETWEEN 0 AND 100000000),
    currency       text        NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    category_id    uuid        REFERENCES categories (id) ON DELETE SET NULL,
    -- category_path_text(category_id), kept by the writes: search matches category names.
    category_text  text        NOT NULL DEFAULT '',
    tags           text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 20),
    status         text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
    version        bigint      NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    -- Weighted document: name A > tags and category B > description C. Generated, so it is
    -- updated in the very statement (and transaction) that writes the product.
    search_vector  tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('product_search', name), 'A') ||
        setweight(to_tsvector('product_search', product_tags_text(tags)), 'B') ||
        setweight(to_tsvector('product_search', category_text), 'B') ||
        setweight(to_tsvector('product_search', description), 'C')
    ) STORED,
    -- Folded name (lower case, no accents) for trigram typo matching.
    name_folded    text GENERATED ALWAYS AS (product_fold(name)) STORED
);

CREATE INDEX products_search_idx ON products USING gin (search_vector);
CREATE INDEX products_name_trgm_idx ON products USING gin (name_folded gin_trgm_ops);
CREATE INDEX products_tags_idx ON products USING gin (tags);
-- Keyset pagination of the browse orders (active products only).
CREATE INDEX products_newest_idx ON products (created_at DESC, id) WHERE status = 'active';
CREATE INDEX products_price_idx ON products (price_cents, id) WHERE status = 'active';
CREATE INDEX products_category_idx ON products (category_id) WHERE status = 'active';
CREATE INDEX products_seller_idx ON products (seller_id) WHERE status = 'active';
