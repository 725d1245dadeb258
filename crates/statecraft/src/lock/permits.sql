-- statecraft: the semaphore's step, a copy of lock::permits'
-- semaphore_step in PL/pgSQL (input and output as lock::permits writes
-- them, the holders and the line in columns), checked against the Rust function by
-- tests/lock_native.rs. `@name@` is the identifier "<table>_name" of the
-- backend's table, `@name#@` that name with this file's version. Every
-- figure has at most 16 digits; the time is clock_timestamp() in µs.

-- One row per semaphore with a permit held or someone waiting, readable:
-- its key, the holders' owner ids and when each one's lease ends (in the
-- same order), the waiters in line and until when each place is kept,
-- when the row was last written and when it is forgotten (a minute after
-- the last lease or place ends).
CREATE TABLE IF NOT EXISTS @semaphores@ (
    key bytea PRIMARY KEY,
    owners text[] NOT NULL,
    held_until timestamptz[] NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    waiters text[] NOT NULL DEFAULT '{}',
    waiting_until timestamptz[] NOT NULL DEFAULT '{}'
);
-- The line's columns on a table an older version made: looked up first,
-- as an ALTER TABLE locks the table (and asks to own it) even when they
-- are there.
-- (Behind a long transaction on the table the ALTER would queue every
-- step behind it: it gives up after 5 s, and the next call tries again.)
SET LOCAL lock_timeout = '5s';
DO $$
BEGIN
    IF (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('@semaphores@')
        AND attname IN ('waiters', 'waiting_until') AND NOT attisdropped) < 2
    THEN
        ALTER TABLE @semaphores@ ADD COLUMN IF NOT EXISTS waiters text[] NOT NULL DEFAULT '{}',
            ADD COLUMN IF NOT EXISTS waiting_until timestamptz[] NOT NULL DEFAULT '{}';
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS @semaphores_expiry@ ON @semaphores@ (expires_at);
COMMENT ON TABLE @semaphores@ IS
    'statecraft semaphores: one row per semaphore with permits held or waiters, written only by the semaphore step function';
COMMENT ON COLUMN @semaphores@.owners IS 'the permits'' holders (random owner ids)';
COMMENT ON COLUMN @semaphores@.held_until IS 'when each holder''s lease ends (store clock), as owners';
COMMENT ON COLUMN @semaphores@.waiters IS 'who waits for a permit, first first (random owner ids)';
COMMENT ON COLUMN @semaphores@.waiting_until IS 'until when each waiter''s place is kept (store clock), as waiters';

-- µs since the epoch of a time.
CREATE OR REPLACE FUNCTION @semaphore_us#@(t timestamptz)
RETURNS int8 LANGUAGE sql IMMUTABLE AS $f$
    SELECT (extract(epoch FROM t) * 1000000)::int8
$f$;

-- The `m …` text of holders and a line.
CREATE OR REPLACE FUNCTION @semaphore_text#@(
    h_owners text[], h_ends int8[], w_owners text[], w_ends int8[])
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
DECLARE
    answer text := 'm';
BEGIN
    FOR i IN 1 .. coalesce(cardinality(h_owners), 0) LOOP
        answer := answer || ' ' || h_owners[i] || ' ' || h_ends[i];
    END LOOP;
    IF coalesce(cardinality(w_owners), 0) > 0 THEN
        answer := answer || ' w';
        FOR i IN 1 .. cardinality(w_owners) LOOP
            answer := answer || ' ' || w_owners[i] || ' ' || w_ends[i];
        END LOOP;
    END IF;
    RETURN answer;
END
$f$;

