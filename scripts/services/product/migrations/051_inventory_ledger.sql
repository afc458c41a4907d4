-- 051_inventory_ledger: every change of a product's stock as a row, so that
--   initial + restocks - sold - reserved = stock
-- can be checked (inventory.audit). Quantities are positive except restocks (a signed delta).
--   initial  stock the inventory row was created with (trigger below)
--   restock  PUT /products/{id}/inventory: new stock - old stock
--   reserve  stock → reserved;  commit  reserved → sold;  release / expire  reserved → stock
--   return   a committed reservation released: sold → stock
CREATE TABLE inventory_ledger (
  id              bigserial PRIMARY KEY,
  product_id      uuid NOT NULL,
  kind            text NOT NULL
                  CHECK (kind IN ('initial', 'restock', 'reserve', 'commit', 'release', 'expire', 'return')),
  quantity        int NOT NULL,
  reservation_id  uuid,
  stock_after     int NOT NULL,
  reserved_after  int NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX inventory_ledger_product ON inventory_ledger (product_id, id);

-- The catalogue creates inventory rows (POST /products with stock); the ledger records their
-- opening stock whoever inserts them.
CREATE FUNCTION inventory_ledger_initial() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO inventory_ledger (product_id, kind, quantity, stock_after, reserved_after)
  VALUES (NEW.product_id, 'initial', NEW.stock + NEW.reserved, NEW.stock, NEW.reserved);
  IF NEW.reserved <> 0 THEN
    INSERT INTO inventory_ledger (product_id, kind, quantity, stock_after, reserved_after)
    VALUES (NEW.product_id, 'reserve', NEW.reserved, NEW.stock, NEW.reserved);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER inventory_ledger_initial AFTER INSERT ON inventory
  FOR EACH ROW EXECUTE FUNCTION inventory_ledger_initial();

-- Rows created before this migration (seeded by earlier ones) get their opening entry too.
INSERT INTO inventory_ledger (product_id, kind, quantity, stock_after, reserved_after)
SELECT product_id, 'initial', stock + reserved, stock, reserved FROM inventory;
INSERT INTO inventory_ledger (product_id, kind, quantity, stock_after, reserved_after)
SELECT product_id, 'reserve', reserved, stock, reserved FROM inventory WHERE reserved <> 0;
