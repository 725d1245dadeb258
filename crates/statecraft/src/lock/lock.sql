-- statecraft: the lock's step, a copy of lock::machine::lock_step in
-- PL/pgSQL (input and output as lock::shared writes them, the state in
-- columns), checked against the Rust function by tests/lock_native.rs.
-- `@name@` is the identifier "<table>_name" of the backend's table,
-- `@name#@` that name with this file's version. Every figure has at most
-- 16 digits (below 2^53); the time is clock_timestamp() in microseconds.

-- One row per lock in use, readable: its key, holder (NULL: free), fencing
-- token (the holder's, or the last one given), when the holder's lease
-- ends, when the row was last written and when it is forgotten (an hour
-- after the lease or the release).
CREATE TABLE IF NOT EXISTS @locks@ (
    key bytea PRIMARY KEY,
    owner text,
    token int8 NOT NULL,
    held_until timestamptz,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS @locks_expiry@ ON @locks@ (expires_at);
COMMENT ON TABLE @locks@ IS
    'statecraft locks: one row per lock in use, written only by the lock step function';
COMMENT ON COLUMN @locks@.owner IS 'the holder''s random owner id (NULL: free)';
COMMENT ON COLUMN @locks@.token IS 'the holder''s fencing token, or the last one given';
COMMENT ON COLUMN @locks@.held_until IS 'when the holder''s lease ends (store clock)';
COMMENT ON COLUMN @locks@.expires_at IS 'past it the row is forgotten and purged';

CREATE OR REPLACE FUNCTION @lock_step#@(p_key bytea, p_input text, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    retain constant int8 := 3600000000;
    max_lease constant int8 := 31622400000000;
    m text[];
    op text;
    who text;
    tok int8;
    ls int8;
    now_us int8;
    have_row boolean;
    live boolean;
    server_clock boolean;
    st_owner text;
    st_token int8;
    st_until timestamptz;
    st_expires int8;
    held boolean;
    new_owner text;
    new_token int8;
    new_until int8;
    ttl int8;
    answer text;
    written int8;
BEGIN
    -- As the limiter's: the commit does not wait for its WAL to reach the
    -- disk. A server crash may forget the last moments of acquisitions
    -- (as Redis without fsync does): mutual exclusion then holds only
    -- for writes fenced by the token, which stays above every token given
    -- (it is the server's time, raised past the last one remembered).
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_input = '?' THEN
        SELECT owner, token, held_until INTO st_owner, st_token, st_until
            FROM @locks@ WHERE key = p_key AND expires_at > clock_timestamp();
        now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        IF NOT FOUND THEN
            RETURN now_us || ' ';
        ELSIF st_owner IS NOT NULL THEN
            RETURN now_us || ' h ' || st_owner || ' ' || st_token || ' '
                || (extract(epoch FROM st_until) * 1000000)::int8;
        END IF;
        RETURN now_us || ' f ' || st_token;
    END IF;
    m := regexp_match(p_input,
        '^([aer]) ([0-9a-f]{32})((?: [0-9]{1,16}){2,3})$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'lock step: malformed input' USING ERRCODE = '22023';
    END IF;
    op := m[1];
    who := m[2];
    m := string_to_array(ltrim(m[3], ' '), ' ');
    IF op = 'a' AND cardinality(m) = 2 THEN
        ls := m[1]::int8; now_us := m[2]::int8;
    ELSIF op = 'e' AND cardinality(m) = 3 THEN
        tok := m[1]::int8; ls := m[2]::int8; now_us := m[3]::int8;
    ELSIF op = 'r' AND cardinality(m) = 2 THEN
        tok := m[1]::int8; now_us := m[2]::int8;
    ELSE
        RAISE EXCEPTION 'lock step: malformed input' USING ERRCODE = '22023';
    END IF;
    IF op <> 'r' AND (ls < 1 OR ls > max_lease) THEN
        RAISE EXCEPTION 'lock step: a lease out of range' USING ERRCODE = '22023';
    END IF;
    server_clock := now_us = 0;

    LOOP
        -- The row locked whatever its expiry (a filter on it would skip an
        -- expired version without waiting for a call that is taking the
        -- lock over), then an expired one counts as none.
        SELECT owner, token, held_until, expires_at > clock_timestamp()
            INTO st_owner, st_token, st_until, live
            FROM @locks@ WHERE key = p_key FOR UPDATE;
        have_row := FOUND;
        IF NOT coalesce(live, false) THEN
            st_owner := NULL; st_token := NULL; st_until := NULL;
        END IF;
        -- The time once the row is ours: a wait for it is not in a lease.
        IF server_clock THEN
            now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        END IF;
        st_expires := (extract(epoch FROM st_until) * 1000000)::int8;
        held := st_owner IS NOT NULL AND st_expires > now_us;

        new_owner := NULL;
        IF op = 'a' THEN
            IF held AND st_owner = who THEN
                new_owner := who; new_token := st_token;
            ELSIF held THEN
                RETURN 'B ' || st_token || ' ' || (st_expires - now_us);
            ELSE
                new_owner := who; new_token := greatest(coalesce(st_token, 0) + 1, now_us);
            END IF;
        ELSIF op = 'e' THEN
            IF NOT (held AND st_owner = who AND st_token = tok) THEN
                RETURN 'N';
            END IF;
            new_owner := who; new_token := tok;
        ELSE
            IF NOT (st_owner IS NOT NULL AND st_owner = who AND st_token = tok) THEN
                RETURN 'N';
            END IF;
        END IF;

        IF new_owner IS NOT NULL THEN
            new_until := now_us + ls;
            ttl := ls + retain;
            answer := 'H ' || new_token || ' ' || ls;
        ELSE
            new_token := tok;
            ttl := retain;
            answer := 'R ' || tok;
        END IF;
        ttl := greatest((ttl + 999) / 1000, 1);
        IF have_row THEN
            UPDATE @locks@ SET owner = new_owner, token = new_token,
                held_until = CASE WHEN new_owner IS NULL THEN NULL
                    ELSE timestamptz 'epoch' + new_until * interval '1 microsecond' END,
                updated_at = clock_timestamp(),
                expires_at = clock_timestamp() + ttl * interval '1 millisecond'
                WHERE key = p_key;
        ELSE
            INSERT INTO @locks@ (key, owner, token, held_until, updated_at, expires_at)
                VALUES (p_key, new_owner, new_token,
                    CASE WHEN new_owner IS NULL THEN NULL
                        ELSE timestamptz 'epoch' + new_until * interval '1 microsecond' END,
                    clock_timestamp(), clock_timestamp() + ttl * interval '1 millisecond')
                ON CONFLICT (key) DO NOTHING;
            GET DIAGNOSTICS written = ROW_COUNT;
            -- Another call created the row first: decide again on it.
            CONTINUE WHEN written = 0;
        END IF;
        RETURN answer;
    END LOOP;
END
$$;
