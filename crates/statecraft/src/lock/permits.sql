-- statecraft: the semaphore's step, a copy of lock::permits'
-- semaphore_step in PL/pgSQL (input and output as lock::permits writes
-- them, the holders in columns), checked against the Rust function by
-- tests/lock_native.rs. `@name@` is the identifier "<table>_name" of the
-- backend's table, `@name#@` that name with this file's version. Every
-- figure has at most 16 digits; the time is clock_timestamp() in µs.

-- One row per semaphore with a permit held, readable: its key, the
-- holders' owner ids and when each one's lease ends (in the same order),
-- when the row was last written and when it is forgotten (a minute after
-- the last lease ends).
CREATE TABLE IF NOT EXISTS @semaphores@ (
    key bytea PRIMARY KEY,
    owners text[] NOT NULL,
    held_until timestamptz[] NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS @semaphores_expiry@ ON @semaphores@ (expires_at);
COMMENT ON TABLE @semaphores@ IS
    'statecraft semaphores: one row per semaphore with permits held, written only by the semaphore step function';
COMMENT ON COLUMN @semaphores@.owners IS 'the permits'' holders (random owner ids)';
COMMENT ON COLUMN @semaphores@.held_until IS 'when each holder''s lease ends (store clock), as owners';

CREATE OR REPLACE FUNCTION @semaphore_step#@(p_key bytea, p_input text, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    max_lease constant int8 := 31622400000000;
    max_permits constant int8 := 4096;
    linger constant int8 := 60000000;
    m text[];
    op text;
    who text;
    permits int8;
    ls int8;
    now_us int8;
    have_row boolean;
    server_clock boolean;
    st_owners text[];
    st_until timestamptz[];
    l_owners text[] := '{}';
    l_ends int8[] := '{}';
    e int8;
    mine int;
    i int;
    latest int8;
    ttl int8;
    answer text;
    written int8;
BEGIN
    -- As the lock's: the commit does not wait for its WAL (a server
    -- crash may forget the last moments of permits, as Redis without
    -- fsync does).
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_input = '?' THEN
        SELECT owners, held_until INTO st_owners, st_until
            FROM @semaphores@ WHERE key = p_key AND expires_at > clock_timestamp();
        now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        IF NOT FOUND OR cardinality(st_owners) = 0 THEN
            RETURN now_us || ' ';
        END IF;
        answer := 'm';
        FOR i IN 1 .. cardinality(st_owners) LOOP
            answer := answer || ' ' || st_owners[i] || ' '
                || (extract(epoch FROM st_until[i]) * 1000000)::int8;
        END LOOP;
        RETURN now_us || ' ' || answer;
    END IF;
    m := regexp_match(p_input, '^([aer]) ([0-9a-f]{32})((?: [0-9]{1,16}){1,3})$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'semaphore step: malformed input' USING ERRCODE = '22023';
    END IF;
    op := m[1];
    who := m[2];
    m := string_to_array(ltrim(m[3], ' '), ' ');
    IF op = 'a' AND cardinality(m) = 3 THEN
        permits := m[1]::int8; ls := m[2]::int8; now_us := m[3]::int8;
        IF permits < 1 OR permits > max_permits THEN
            RAISE EXCEPTION 'semaphore step: permits out of range' USING ERRCODE = '22023';
        END IF;
    ELSIF op = 'e' AND cardinality(m) = 2 THEN
        ls := m[1]::int8; now_us := m[2]::int8;
    ELSIF op = 'r' AND cardinality(m) = 1 THEN
        now_us := m[1]::int8;
    ELSE
        RAISE EXCEPTION 'semaphore step: malformed input' USING ERRCODE = '22023';
    END IF;
    IF op <> 'r' AND (ls < 1 OR ls > max_lease) THEN
        RAISE EXCEPTION 'semaphore step: a lease out of range' USING ERRCODE = '22023';
    END IF;
    server_clock := now_us = 0;

    LOOP
        -- An expired row counts as none (and is taken over below).
        SELECT CASE WHEN expires_at > clock_timestamp() THEN owners END,
               CASE WHEN expires_at > clock_timestamp() THEN held_until END
            INTO st_owners, st_until
            FROM @semaphores@ WHERE key = p_key FOR UPDATE;
        have_row := FOUND;
        -- The time once the row is ours: a wait for it is not in a lease.
        IF server_clock THEN
            now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        END IF;
        -- The live holders, in order; mine: the first that is the asker.
        l_owners := '{}'; l_ends := '{}'; mine := NULL;
        FOR i IN 1 .. coalesce(cardinality(st_owners), 0) LOOP
            e := (extract(epoch FROM st_until[i]) * 1000000)::int8;
            IF e > now_us THEN
                l_owners := l_owners || st_owners[i];
                l_ends := l_ends || e;
                IF mine IS NULL AND st_owners[i] = who THEN
                    mine := cardinality(l_owners);
                END IF;
            END IF;
        END LOOP;

        IF op = 'a' OR op = 'e' THEN
            IF mine IS NOT NULL THEN
                l_ends[mine] := now_us + ls;
            ELSIF op = 'a' AND cardinality(l_owners) < permits THEN
                l_owners := l_owners || who;
                l_ends := l_ends || (now_us + ls);
            ELSIF op = 'a' THEN
                RETURN 'B ' || cardinality(l_owners) || ' ' || ((SELECT min(x) FROM unnest(l_ends) x) - now_us);
            ELSE
                RETURN 'N';
            END IF;
            answer := 'H ' || cardinality(l_owners) || ' ' || ls;
        ELSE
            IF mine IS NULL THEN
                RETURN 'N';
            END IF;
            l_owners := l_owners[1 : mine - 1] || l_owners[mine + 1 :];
            l_ends := l_ends[1 : mine - 1] || l_ends[mine + 1 :];
            answer := 'R ' || cardinality(l_owners);
        END IF;

        IF cardinality(l_owners) = 0 THEN
            DELETE FROM @semaphores@ WHERE key = p_key;
            RETURN answer;
        END IF;
        latest := (SELECT max(x) FROM unnest(l_ends) x);
        ttl := (latest - now_us + linger + 999) / 1000;
        IF have_row THEN
            UPDATE @semaphores@ SET owners = l_owners,
                held_until = ARRAY(SELECT timestamptz 'epoch' + x * interval '1 microsecond'
                    FROM unnest(l_ends) WITH ORDINALITY AS u(x, n) ORDER BY n),
                updated_at = clock_timestamp(),
                expires_at = clock_timestamp() + ttl * interval '1 millisecond'
                WHERE key = p_key;
        ELSE
            INSERT INTO @semaphores@ (key, owners, held_until, updated_at, expires_at)
                VALUES (p_key, l_owners,
                    ARRAY(SELECT timestamptz 'epoch' + x * interval '1 microsecond'
                        FROM unnest(l_ends) WITH ORDINALITY AS u(x, n) ORDER BY n),
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
