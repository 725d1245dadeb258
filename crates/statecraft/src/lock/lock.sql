-- statecraft: the lock's step, a copy of lock::machine::lock_step in
-- PL/pgSQL (input and output as lock::shared writes them, the state in
-- columns), checked against the Rust function by tests/lock_native.rs.
-- `@name@` is the identifier "<table>_name" of the backend's table,
-- `@name#@` that name with this file's version. Every figure has at most
-- 16 digits (below 2^53); the time is clock_timestamp() in microseconds.

-- One row per lock in use, readable: its key, holder (NULL: free), fencing
-- token (the holder's, or the last one given), when the holder's lease
-- ends, the waiters in line (first first) and until when each one's place
-- is kept, when the row was last written and when it is forgotten (an
-- hour after the lease or the release).
CREATE TABLE IF NOT EXISTS @locks@ (
    key bytea PRIMARY KEY,
    owner text,
    token int8 NOT NULL,
    held_until timestamptz,
    waiters text[] NOT NULL DEFAULT '{}',
    waiting_until timestamptz[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
-- (A table an earlier version made has no line yet.)
ALTER TABLE @locks@ ADD COLUMN IF NOT EXISTS waiters text[] NOT NULL DEFAULT '{}';
ALTER TABLE @locks@ ADD COLUMN IF NOT EXISTS waiting_until timestamptz[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS @locks_expiry@ ON @locks@ (expires_at);
COMMENT ON TABLE @locks@ IS
    'statecraft locks: one row per lock in use, written only by the lock step function';
COMMENT ON COLUMN @locks@.owner IS 'the holder''s random owner id (NULL: free)';
COMMENT ON COLUMN @locks@.token IS 'the holder''s fencing token, or the last one given';
COMMENT ON COLUMN @locks@.held_until IS 'when the holder''s lease ends (store clock)';
COMMENT ON COLUMN @locks@.waiters IS 'the waiters in line, first first (owner ids)';
COMMENT ON COLUMN @locks@.waiting_until IS 'until when each waiter''s place is kept';
COMMENT ON COLUMN @locks@.expires_at IS 'past it the row is forgotten and purged';

CREATE OR REPLACE FUNCTION @lock_step#@(p_key bytea, p_input text, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    retain constant int8 := 3600000000;
    max_lease constant int8 := 31622400000000;
    max_line constant int := 32;
    m text[];
    op text;
    who text;
    tok int8;
    ls int8;
    line_us int8;
    now_us int8;
    have_row boolean;
    live boolean;
    server_clock boolean;
    st_owner text;
    st_token int8;
    st_until timestamptz;
    st_expires int8;
    st_waiters text[];
    st_waiting timestamptz[];
    -- The places still kept, and their ends in us.
    w_owners text[];
    w_until int8[];
    i int;
    held boolean;
    busy text;
    placed boolean;
    new_owner text;
    new_token int8;
    new_until int8;
    ttl int8;
    answer text;
    written int8;
    peek text;
BEGIN
    -- As the limiter's: the commit does not wait for its WAL to reach the
    -- disk. A server crash may forget the last moments of acquisitions
    -- (as Redis without fsync does): mutual exclusion then holds only
    -- for writes fenced by the token, which stays above every token given
    -- (it is the server's time, raised past the last one remembered).
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_input = '?' THEN
        SELECT owner, token, held_until, waiters, waiting_until
            INTO st_owner, st_token, st_until, st_waiters, st_waiting
            FROM @locks@ WHERE key = p_key AND expires_at > clock_timestamp();
        now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        IF NOT FOUND THEN
            RETURN now_us || ' ';
        ELSIF st_owner IS NOT NULL THEN
            peek := now_us || ' h ' || st_owner || ' ' || st_token || ' '
                || (extract(epoch FROM st_until) * 1000000)::int8;
        ELSE
            peek := now_us || ' f ' || st_token;
        END IF;
        FOR i IN 1 .. coalesce(cardinality(st_waiters), 0) LOOP
            peek := peek || ' ' || st_waiters[i] || ' '
                || (extract(epoch FROM st_waiting[i]) * 1000000)::int8;
        END LOOP;
        RETURN peek;
    END IF;
    m := regexp_match(p_input,
        '^([aewlr]) ([0-9a-f]{32})((?: [0-9]{1,16}){1,3})$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'lock step: malformed input' USING ERRCODE = '22023';
    END IF;
    op := m[1];
    who := m[2];
    m := string_to_array(ltrim(m[3], ' '), ' ');
    IF op = 'a' AND cardinality(m) = 2 THEN
        ls := m[1]::int8; now_us := m[2]::int8;
    ELSIF op = 'w' AND cardinality(m) = 3 THEN
        ls := m[1]::int8; line_us := m[2]::int8; now_us := m[3]::int8;
        IF line_us < 1 OR line_us > max_lease THEN
            RAISE EXCEPTION 'lock step: a line time out of range' USING ERRCODE = '22023';
        END IF;
    ELSIF op = 'l' AND cardinality(m) = 1 THEN
        now_us := m[1]::int8;
    ELSIF op = 'e' AND cardinality(m) = 3 THEN
        tok := m[1]::int8; ls := m[2]::int8; now_us := m[3]::int8;
    ELSIF op = 'r' AND cardinality(m) = 2 THEN
        tok := m[1]::int8; now_us := m[2]::int8;
    ELSE
        RAISE EXCEPTION 'lock step: malformed input' USING ERRCODE = '22023';
    END IF;
    IF op IN ('a', 'w', 'e') AND (ls < 1 OR ls > max_lease) THEN
        RAISE EXCEPTION 'lock step: a lease out of range' USING ERRCODE = '22023';
    END IF;
    server_clock := now_us = 0;

    LOOP
        -- The row locked whatever its expiry (a filter on it would skip an
        -- expired version without waiting for a call that is taking the
        -- lock over), then an expired one counts as none.
        SELECT owner, token, held_until, waiters, waiting_until,
                expires_at > clock_timestamp()
            INTO st_owner, st_token, st_until, st_waiters, st_waiting, live
            FROM @locks@ WHERE key = p_key FOR UPDATE;
        have_row := FOUND;
        IF NOT coalesce(live, false) THEN
            st_owner := NULL; st_token := NULL; st_until := NULL;
            st_waiters := '{}'; st_waiting := '{}';
        END IF;
        -- The time once the row is ours: a wait for it is not in a lease.
        IF server_clock THEN
            now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        END IF;
        st_expires := (extract(epoch FROM st_until) * 1000000)::int8;
        held := st_owner IS NOT NULL AND st_expires > now_us;
        w_owners := '{}'; w_until := '{}';
        FOR i IN 1 .. coalesce(cardinality(st_waiters), 0) LOOP
            IF (extract(epoch FROM st_waiting[i]) * 1000000)::int8 > now_us THEN
                w_owners := w_owners || st_waiters[i];
                w_until := w_until || (extract(epoch FROM st_waiting[i]) * 1000000)::int8;
            END IF;
        END LOOP;

        new_owner := NULL;
        answer := NULL;
        IF op IN ('a', 'w') THEN
            busy := NULL;
            IF held AND st_owner = who THEN
                new_owner := who; new_token := st_token;
            ELSIF held THEN
                busy := 'B ' || st_token || ' ' || (st_expires - now_us);
            ELSIF cardinality(w_owners) = 0 OR w_owners[1] = who THEN
                new_owner := who; new_token := greatest(coalesce(st_token, 0) + 1, now_us);
            ELSE
                busy := 'B ' || coalesce(st_token, 0) || ' ' || (w_until[1] - now_us);
            END IF;
            IF busy IS NOT NULL THEN
                IF op = 'a' THEN
                    RETURN busy;
                END IF;
                -- In the line: where it stood, or at its end if there is room.
                placed := false;
                FOR i IN 1 .. cardinality(w_owners) LOOP
                    IF w_owners[i] = who THEN
                        -- A place with more than half its time left stays.
                        IF w_until[i] - now_us > line_us / 2 THEN
                            RETURN busy;
                        END IF;
                        w_until[i] := now_us + line_us; placed := true;
                    END IF;
                END LOOP;
                IF NOT placed THEN
                    IF cardinality(w_owners) >= max_line THEN
                        RETURN busy;
                    END IF;
                    w_owners := w_owners || who;
                    w_until := w_until || (now_us + line_us);
                END IF;
                answer := busy;
            END IF;
        ELSIF op = 'l' AND st_owner IS NOT NULL AND st_owner = who THEN
            -- Its own holding (an ask granted unanswered) given back, as a
            -- release of its token.
            tok := st_token;
        ELSIF op = 'l' THEN
            IF NOT who = ANY (w_owners) THEN
                RETURN 'L';
            END IF;
            answer := 'L';
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

        IF answer IS NOT NULL THEN
            -- The line changed, the holder (or the free lock) kept.
            IF op = 'l' THEN
                i := array_position(w_owners, who);
                w_owners := w_owners[:i - 1] || w_owners[i + 1:];
                w_until := w_until[:i - 1] || w_until[i + 1:];
                IF cardinality(w_owners) > 0 AND NOT held THEN
                    answer := 'L ' || w_owners[1];
                END IF;
            END IF;
            new_owner := st_owner;
            new_token := coalesce(st_token, 0);
            new_until := st_expires;
            ttl := retain;
            IF held THEN
                ttl := st_expires - now_us + retain;
            END IF;
        ELSIF new_owner IS NOT NULL THEN
            i := array_position(w_owners, who);
            IF i IS NOT NULL THEN
                w_owners := w_owners[:i - 1] || w_owners[i + 1:];
                w_until := w_until[:i - 1] || w_until[i + 1:];
            END IF;
            new_until := now_us + ls;
            ttl := ls + retain;
            answer := 'H ' || new_token || ' ' || ls;
        ELSE
            IF op = 'l' THEN
                i := array_position(w_owners, who);
                IF i IS NOT NULL THEN
                    w_owners := w_owners[:i - 1] || w_owners[i + 1:];
                    w_until := w_until[:i - 1] || w_until[i + 1:];
                END IF;
            END IF;
            new_token := tok;
            new_until := NULL;
            ttl := retain;
            answer := 'R ' || tok;
            IF cardinality(w_owners) > 0 THEN
                answer := answer || ' ' || w_owners[1];
            END IF;
        END IF;
        ttl := greatest((ttl + 999) / 1000, 1);
        IF have_row THEN
            UPDATE @locks@ SET owner = new_owner, token = new_token,
                held_until = CASE WHEN new_owner IS NULL THEN NULL
                    ELSE timestamptz 'epoch' + new_until * interval '1 microsecond' END,
                waiters = w_owners,
                waiting_until = ARRAY(SELECT timestamptz 'epoch' + u * interval '1 microsecond'
                    FROM unnest(w_until) WITH ORDINALITY AS t(u, n) ORDER BY n),
                updated_at = clock_timestamp(),
                expires_at = clock_timestamp() + ttl * interval '1 millisecond'
                WHERE key = p_key;
        ELSE
            INSERT INTO @locks@ (key, owner, token, held_until, waiters, waiting_until,
                    updated_at, expires_at)
                VALUES (p_key, new_owner, new_token,
                    CASE WHEN new_owner IS NULL THEN NULL
                        ELSE timestamptz 'epoch' + new_until * interval '1 microsecond' END,
                    w_owners,
                    ARRAY(SELECT timestamptz 'epoch' + u * interval '1 microsecond'
                        FROM unnest(w_until) WITH ORDINALITY AS t(u, n) ORDER BY n),
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
