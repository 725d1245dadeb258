-- statecraft: the fenced write, a copy of lock::fenced::FencedWrite in
-- PL/pgSQL, checked against the Rust step by tests/lock_native.rs. The
-- state is the key's value in the backend's own table (@table@): `<token>
-- <value>`, as fenced_get reads it. Stored only if the input's token is at
-- least the one the stored value carries (none, or not fenced: 0), without
-- an expiry; answers 'W' (written) or 'S <highest>'.

-- The token a `<token> <value>` text carries (1 to 16 digits, below 2^53,
-- then a space), or null.
CREATE OR REPLACE FUNCTION @fenced_token#@(p_text bytea)
RETURNS int8 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN head ~ '^[0-9]{1,16}$' AND head::int8 < 9007199254740992 THEN head::int8 END
    FROM (SELECT CASE WHEN space BETWEEN 2 AND 17
            -- (escape: any byte reads as text, a non-digit one never as a digit)
            THEN encode(substring(p_text FROM 1 FOR space - 1), 'escape') END AS head
          FROM (SELECT position('\x20'::bytea IN p_text) AS space) s) h
$$;

-- (p_default_ttl: the backend's default TTL, unused: a fenced value never
-- expires, or a stale writer would get in.)
CREATE OR REPLACE FUNCTION @fenced_write#@(p_key bytea, p_input bytea, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    token int8 := @fenced_token#@(p_input);
    stored bytea;
    live boolean;
    highest int8;
    written int8;
BEGIN
    IF token IS NULL THEN
        RAISE EXCEPTION 'fenced write: the input is not `<token> <value>`' USING ERRCODE = '22023';
    END IF;
    LOOP
        -- (The token's 17 bytes at most: a long value is not read whole.)
        SELECT substring(value FROM 1 FOR 17), expires_at IS NULL OR expires_at > clock_timestamp()
            INTO stored, live
            FROM @table@ WHERE key = p_key FOR UPDATE;
        IF FOUND THEN
            -- An expired value is none; a value not fenced has seen no token.
            highest := CASE WHEN live THEN coalesce(@fenced_token#@(stored), 0) ELSE 0 END;
            IF token < highest THEN
                RETURN 'S ' || highest;
            END IF;
            UPDATE @table@ SET value = p_input, expires_at = NULL WHERE key = p_key;
            RETURN 'W';
        END IF;
        INSERT INTO @table@ (key, value, expires_at) VALUES (p_key, p_input, NULL)
            ON CONFLICT (key) DO NOTHING;
        GET DIAGNOSTICS written = ROW_COUNT;
        -- Another writer created the row first: decide again on it.
        IF written = 1 THEN
            RETURN 'W';
        END IF;
    END LOOP;
END
$$;
