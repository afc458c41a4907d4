-- 054_product_images: uploaded images are recorded. product_images is the record of each object
-- the service put in the image store (its key, type and size); products.images lists a
-- product's keys in upload order (part of its document, so an upload moves its version on).
-- Deleting a product empties products.images in the same UPDATE; the images-purge job then
-- deletes its objects from the store and stamps their rows deleted_at.
CREATE TABLE product_images (
    key           text        PRIMARY KEY,              -- products/<product id>/<uuid>.<ext>
    product_id    uuid        NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    content_type  text        NOT NULL,
    bytes         integer     NOT NULL CHECK (bytes >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz                           -- removed from the store
);
CREATE INDEX product_images_product_idx ON product_images (product_id);
-- The purge job's scan: images still in the store.
CREATE INDEX product_images_live_idx ON product_images (product_id) WHERE deleted_at IS NULL;

ALTER TABLE products ADD COLUMN images text[] NOT NULL DEFAULT '{}' CHECK (cardinality(images) <= 20);
