-- statecraft: the limiter's step, a copy of limiter::algorithm::decide in
-- PL/pgSQL (input, state and output as limiter::shared writes them),
-- checked against the Rust function by tests/limiter_native.rs. `@name@`
-- is the identifier "<table>_name" of the backend's table, `@name#@` that
-- name with this file's version. Every figure stays below 2^53, so int8
-- never overflows; the time is clock_timestamp() in microseconds.

-- One row per limit in use, readable: its key, algorithm and state, when
-- it was last written and when an unused one is forgotten.
CREATE TABLE IF NOT EXISTS @limits@ (
    key bytea PRIMARY KEY,
    algorithm text NOT NULL,
    state text NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS @limits_expiry@ ON @limits@ (expires_at);
COMMENT ON TABLE @limits@ IS
    'statecraft rate limits: one row per limit in use, written only by the limit step function';
COMMENT ON COLUMN @limits@.state IS 'the state, as the limit step reads it (limiter::shared)';
COMMENT ON COLUMN @limits@.expires_at IS 'past it the limit is whole again and the row is purged';

-- A token bucket's level at `now_us` (limiter::algorithm's `refilled`):
-- the stored level refilled by `cnt` a µs since `at`, up to `capacity`.
CREATE OR REPLACE FUNCTION @limit_level#@(
    stored int8, at int8, now_us int8, capacity int8, cnt int8)
RETURNS int8 LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    level int8 := least(stored, capacity);
    elapsed int8 := greatest(now_us - at, 0);
BEGIN
    IF elapsed >= (capacity - level + cnt - 1) / cnt THEN
        RETURN capacity;
    END IF;
    RETURN level + elapsed * cnt;
END
$$;

CREATE OR REPLACE FUNCTION @limit_step#@(p_key bytea, p_input text, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    exact constant int8 := 9007199254740992;
    horizon_max constant int8 := 2251799813685248;
    year constant int8 := 31622400000000;
    u32 constant int8 := 4294967295;
    m text[];
    a text;
    cnt int8;
    period int8;
    burst int8;
    cost int8;
    ask int8;
    giving boolean;
    given text;
    now_us int8;
    server_clock boolean;
    raw text;
    have_row boolean;
    st text[];
    sn int8[];
    written int8;
    algorithm_name text;
    -- The decision.
    verdict text;
    lim int8;
    remaining int8 := 0;
    retry int8 := 0;
    reset int8 := 0;
    new_state text;
    ttl int8;
    -- Working figures.
    interval_us int8;
    horizon int8;
    tat int8;
    free int8;
    new_tat int8;
    capacity int8;
    level int8;
    elapsed int8;
    need int8;
    win_start int8;
    prev int8;
    cur int8;
    weight int8;
    budget int8;
    used int8;
    ends int8;