CREATE OR REPLACE FUNCTION @semaphore_step#@(p_key bytea, p_input text, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    max_lease constant int8 := 31622400000000;
    max_permits constant int8 := 4096;
    max_line constant int := 32;
    linger constant int8 := 60000000;
    m text[];
    op text;
    who text;
    permits int8;
    ls int8;
    line_us int8;
    now_us int8;
    have_row boolean;
    server_clock boolean;
    st_owners text[];
    st_until timestamptz[];
    st_waiters text[];
    st_wuntil timestamptz[];
    l_owners text[] := '{}';
    l_ends int8[] := '{}';
    w_owners text[] := '{}';
    w_ends int8[] := '{}';
    e int8;
    mine int;
    place int;
    ahead int;
    free int8;
    soonest int8;
    busy text;
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
        SELECT owners, held_until, waiters, waiting_until INTO st_owners, st_until, st_waiters, st_wuntil
            FROM @semaphores@ WHERE key = p_key AND expires_at > clock_timestamp();
        now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        IF NOT FOUND OR (coalesce(cardinality(st_owners), 0) = 0 AND coalesce(cardinality(st_waiters), 0) = 0) THEN
            RETURN now_us || ' ';
        END IF;
        RETURN now_us || ' ' || @semaphore_text#@(st_owners,
            ARRAY(SELECT @semaphore_us#@(x) FROM unnest(st_until) WITH ORDINALITY AS u(x, n) ORDER BY n),
            st_waiters,
            ARRAY(SELECT @semaphore_us#@(x) FROM unnest(st_wuntil) WITH ORDINALITY AS u(x, n) ORDER BY n));
    END IF;
    m := regexp_match(p_input, '^([awler]) ([0-9a-f]{32})((?: [0-9]{1,16}){1,4})$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'semaphore step: malformed input' USING ERRCODE = '22023';
    END IF;
    op := m[1];
    who := m[2];
    m := string_to_array(ltrim(m[3], ' '), ' ');
    IF op = 'a' AND cardinality(m) = 3 THEN
        permits := m[1]::int8; ls := m[2]::int8; now_us := m[3]::int8;
    ELSIF op = 'w' AND cardinality(m) = 4 THEN
        permits := m[1]::int8; ls := m[2]::int8; line_us := m[3]::int8; now_us := m[4]::int8;
        IF line_us < 1 OR line_us > max_lease THEN
            RAISE EXCEPTION 'semaphore step: a place out of range' USING ERRCODE = '22023';
        END IF;
    ELSIF op = 'e' AND cardinality(m) = 2 THEN
        ls := m[1]::int8; now_us := m[2]::int8;
    ELSIF (op = 'r' OR op = 'l') AND cardinality(m) = 1 THEN
        now_us := m[1]::int8;
    ELSE
        RAISE EXCEPTION 'semaphore step: malformed input' USING ERRCODE = '22023';
    END IF;
    IF op IN ('a', 'w') AND (permits < 1 OR permits > max_permits) THEN
        RAISE EXCEPTION 'semaphore step: permits out of range' USING ERRCODE = '22023';
    END IF;
    IF op IN ('a', 'w', 'e') AND (ls < 1 OR ls > max_lease) THEN
        RAISE EXCEPTION 'semaphore step: a lease out of range' USING ERRCODE = '22023';
    END IF;
    server_clock := now_us = 0;

    LOOP
        -- An expired row counts as none (and is taken over below).
        SELECT CASE WHEN expires_at > clock_timestamp() THEN owners END,
               CASE WHEN expires_at > clock_timestamp() THEN held_until END,
               CASE WHEN expires_at > clock_timestamp() THEN waiters END,
               CASE WHEN expires_at > clock_timestamp() THEN waiting_until END
            INTO st_owners, st_until, st_waiters, st_wuntil
            FROM @semaphores@ WHERE key = p_key FOR UPDATE;
        have_row := FOUND;
        -- The time once the row is ours: a wait for it is not in a lease.
        IF server_clock THEN
            now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        END IF;
        -- The live holders and places, in order; mine and place: the
        -- first that is the asker's.
        l_owners := '{}'; l_ends := '{}'; mine := NULL;
        FOR i IN 1 .. coalesce(cardinality(st_owners), 0) LOOP
            e := @semaphore_us#@(st_until[i]);
            IF e > now_us THEN
                l_owners := l_owners || st_owners[i];
                l_ends := l_ends || e;
                IF mine IS NULL AND st_owners[i] = who THEN
                    mine := cardinality(l_owners);
                END IF;
            END IF;
        END LOOP;
        w_owners := '{}'; w_ends := '{}'; place := NULL;
        FOR i IN 1 .. coalesce(cardinality(st_waiters), 0) LOOP
            e := @semaphore_us#@(st_wuntil[i]);
            IF e > now_us THEN
                w_owners := w_owners || st_waiters[i];
                w_ends := w_ends || e;
                IF place IS NULL AND st_waiters[i] = who THEN
                    place := cardinality(w_owners);
                END IF;
            END IF;
        END LOOP;

        answer := NULL;
        IF op = 'a' OR op = 'w' THEN
            free := greatest(permits - cardinality(l_owners), 0);
            ahead := coalesce(place - 1, cardinality(w_owners));
            IF mine IS NOT NULL THEN
                l_ends[mine] := now_us + ls;
                answer := 'H ' || cardinality(l_owners) || ' ' || ls;
            ELSIF free > ahead THEN
                l_owners := l_owners || who;
                l_ends := l_ends || (now_us + ls);
                answer := 'H ' || cardinality(l_owners) || ' ' || ls;
            END IF;
            IF answer IS NOT NULL THEN
                -- Served: out of the line.
                w_ends := ARRAY(SELECT w_ends[k] FROM generate_subscripts(w_owners, 1) k
                    WHERE w_owners[k] <> who ORDER BY k);
                w_owners := ARRAY(SELECT w_owners[k] FROM generate_subscripts(w_owners, 1) k
                    WHERE w_owners[k] <> who ORDER BY k);
            ELSE
                -- The soonest a permit may free up for it: a lease that
                -- ends (none free), or a place before it that lapses.
                IF free = 0 THEN
                    soonest := (SELECT min(x) FROM unnest(l_ends) x);
                ELSE
                    soonest := (SELECT min(w_ends[k]) FROM generate_series(1, ahead) k);
                END IF;
                busy := 'B ' || cardinality(l_owners) || ' ' || (coalesce(soonest, now_us + 1) - now_us);
                IF op = 'a' THEN
                    RETURN busy;
                END IF;
                IF place IS NOT NULL THEN
                    -- A place with more than half its time left stays.
                    IF w_ends[place] - now_us > line_us / 2 THEN
                        RETURN busy;
                    END IF;
                    w_ends[place] := now_us + line_us;
                ELSIF cardinality(w_owners) < max_line THEN
                    w_owners := w_owners || who;
                    w_ends := w_ends || (now_us + line_us);
                ELSE
                    RETURN busy;
                END IF;
                answer := busy;
            END IF;
        ELSIF op = 'l' THEN
            IF place IS NULL AND mine IS NULL THEN
                RETURN 'L';
            END IF;
            w_ends := ARRAY(SELECT w_ends[k] FROM generate_subscripts(w_owners, 1) k
                WHERE w_owners[k] <> who ORDER BY k);
            w_owners := ARRAY(SELECT w_owners[k] FROM generate_subscripts(w_owners, 1) k
                WHERE w_owners[k] <> who ORDER BY k);
            IF mine IS NOT NULL THEN
                l_owners := l_owners[1 : mine - 1] || l_owners[mine + 1 :];
                l_ends := l_ends[1 : mine - 1] || l_ends[mine + 1 :];
                answer := 'R ' || cardinality(l_owners);
            ELSE
                answer := 'L';
            END IF;
        ELSIF op = 'e' THEN
            IF mine IS NULL THEN
                RETURN 'N';
            END IF;
            l_ends[mine] := now_us + ls;
            answer := 'H ' || cardinality(l_owners) || ' ' || ls;
        ELSE
            IF mine IS NULL THEN
                RETURN 'N';
            END IF;
            l_owners := l_owners[1 : mine - 1] || l_owners[mine + 1 :];
            l_ends := l_ends[1 : mine - 1] || l_ends[mine + 1 :];
            answer := 'R ' || cardinality(l_owners);
        END IF;

        IF cardinality(l_owners) = 0 AND cardinality(w_owners) = 0 THEN
            DELETE FROM @semaphores@ WHERE key = p_key;
            RETURN answer;
        END IF;
        latest := greatest((SELECT max(x) FROM unnest(l_ends) x), (SELECT max(x) FROM unnest(w_ends) x));
        ttl := (latest - now_us + linger + 999) / 1000;
        IF have_row THEN
            UPDATE @semaphores@ SET owners = l_owners,
                held_until = ARRAY(SELECT timestamptz 'epoch' + x * interval '1 microsecond'
                    FROM unnest(l_ends) WITH ORDINALITY AS u(x, n) ORDER BY n),
                waiters = w_owners,
                waiting_until = ARRAY(SELECT timestamptz 'epoch' + x * interval '1 microsecond'
                    FROM unnest(w_ends) WITH ORDINALITY AS u(x, n) ORDER BY n),
                updated_at = clock_timestamp(),
                expires_at = clock_timestamp() + ttl * interval '1 millisecond'
                WHERE key = p_key;
        ELSE
            INSERT INTO @semaphores@ (key, owners, held_until, waiters, waiting_until, updated_at, expires_at)
                VALUES (p_key, l_owners,
                    ARRAY(SELECT timestamptz 'epoch' + x * interval '1 microsecond'
                        FROM unnest(l_ends) WITH ORDINALITY AS u(x, n) ORDER BY n),
                    w_owners,
                    ARRAY(SELECT timestamptz 'epoch' + x * interval '1 microsecond'
                        FROM unnest(w_ends) WITH ORDINALITY AS u(x, n) ORDER BY n),
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
