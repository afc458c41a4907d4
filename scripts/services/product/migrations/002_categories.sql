-- Categories: a tree (parent_id), addressed by id or by a unique slug. Writes are admin-only.
CREATE TABLE categories (
    id          uuid        PRIMARY KEY,
    slug        text        NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 64),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    parent_id   uuid        REFERENCES categories (id) ON DELETE RESTRICT,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS NULL OR parent_id <> id)
);
CREATE INDEX categories_parent_idx ON categories (parent_id);

-- The names of a category and its ancestors, root first ("Electronics Audio Headphones"):
-- what product search matches for a product's category (denormalised into products).
CREATE FUNCTION category_path_text(cat uuid) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    WITH RECURSIVE up(id, parent_id, name, depth) AS (
        SELECT id, parent_id, name, 0 FROM categories WHERE id = cat
        UNION ALL
        SELECT c.id, c.parent_id, c.name, up.depth + 1 FROM categories c JOIN up ON c.id = up.parent_id
        WHERE up.depth < 32
    )
    SELECT string_agg(name, ' ' ORDER BY depth DESC) FROM up
    $$;
