-- 052_reservation_snapshot: what each reserved item was when its stock was taken — name, unit
-- price, currency and seller, copied from the products row the conditional take checked, by
-- the take's own INSERT (same statement, same transaction). The order service builds the
-- order's lines and totals from this snapshot, so a price edit racing the checkout cannot
-- change what the buyer is charged, and a replay of the reservation answers the same items.
-- NULL on rows reserved before this migration.
ALTER TABLE reservation_items
  ADD COLUMN name              text,
  ADD COLUMN unit_price_cents  bigint,
  ADD COLUMN currency          text,
  ADD COLUMN seller_id         uuid;
