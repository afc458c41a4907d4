-- Product search in PostgreSQL (services.product.search_pg): accent-insensitive English text
-- search and trigram typo tolerance. The `product_search` configuration strips accents before
-- stemming, so "creme brulee" finds "Crème brûlée"; being a named configuration, to_tsvector
-- with it is immutable and may feed a generated column.
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TEXT SEARCH CONFIGURATION product_search (COPY = english);
ALTER TEXT SEARCH CONFIGURATION product_search
    ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem;

-- unaccent() is only STABLE (its dictionary could be swapped); pinned to one dictionary it is
-- safe to call immutable, which generated columns and expression indexes require.
CREATE FUNCTION product_fold(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT lower(public.unaccent('public.unaccent'::regdictionary, t)) $$;

-- array_to_string() is STABLE in general (element output functions); for text[] it is not.
CREATE FUNCTION product_tags_text(tags text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT array_to_string(tags, ' ') $$;
