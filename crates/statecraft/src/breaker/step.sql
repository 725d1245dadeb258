-- statecraft: the breaker's step, a copy of breaker::machine::step in
-- PL/pgSQL (state, input and output as breaker::wire writes them), checked
-- against the Rust function by tests/breaker_postgres.rs. `@name@` is the
-- identifier "<table>_name" of the backend's table, `@name#@` that name
-- with this file's version (so that versions side by side each call their
-- own functions, and a set-up is skipped where it is done). The statement that
-- calls it (breaker::shared::POSTGRES) reads the state itself for a peek and
-- for a plain success the row's `steady` says changes nothing.

-- One row per breaker, in columns a person can read (resilient-circuit's
-- rc_circuit_breakers queries work with only the table name changed).
CREATE TABLE IF NOT EXISTS @breakers@ (
    key bytea PRIMARY KEY,
    resource_key text NOT NULL,
    state text NOT NULL,
    failure_count int8 NOT NULL,
    open_until timestamptz,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz,
    detail text NOT NULL
);
-- Added to tables of older versions; checked first, as an ALTER TABLE
-- locks the table (and asks to own it) even when the column is there.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('@breakers@')
        AND attname = 'steady' AND NOT attisdropped)
    THEN
        ALTER TABLE @breakers@ ADD COLUMN steady text;
    END IF;
END
$$;
COMMENT ON TABLE @breakers@ IS
    'statecraft circuit breakers: one row per breaker, written only by the breaker step function';
COMMENT ON COLUMN @breakers@.key IS 'the store key (with any namespace)';
COMMENT ON COLUMN @breakers@.resource_key IS 'the breaker''s name';
COMMENT ON COLUMN @breakers@.state IS
    'CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED or METRICS_ONLY';
COMMENT ON COLUMN @breakers@.failure_count IS
    'failures counted: in the window while closed, of the probes while half-open, that opened it while open, else 0';
COMMENT ON COLUMN @breakers@.open_until IS 'when an opening ends (OPEN only)';
COMMENT ON COLUMN @breakers@.expires_at IS
    'when an unused breaker is forgotten (NULL: an operator''s setting, kept)';
COMMENT ON COLUMN @breakers@.detail IS 'the whole state, as the breaker step reads it';
COMMENT ON COLUMN @breakers@.steady IS
    'configuration|detail under which a plain success changes nothing (a closed count window full of successes); it holds only while detail is that detail';

-- Whether part / whole reaches a / b (exactly; whole 0 never does).
CREATE OR REPLACE FUNCTION @breaker_reached#@(a int8, b int8, part int8, whole int8)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT whole > 0 AND part::numeric * b >= a::numeric * whole
$$;

-- Whether a closed breaker with these figures trips (breaker::machine's
-- rules, after a record).
CREATE OR REPLACE FUNCTION @breaker_trips#@(
    consecutive int8, calls int8, failures int8, slow int8, consecutive_cfg int8,
    in_window int8, min_calls int8, fr_num int8, fr_den int8, sr_num int8, sr_den int8)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT consecutive_cfg > 0 AND consecutive >= consecutive_cfg
        OR in_window > 0 AND failures >= in_window
        OR calls >= min_calls AND fr_num > 0 AND @breaker_reached#@(fr_num, fr_den, failures, calls)
        OR calls >= min_calls AND sr_num > 0 AND @breaker_reached#@(sr_num, sr_den, slow, calls)
$$;

-- How long opening number `openings` lasts (breaker::machine::open_duration).
CREATE OR REPLACE FUNCTION @breaker_open_ms#@(
    open_ms int8, mult int8, max_ms int8, jitter int8, openings int8, entropy int8)
RETURNS int8 LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    length numeric := open_ms;
    spread int8;
BEGIN
    FOR i IN 2..least(openings, 64) LOOP
        length := length * mult;
        EXIT WHEN length >= max_ms;
    END LOOP;
    length := least(length, max_ms);
    IF jitter = 0 THEN
        RETURN length::int8;
    END IF;
    spread := floor(length * jitter / 1000)::int8;
    RETURN greatest(length::int8 + entropy % (spread * 2 + 1) - spread, 1);
