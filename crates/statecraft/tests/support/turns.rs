//! The checker of a lock's enter/exit log, shared by the process tests of
//! each kind of lock: lines `enter <token> <pid>` and `exit <token> <pid>`,
//! appended by the holders (O_APPEND: in the order the writes happened).

/// Replays `text`: every entry finds nobody inside, every exit is the one
/// inside, tokens strictly rise. The number of entries.
pub(crate) fn check_turns(text: &str) -> usize {
    let mut inside: Option<(u64, u32)> = None;
    let mut last_token = 0u64;
    let mut entries = 0;
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split(' ').collect();
        let (what, token, pid) = match words.as_slice() {
            [what, token, pid] => (
                *what,
                token.parse::<u64>().expect("token"),
                pid.parse::<u32>().expect("pid"),
            ),
            _ => panic!("line {n} is damaged: {line:?}"),
        };
        match what {
            "enter" => {
                assert_eq!(
                    inside, None,
                    "line {n}: {pid} entered while {inside:?} held the lock"
                );
                assert!(
                    token > last_token,
                    "line {n}: token {token} after {last_token}"
                );
                last_token = token;
                inside = Some((token, pid));
                entries += 1;
            }
            "exit" => {
                assert_eq!(inside, Some((token, pid)), "line {n}: an exit by another");
                inside = None;
            }
            other => panic!("line {n}: {other:?}"),
        }
    }
    assert_eq!(inside, None, "the log ends with a holder inside");
    entries
}
