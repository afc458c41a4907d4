-- 050_reservations: stock reservations made by the order service's checkout saga (internal
-- POST /internal/reservations), held until committed, released, or expired past their TTL.
-- Written by bindings/inventory.c only. No foreign key to the catalogue's tables: a product
-- deleted later must not make its sales history undeletable, and the conditional UPDATE on
-- inventory already refuses products that have no stock row.
CREATE TABLE reservations (
  id          uuid PRIMARY KEY,
  status      text NOT NULL DEFAULT 'reserved'
              CHECK (status IN ('reserved', 'committed', 'released', 'expired')),
  expires_at  timestamptz NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The expiry job's scan: only open reservations, oldest deadline first.
CREATE INDEX reservations_open_expiry ON reservations (expires_at) WHERE status = 'reserved';

CREATE TABLE reservation_items (
  reservation_id  uuid NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
  product_id      uuid NOT NULL,
  quantity        int NOT NULL CHECK (quantity > 0),
  PRIMARY KEY (reservation_id, product_id)
);

CREATE INDEX reservation_items_product ON reservation_items (product_id);