END
$$;

CREATE OR REPLACE FUNCTION @breaker_step#@(p_key bytea, p_input text, p_default_ttl int8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    u32 constant int8 := 4294967295;
    parts text[];
    m text[];
    e text[];
    cn int8[];
    w text[];
    sn int8[];
    big numeric[];
    numbers text;
    -- The configuration.
    kind text;
    size int8;
    nbuckets int8;
    min_calls int8;
    consecutive_cfg int8;
    in_window int8;
    fr_num int8;
    fr_den int8;
    sr_num int8;
    sr_den int8;
    open_ms int8;
    mult int8;
    max_ms int8;
    jitter int8;
    probes int8;
    close_kind text;
    close_a int8;
    close_b int8;
    max_wait int8;
    bucket_ms int8 := 0;
    -- The event.
    ev text;
    outcome text;
    slow boolean;
    spell int8;
    entropy int8;
    now_ms int8;
    ttl int8;
    name text;
    -- The state.
    raw text;
    raw_steady text;
    steady_text text;
    baseline text;
    decoded boolean;
    phase text;
    since int8;
    open_until int8;
    openings int8;
    consecutive int8;
    admitted int8;
    ok int8;
    fail int8;
    wkind text;
    codes text;
    b_start int8[];
    b_calls int8[];
    b_fail int8[];
    b_slow int8[];
    -- The step.
    target text;
    next_phase text;
    t_from text;
    t_to text;
    decision text := 'D';
    encoded text;
    window_text text;
    horizon int8;
    bstart int8;
    n int;
    t_calls int8;
    t_failures int8;
    t_slow int8;
    f int8;
    s int8;
    -- A batch's pass while closed.
    all_codes text;
    nums int[];
    n0 int8;
    at int8;
    next_consecutive int8;
    calls_next int8;
    f0 int8;
    s0 int8;
    taken int := 0;
    failure_count int8;
    opened_with int8 := 0;
    batch text;
    code int;