BEGIN
    -- A limit's state is soft: this transaction's commit does not wait
    -- for its WAL to reach the disk (a server crash forgets at most the
    -- last moments of decisions, as Redis without fsync does), so that
    -- one hot limit is not held to one decision per disk flush.
    PERFORM set_config('synchronous_commit', 'off', true);
    m := regexp_match(p_input,
        '^([gtsf]) ([0-9]{1,16}) ([0-9]{1,16}) ([0-9]{1,16}) (-?[0-9]{1,16}) ([0-9]{1,16})$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'limiter step: malformed input' USING ERRCODE = '22023';
    END IF;
    a := m[1];
    cnt := m[2]::int8;
    period := m[3]::int8;
    burst := m[4]::int8;
    -- A cost of -n gives n permits back (limiter::algorithm::refund).
    giving := left(m[5], 1) = '-';
    cost := ltrim(m[5], '-')::int8;
    ask := CASE WHEN giving THEN 0 ELSE cost END;
    now_us := m[6]::int8;
    IF cnt < 1 OR burst < 1 OR period < 1 OR period > year THEN
        RAISE EXCEPTION 'limiter step: a figure out of range' USING ERRCODE = '22023';
    END IF;
    IF a = 'g' THEN
        IF cnt > period OR burst::numeric * ((period + cnt - 1) / cnt) > horizon_max THEN
            RAISE EXCEPTION 'limiter step: a GCRA quota out of range' USING ERRCODE = '22023';
        END IF;
    ELSIF a = 't' THEN
        IF burst::numeric * period + cnt >= exact THEN
            RAISE EXCEPTION 'limiter step: a token bucket out of range' USING ERRCODE = '22023';
        END IF;
    ELSIF burst <> cnt OR cnt > u32 OR cnt::numeric * period * 2 >= exact THEN
        RAISE EXCEPTION 'limiter step: a window out of range' USING ERRCODE = '22023';
    END IF;
    server_clock := now_us = 0;

    LOOP
        SELECT CASE WHEN expires_at > clock_timestamp() THEN state END INTO raw
            FROM @limits@ WHERE key = p_key FOR UPDATE;
        have_row := FOUND;
        -- The time once the row is ours: a call that waited for it decides
        -- at the time it decides (taken before the wait, it would turn
        -- away what its turn's time allows).
        IF server_clock THEN
            now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8;
        END IF;

        -- The stored state: its letter, then only numbers (else none).
        st := NULL;
        sn := NULL;
        IF raw IS NOT NULL AND raw ~ '^[a-z]( [0-9]{1,16})+$' THEN
            st := string_to_array(raw, ' ');
            sn := st[2:]::int8[];
        END IF;

        given := NULL;
        IF giving THEN
            IF a = 'g' AND st[1] = 'g' AND cardinality(sn) = 1 THEN
                interval_us := (period + cnt - 1) / cnt;
                tat := least(greatest(sn[1], now_us), now_us + burst * interval_us);
                given := 'g ' || greatest(tat - least(cost, burst) * interval_us, now_us);
            ELSIF a = 't' AND st[1] = 't' AND cardinality(sn) = 3 AND sn[1] = period THEN
                capacity := burst * period;
                level := @limit_level#@(sn[2], sn[3], now_us, capacity, cnt);
                level := least(level + least(cost, burst) * period, capacity);
                given := 't ' || period || ' ' || level || ' ' || now_us;
            ELSIF a = 's' AND st[1] = 's' AND cardinality(sn) = 3
                    AND (sn[1] = now_us - now_us % period OR sn[1] + period = now_us - now_us % period) THEN
                win_start := now_us - now_us % period;
                prev := 0;
                cur := 0;
                IF sn[1] = win_start THEN
                    prev := least(sn[2], cnt); cur := least(sn[3], cnt);
                ELSE
                    prev := least(sn[3], cnt);
                END IF;
                -- The previous window's first (under-credited, never over).
                used := least(cost, prev);
                given := 's ' || win_start || ' ' || (prev - used) || ' ' || (cur - least(cost - used, cur));
            ELSIF a = 'f' AND st[1] = 'f' AND cardinality(sn) = 2
                    AND sn[1] = now_us - now_us % period THEN
                used := least(sn[2], cnt);
                given := 'f ' || sn[1] || ' ' || (used - least(cost, used));
            END IF;
            IF given IS NOT NULL THEN
                st := string_to_array(given, ' ');
                sn := st[2:]::int8[];
            END IF;
        END IF;

        IF a = 'g' THEN
            interval_us := (period + cnt - 1) / cnt;
            horizon := burst * interval_us;
            lim := burst;
            tat := now_us;
            IF st[1] = 'g' AND cardinality(sn) = 1 THEN
                tat := least(greatest(sn[1], now_us), now_us + horizon);
            END IF;
            free := now_us + horizon - tat;
            IF ask > burst THEN
                verdict := 'L'; remaining := free / interval_us; reset := tat - now_us;
            ELSE
                new_tat := tat + ask * interval_us;
                IF new_tat > now_us + horizon THEN
                    verdict := 'D'; remaining := free / interval_us;
                    retry := new_tat - now_us - horizon; reset := tat - now_us;
                ELSE
                    verdict := 'A'; remaining := (now_us + horizon - new_tat) / interval_us;
                    reset := new_tat - now_us;
                    new_state := 'g ' || new_tat; ttl := new_tat - now_us;
                END IF;
            END IF;
        ELSIF a = 't' THEN
            capacity := burst * period;
            lim := burst;
            level := capacity;
            IF st[1] = 't' AND cardinality(sn) = 3 AND sn[1] = period THEN
                level := @limit_level#@(sn[2], sn[3], now_us, capacity, cnt);
            END IF;
            IF ask > burst THEN
                verdict := 'L'; remaining := level / period;
                reset := (capacity - level + cnt - 1) / cnt;
            ELSE
                need := ask * period;
                IF need > level THEN
                    verdict := 'D'; remaining := level / period;
                    retry := (need - level + cnt - 1) / cnt;
                    reset := (capacity - level + cnt - 1) / cnt;
                ELSE
                    level := level - need;
                    verdict := 'A'; remaining := level / period;
                    reset := (capacity - level + cnt - 1) / cnt;
                    new_state := 't ' || period || ' ' || level || ' ' || now_us; ttl := reset;
                END IF;
            END IF;
        ELSIF a = 's' THEN
            lim := cnt;
            win_start := now_us - now_us % period;
            prev := 0;
            cur := 0;
            IF st[1] = 's' AND cardinality(sn) = 3 THEN
                -- A window ahead (the clock stepped back) counts as this one.
                IF sn[1] >= win_start THEN
                    prev := least(sn[2], cnt); cur := least(sn[3], cnt);
                ELSIF sn[1] + period = win_start THEN
                    prev := least(sn[3], cnt);
                END IF;
            END IF;
            elapsed := now_us - win_start;
            weight := period - elapsed;
            budget := cnt * period;
            used := prev * weight + cur * period;
            remaining := greatest(budget - used, 0) / period;
            reset := CASE WHEN cur > 0 THEN weight + period WHEN prev > 0 THEN weight ELSE 0 END;
            IF ask > cnt THEN
                verdict := 'L';
            ELSIF ask > 0 AND used + ask * period > budget THEN
                verdict := 'D';
                IF cur + ask <= cnt THEN
                    retry := period - (cnt - cur - ask) * period / prev - elapsed;
                ELSE
                    retry := weight + period - (cnt - ask) * period / cur;
                END IF;
            ELSE
                verdict := 'A';
                remaining := greatest(budget - used - ask * period, 0) / period;
                IF cur + ask > 0 THEN reset := weight + period; END IF;
                new_state := 's ' || win_start || ' ' || prev || ' ' || (cur + ask);
                ttl := weight + period;
            END IF;
        ELSE
            lim := cnt;
            win_start := now_us - now_us % period;
            used := 0;
            IF st[1] = 'f' AND cardinality(sn) = 2 AND sn[1] >= win_start THEN
                used := least(sn[2], cnt);
            END IF;
            ends := win_start + period - now_us;
            reset := CASE WHEN used > 0 THEN ends ELSE 0 END;
            remaining := cnt - used;
            IF ask > cnt THEN
                verdict := 'L';
            ELSIF used + ask > cnt THEN
                verdict := 'D'; retry := ends;
            ELSE
                verdict := 'A'; remaining := cnt - used - ask;
                reset := CASE WHEN used + ask > 0 THEN ends ELSE 0 END;
                new_state := 'f ' || win_start || ' ' || (used + ask); ttl := ends;
            END IF;
        END IF;

        IF giving THEN
            -- The state given back lives as long as it matters.
            new_state := given;
            ttl := reset;
        END IF;
        IF (giving AND given IS NOT NULL AND cost > 0) OR (NOT giving AND verdict = 'A' AND ask > 0) THEN
            ttl := greatest((greatest(ttl, 1) + 999) / 1000, 1);
            algorithm_name := CASE a WHEN 'g' THEN 'gcra' WHEN 't' THEN 'token_bucket'
                WHEN 's' THEN 'sliding_window' ELSE 'fixed_window' END;
            IF have_row THEN
                UPDATE @limits@ SET algorithm = algorithm_name, state = new_state,
                    updated_at = clock_timestamp(),
                    expires_at = clock_timestamp() + ttl * interval '1 millisecond'
                    WHERE key = p_key;
            ELSE
                INSERT INTO @limits@ (key, algorithm, state, updated_at, expires_at)
                    VALUES (p_key, algorithm_name, new_state, clock_timestamp(),
                        clock_timestamp() + ttl * interval '1 millisecond')
                    ON CONFLICT (key) DO NOTHING;
                GET DIAGNOSTICS written = ROW_COUNT;
                -- Another call created the row first: decide again on it.
                CONTINUE WHEN written = 0;
            END IF;
        END IF;
        RETURN verdict || ' ' || lim || ' ' || remaining || ' ' || retry || ' ' || reset;
    END LOOP;
END
$$;