BEGIN
    -- The configuration, the event, entropy, time, TTL and the name, which
    -- is last and may hold any character. The fields are split, not matched: each expression PL/pgSQL
    -- evaluates costs its set-up once per transaction, and a pattern with
    -- bounded repeats costs more than the whole step.
    parts := string_to_array(p_input, '|');
    m := string_to_array(parts[1], ' ');
    e := string_to_array(parts[2], ' ');
    numbers := array_to_string(m[2:15] || m[17:19] || parts[3:5], ' ');
    IF NOT coalesce(cardinality(parts) >= 6 AND cardinality(m) = 19
        AND translate(numbers, '0123456789 ', '') = '' AND strpos(numbers, '  ') = 0
        AND left(numbers, 1) <> ' ' AND right(numbers, 1) <> ' '
        AND (e[1] IN ('A', 'FO', 'FC', 'RS', 'DI', 'MO') AND cardinality(e) = 1
            OR e[1] = 'B' AND cardinality(e) = 2 AND length(e[2]) BETWEEN 1 AND 4096
                AND translate(e[2], '0123', '') = ''
            OR e[1] = 'R' AND cardinality(e) = 4 AND e[2] IN ('s', 'f', 'i')
                AND e[3] IN ('0', '1')
                AND (e[4] = '-' OR e[4] <> '' AND translate(e[4], '0123456789', '') = '')),
        false)
    THEN
        RAISE EXCEPTION 'statecraft:invalid_argument breaker step: malformed input'
            USING ERRCODE = '22023';
    END IF;
    big := string_to_array(numbers, ' ')::numeric[];
    IF 1e18 <= ANY(big) OR length(e[4]) > 18 THEN
        RAISE EXCEPTION 'statecraft:invalid_argument breaker step: malformed input'
            USING ERRCODE = '22023';
    END IF;
    cn := big::int8[];
    kind := m[1];
    size := cn[1];
    nbuckets := cn[2];
    min_calls := cn[3];
    consecutive_cfg := cn[4];
    in_window := cn[5];
    fr_num := cn[6];
    fr_den := cn[7];
    sr_num := cn[8];
    sr_den := cn[9];
    open_ms := cn[10];
    mult := cn[11];
    max_ms := cn[12];
    jitter := cn[13];
    probes := cn[14];
    close_kind := m[16];
    close_a := cn[15];
    close_b := cn[16];
    max_wait := cn[17];
    entropy := cn[18];
    now_ms := cn[19];
    ttl := cn[20];
    name := array_to_string(parts[6:], '|');
    ev := e[1];
    IF ev = 'B' THEN
        -- A batch of records, each a step of its own (1 failed + 2 slow).
        batch := e[2];
    ELSE
        outcome := CASE e[2] WHEN 's' THEN 'success' WHEN 'f' THEN 'failure'
            WHEN 'i' THEN 'ignored' END;
        slow := e[3] = '1';
        -- A probe names its half-open spell; '-' is an ordinary call.
        spell := CASE WHEN e[4] <> '-' THEN e[4]::int8 END;
    END IF;
    IF NOT (kind = 'c' AND size >= 1
            OR kind = 't' AND nbuckets >= 1 AND size >= nbuckets AND size % nbuckets = 0)
        OR NOT (close_kind = 's' AND close_a >= 1
            OR close_kind = 'f' AND close_a >= 1 AND close_a <= close_b)
        OR NOT (fr_num = 0 OR fr_num <= fr_den)
        OR NOT (sr_num = 0 OR sr_num <= sr_den)
        OR open_ms < 1 OR mult < 1 OR jitter > 1000 OR probes < 1 OR max_wait < 1
        OR entropy > u32
    THEN
        RAISE EXCEPTION 'statecraft:invalid_argument breaker step: malformed input'
            USING ERRCODE = '22023';
    END IF;
    IF kind = 't' THEN
        bucket_ms := size / nbuckets;
    END IF;
    -- One step at a time per breaker, row or no row yet; the time once it
    -- is this call's turn (a wait for it is not in the step's time).
    PERFORM pg_advisory_xact_lock(1651664235, hashtext(encode(p_key, 'hex')));
    IF now_ms = 0 THEN
        now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::int8;
    END IF;
    SELECT detail, steady INTO raw, raw_steady FROM @breakers@
    WHERE key = p_key AND (expires_at IS NULL OR expires_at > clock_timestamp());

    -- Decode it (a damaged state is a fresh one; words after the window
    -- are ignored, as breaker::wire reads them).
    decoded := false;
    IF raw IS NOT NULL THEN
        w := string_to_array(raw, ' ');
        numbers := array_to_string(w[3:9], ' ');
        IF cardinality(w) >= 10 AND w[1] = 'b1'
            AND w[2] IN ('CLOSED', 'OPEN', 'HALF_OPEN', 'FORCED_OPEN', 'DISABLED', 'METRICS_ONLY')
            AND translate(numbers, '0123456789 ', '') = '' AND NOT ('' = ANY(w[3:9]))
        THEN
            big := w[3:9]::numeric[];
            IF big[1] < 1e18 AND big[2] < 1e18
                AND greatest(big[3], big[4], big[5], big[6], big[7]) <= u32
            THEN
                sn := big::int8[];
            END IF;
        END IF;
        decoded := sn IS NOT NULL;
        IF decoded THEN
            phase := w[2];
            since := sn[1];
            open_until := sn[2];
            openings := sn[3];
            consecutive := sn[4];
            admitted := sn[5];
            ok := sn[6];
            fail := sn[7];
            IF left(w[10], 2) = 'c:' AND translate(w[10], '0123', '') = 'c:' THEN
                wkind := 'c';
                codes := substr(w[10], 3);
                b_start := '{}';
                b_calls := '{}';
                b_fail := '{}';
                b_slow := '{}';
            ELSIF w[10] ~ '^t:(?:;|[0-9]{1,18},[0-9]{1,18},[0-9]{1,18},[0-9]{1,18}(?:,[^;]*)?)*$' THEN
                -- Buckets `start,calls,failures,slow`, split by ';' (empty
                -- items skipped, parts after the fourth ignored).
                wkind := 't';
                codes := NULL;
                SELECT coalesce(array_agg(split_part(i, ',', 1)::int8 ORDER BY o), '{}'),
                    coalesce(array_agg(split_part(i, ',', 2)::int8 ORDER BY o), '{}'),
                    coalesce(array_agg(split_part(i, ',', 3)::int8 ORDER BY o), '{}'),
                    coalesce(array_agg(split_part(i, ',', 4)::int8 ORDER BY o), '{}')
                INTO b_start, b_calls, b_fail, b_slow
                FROM unnest(string_to_array(substr(w[10], 3), ';')) WITH ORDINALITY AS u(i, o)
                WHERE i <> '';
            ELSE
                decoded := false;
            END IF;
        END IF;
    END IF;
    IF NOT decoded THEN
        phase := 'CLOSED';
        since := now_ms;
        open_until := 0;
        openings := 0;
        consecutive := 0;
        admitted := 0;
        ok := 0;
        fail := 0;
        wkind := kind;
        codes := '';
        b_start := '{}';
        b_calls := '{}';
        b_fail := '{}';
        b_slow := '{}';
    END IF;
    IF raw IS NOT NULL THEN
        baseline := raw;
    ELSIF kind = 'c' THEN
        baseline := format('b1 CLOSED %s 0 0 0 0 0 0 c:', now_ms);
    ELSE
        baseline := format('b1 CLOSED %s 0 0 0 0 0 0 t:', now_ms);
    END IF;

    -- A window that does not fit the configuration starts empty.
    IF NOT (wkind = kind AND (
        kind = 'c' AND length(codes) <= size
        OR kind = 't' AND coalesce(cardinality(b_start), 0) <= nbuckets + 1
            AND bucket_ms > 0
            AND NOT EXISTS (SELECT 1 FROM unnest(b_start) AS b(st) WHERE b.st % bucket_ms <> 0)))
    THEN
        wkind := kind;
        codes := '';
        b_start := '{}';
        b_calls := '{}';
        b_fail := '{}';
        b_slow := '{}';
    END IF;

    -- A batch's records while closed (or only counting), in one pass: the
    -- window's counts move as each record would move them (a count window
    -- slides; a time window's records all fall in one bucket, now's or
    -- the newest if the clock went back), so
    -- that a batch costs its length plus the window's, not their product
    -- (4096 records on a count window of 10,000 took 2.5 s one at a time).
    -- It stops before a record that trips the breaker, which the loop below
    -- takes, with the records after it. As the Lua copy's closed_batch.
    IF batch IS NOT NULL AND phase IN ('CLOSED', 'METRICS_ONLY') THEN
        IF kind = 'c' THEN
            all_codes := codes || batch;
            n0 := length(codes);
            t_calls := n0;
            t_failures := n0 - length(translate(codes, '13', ''));
            t_slow := n0 - length(translate(codes, '23', ''));
        ELSE
            all_codes := batch;
            n0 := 0;
            horizon := greatest(now_ms - size, 0);
            WHILE cardinality(b_start) > 0 AND b_start[1] + bucket_ms <= horizon LOOP
                b_start := b_start[2:];
                b_calls := b_calls[2:];
                b_fail := b_fail[2:];
                b_slow := b_slow[2:];
            END LOOP;
            t_calls := (SELECT coalesce(sum(x), 0) FROM unnest(b_calls) AS x);
            t_failures := (SELECT coalesce(sum(x), 0) FROM unnest(b_fail) AS x);
            t_slow := (SELECT coalesce(sum(x), 0) FROM unnest(b_slow) AS x);
        END IF;
        f0 := t_failures;
        s0 := t_slow;
        -- Integers: an element of an int[] is found at once, a text[]'s
        -- by walking the array.
        SELECT array_agg(ascii(c) - 48 ORDER BY o) INTO nums
        FROM unnest(string_to_array(all_codes, NULL)) WITH ORDINALITY AS u(c, o);
        FOR k IN 1..length(batch) LOOP
            at := n0 + k;
            code := nums[at];
            calls_next := t_calls + 1;
            f := t_failures + code % 2;
            s := t_slow + CASE WHEN code >= 2 THEN 1 ELSE 0 END;
            IF kind = 'c' AND at > size THEN
                calls_next := size;
                f := f - nums[at - size] % 2;
                s := s - CASE WHEN nums[at - size] >= 2 THEN 1 ELSE 0 END;
            END IF;
            next_consecutive := CASE WHEN code % 2 = 1 THEN least(consecutive + 1, u32) ELSE 0 END;
            -- After a record that did not trip, a plain success once the
            -- window holds enough calls cannot: it lowers or keeps every
            -- figure but the calls.
            EXIT WHEN phase = 'CLOSED' AND (code <> 0 OR k = 1 OR t_calls < min_calls)
                AND @breaker_trips#@(next_consecutive, calls_next, f, s, consecutive_cfg,
                    in_window, min_calls, fr_num, fr_den, sr_num, sr_den);
            t_calls := calls_next;
            t_failures := f;
            t_slow := s;
            consecutive := next_consecutive;
            taken := k;
        END LOOP;
        IF kind = 'c' THEN
            codes := substr(all_codes, greatest(n0 + taken - size + 1, 1)::int,
                least(n0 + taken, size)::int);
        ELSIF taken > 0 THEN
            -- Each of them as a record adds it, at one time: in one bucket.
            bstart := now_ms - now_ms % greatest(bucket_ms, 1);
            n := coalesce(cardinality(b_start), 0);
            IF n > 0 AND b_start[n] >= bstart THEN
                b_calls[n] := b_calls[n] + taken;
                b_fail[n] := b_fail[n] + t_failures - f0;
                b_slow[n] := b_slow[n] + t_slow - s0;
            ELSE
                b_start := b_start || bstart;
                b_calls := b_calls || taken::int8;
                b_fail := b_fail || (t_failures - f0);
                b_slow := b_slow || (t_slow - s0);
            END IF;
        END IF;
    END IF;

    -- Each event (one, or each of a batch's records): up to three phase
    -- changes, each as breaker::machine::enter.
    FOR k IN taken + 1..coalesce(length(batch), 1) LOOP
        IF batch IS NOT NULL THEN
            ev := 'R';
            code := ascii(substr(batch, k, 1)) - 48;
            outcome := CASE WHEN code % 2 = 1 THEN 'failure' ELSE 'success' END;
            slow := code >= 2;
        END IF;
        FOR round IN 1..4 LOOP
            target := NULL;
            IF round = 1 THEN
                target := CASE ev WHEN 'FO' THEN 'FORCED_OPEN' WHEN 'FC' THEN 'CLOSED'
                    WHEN 'RS' THEN 'CLOSED' WHEN 'DI' THEN 'DISABLED' WHEN 'MO' THEN 'METRICS_ONLY' END;
                IF target IS NULL AND phase = 'OPEN' AND ev = 'A' AND now_ms >= open_until THEN
                    target := 'HALF_OPEN';
                END IF;
            ELSIF round = 2 THEN
                IF ev IN ('A', 'R') AND phase = 'HALF_OPEN' AND now_ms >= since + max_wait THEN
                    target := 'OPEN';
                END IF;
            ELSIF round = 3 THEN
                -- The event itself.
                IF ev = 'A' THEN
                    IF phase IN ('CLOSED', 'DISABLED', 'METRICS_ONLY') THEN
                        decision := 'P0';
                    ELSIF phase = 'OPEN' THEN
                        decision := 'J' || greatest(open_until - now_ms, 1);
                    ELSIF phase = 'FORCED_OPEN' THEN
                        decision := 'J-';
                    ELSIF admitted < probes THEN
                        admitted := admitted + 1;
                        decision := 'P1@' || since;
                    ELSE
                        decision := 'J' || greatest(since + max_wait - now_ms, 1);
                    END IF;
                ELSIF ev = 'R' AND phase IN ('CLOSED', 'METRICS_ONLY') THEN
                    IF outcome <> 'ignored' THEN
                        f := CASE WHEN outcome = 'failure' THEN 1 ELSE 0 END;
                        s := CASE WHEN slow THEN 1 ELSE 0 END;
                        consecutive := CASE WHEN f = 1 THEN least(consecutive + 1, u32) ELSE 0 END;
                        -- Expire, then record.
                        IF kind = 't' THEN
                            horizon := greatest(now_ms - size, 0);
                            WHILE cardinality(b_start) > 0 AND b_start[1] + bucket_ms <= horizon LOOP
                                b_start := b_start[2:];
                                b_calls := b_calls[2:];
                                b_fail := b_fail[2:];
                                b_slow := b_slow[2:];
                            END LOOP;
                            bstart := now_ms - now_ms % greatest(bucket_ms, 1);
                            n := coalesce(cardinality(b_start), 0);
                            IF n > 0 AND b_start[n] >= bstart THEN
                                b_calls[n] := b_calls[n] + 1;
                                b_fail[n] := b_fail[n] + f;
                                b_slow[n] := b_slow[n] + s;
                            ELSE
                                b_start := b_start || bstart;
                                b_calls := b_calls || 1::int8;
                                b_fail := b_fail || f;
                                b_slow := b_slow || s;
                            END IF;
                            t_calls := (SELECT coalesce(sum(x), 0) FROM unnest(b_calls) AS x);
                            t_failures := (SELECT coalesce(sum(x), 0) FROM unnest(b_fail) AS x);
                            t_slow := (SELECT coalesce(sum(x), 0) FROM unnest(b_slow) AS x);
                        ELSE
                            codes := codes || chr(48 + (f + 2 * s)::int);
                            IF length(codes) > size THEN
                                codes := right(codes, size::int);
                            END IF;
                            t_calls := length(codes);
                            t_failures := length(codes) - length(translate(codes, '13', ''));
                            t_slow := length(codes) - length(translate(codes, '23', ''));
                        END IF;
                        IF phase = 'CLOSED' AND @breaker_trips#@(consecutive, t_calls, t_failures,
                            t_slow, consecutive_cfg, in_window, min_calls, fr_num, fr_den, sr_num, sr_den)
                        THEN
                            target := 'OPEN';
                        END IF;
                    END IF;
                ELSIF ev = 'R' AND phase = 'HALF_OPEN' AND spell = since THEN
                    next_phase := NULL;
                    IF outcome = 'ignored' THEN
                        admitted := greatest(admitted - 1, 0);
                    ELSIF outcome = 'success' THEN
                        ok := least(ok + 1, u32);
                        IF close_kind = 's' AND ok >= close_a
                            OR close_kind = 'f' AND @breaker_reached#@(close_a, close_b, ok, probes)
                        THEN
                            next_phase := 'CLOSED';
                        END IF;
                    ELSE
                        fail := least(fail + 1, u32);
                        IF close_kind = 's' OR NOT @breaker_reached#@(
                            close_a, close_b, greatest(probes - fail, 0), probes)
                        THEN
                            next_phase := 'OPEN';
                        END IF;
                    END IF;
                    target := next_phase;
                END IF;
            END IF;
            IF target IS NOT NULL THEN
                -- enter(target), merging its transition into the step's.
                IF phase <> target THEN
                    IF t_from IS NULL THEN
                        t_from := phase;
                        t_to := target;
                    ELSIF t_from <> target THEN
                        t_to := target;
                    ELSE
                        t_from := NULL;
                        t_to := NULL;
                    END IF;
                END IF;
                IF target = 'OPEN' THEN
                    -- What opened it, for the readable column.
                    opened_with := CASE WHEN phase = 'HALF_OPEN' THEN fail
                        ELSE greatest(consecutive, coalesce(t_failures, 0)) END;
                    openings := least(openings + 1, u32);
                    open_until := now_ms + @breaker_open_ms#@(open_ms, mult, max_ms, jitter, openings, entropy);
                ELSIF target IN ('CLOSED', 'DISABLED', 'METRICS_ONLY') THEN
                    openings := 0;
                    open_until := 0;
                END IF;
                IF target <> 'HALF_OPEN' THEN
                    wkind := kind;
                    codes := '';
                    b_start := '{}';
                    b_calls := '{}';
                    b_fail := '{}';
                    b_slow := '{}';
                    consecutive := 0;
                END IF;
                admitted := 0;
                ok := 0;
                fail := 0;
                phase := target;
                since := now_ms;
            END IF;
            -- An operator's event is all the step does.
            EXIT WHEN round = 1 AND ev IN ('FO', 'FC', 'RS', 'DI', 'MO');
            EXIT WHEN round = 3;
        END LOOP;
    END LOOP;

    IF kind = 'c' THEN
        window_text := 'c:' || codes;
    ELSE
        window_text := 't:' || coalesce((
            SELECT string_agg(concat_ws(',', b_start[i], b_calls[i], b_fail[i], b_slow[i]), ';' ORDER BY i)
            FROM generate_subscripts(b_start, 1) AS i), '');
    END IF;
    encoded := concat_ws(' ', 'b1', phase, since, open_until, openings, consecutive, admitted,
        ok, fail, window_text);

    -- A plain success leaves a closed count window full of successes as it
    -- is (the window, the failures in a row and every rate stay; nothing can
    -- trip). The row says so for this configuration and this state, so that
    -- the calling statement answers such a success without this function.
    IF phase = 'CLOSED' AND kind = 'c' AND consecutive = 0 AND length(codes) = size
        AND translate(codes, '123', '') = codes
    THEN
        steady_text := parts[1] || '|' || encoded;
    END IF;

    IF encoded IS DISTINCT FROM baseline THEN
        failure_count := CASE
            WHEN phase = 'HALF_OPEN' THEN fail
            WHEN phase = 'OPEN' THEN opened_with
            WHEN phase IN ('CLOSED', 'METRICS_ONLY') AND kind = 'c'
                THEN length(codes) - length(translate(codes, '13', ''))
            WHEN phase IN ('CLOSED', 'METRICS_ONLY')
                THEN (SELECT coalesce(sum(b_fail[i]), 0) FROM generate_subscripts(b_start, 1) AS i
                    WHERE b_start[i] + bucket_ms > greatest(now_ms - size, 0))
            ELSE 0 END;
        INSERT INTO @breakers@ AS b
            (key, resource_key, state, failure_count, open_until, updated_at, expires_at, detail,
             steady)
        VALUES (
            p_key, name, phase, failure_count,
            CASE WHEN phase = 'OPEN' THEN to_timestamp(open_until / 1000.0) END,
            clock_timestamp(),
            CASE WHEN phase IN ('FORCED_OPEN', 'DISABLED', 'METRICS_ONLY') THEN NULL
                ELSE clock_timestamp() + greatest(ttl, 1) * interval '1 millisecond' END,
            encoded, steady_text)
        ON CONFLICT (key) DO UPDATE SET
            resource_key = EXCLUDED.resource_key,
            state = EXCLUDED.state,
            failure_count = EXCLUDED.failure_count,
            open_until = EXCLUDED.open_until,
            updated_at = EXCLUDED.updated_at,
            expires_at = EXCLUDED.expires_at,
            detail = EXCLUDED.detail,
            steady = EXCLUDED.steady;
    ELSIF steady_text IS NOT NULL AND steady_text IS DISTINCT FROM raw_steady THEN
        UPDATE @breakers@ SET steady = steady_text WHERE key = p_key;
    END IF;
    RETURN decision || ' ' || coalesce(t_from || '>' || t_to, '-');
END
$$;
