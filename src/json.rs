//! The checks every JSON parse runs first: nesting depth and `\u` escapes, in one pass.
//!
//! sonic-rs recurses once per nesting level, with no bound of its own on the paths corecast
//! uses (its checked skip of `LazyValue`s and unknown fields, its `Value` parser; only its
//! serde path stops at 255), so a 16 KB document nested 8,250 arrays deep overflowed a shard's
//! stack and aborted the process. [`check`] reads a document before any parser does, without
//! recursing: past `json_depth_max` levels it refuses it, so sonic-rs never recurses deeper
//! than that. The same pass checks what sonic-rs's skip does not: that every `\u` escape has
//! its four hex digits (see [`JsonError::InvalidEscape`]).
//!
//! The pass decodes, validates and allocates nothing. It jumps with `memchr3` from one
//! backslash, `[` or `{` to the next, checking each escape and counting the brackets, so long
//! strings and long runs of numbers cost what a memchr costs. A document with no more opening
//! brackets than the limit, which is every ordinary command, cannot nest deeper, and that one
//! pass is all it costs. Only one with more (a long array of objects, or an attack) is read a
//! second time, finding strings to count only the brackets outside them, up to the first one
//! too deep.
//!
//! [`thread_stack_bytes`] sizes the stack of every thread that parses JSON from the same limit,
//! so that a document at the limit always fits. This module imports nothing of corecast's:
//! every stage that reads JSON (the socket's commands, the control plane, the cluster's events)
//! calls it.

use std::fmt;

/// The most `json_depth_max` may be. A real document nests a few levels; 1,024 is far past
/// any of them and keeps a parsing thread's reserved stack at 3 MiB in a release build.
pub const DEPTH_MAX_LIMIT: usize = 1_024;

/// Stack reserved per nesting level of `json_depth_max` on each thread that parses JSON.
///
/// Measured with sonic-rs 0.5.10 by the depth at which each parser overflows a thread of
/// known stack: an optimized build spends at most 257 bytes a level (a deep `id`, which
/// sonic-rs parses into a `Value`; a skipped `data` or unknown field costs 112), an
/// unoptimized one up to 55 KiB (the same skip, a debug-mode frame per level). The reserve is
/// 4 times the first, about 2.3 times the second. `debug_assertions` stands for "unoptimized"
/// here: Cargo's dev profile sets both, the release profile neither.
pub const STACK_BYTES_PER_LEVEL: usize = if cfg!(debug_assertions) {
    128 << 10
} else {
    1 << 10
};

/// The stack every corecast thread had before nesting was bounded: Rust's default for a
/// spawned thread, which glommio's executors used. Everything but the JSON recursion fits it.
pub const THREAD_STACK_BASE_BYTES: usize = 2 << 20;

/// The stack of a thread that parses JSON nested up to `depth_max` levels: the base plus the
/// reserve per level. Stacks are mapped, not touched: the reserve costs address space, and
/// memory only when a document that deep arrives.
pub fn thread_stack_bytes(depth_max: usize) -> usize {
    THREAD_STACK_BASE_BYTES + depth_max * STACK_BYTES_PER_LEVEL
}

/// Why a document is refused before it is parsed. Both are the sender's to fix: the caller
/// answers `bad_request` (socket) or 400 (HTTP) with this text and parses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// The `[` or `{` at byte `at` opens level `depth_max + 1`.
    TooDeep { depth_max: usize, at: usize },
    /// The `\u` escape whose backslash is at byte `at` is not followed by four hex digits.
    /// sonic-rs's skip only counts the four bytes, so `"\u00'9"` would pass, and `"\u0"x"`
    /// would run a string past its closing quote: a `data` kept as raw text would carry either
    /// to every subscriber.
    InvalidEscape { at: usize },
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::TooDeep { depth_max, at } => {
                write!(
                    f,
                    "nested deeper than json_depth_max = {depth_max} (at byte {at})"
                )
            }
            JsonError::InvalidEscape { at } => write!(f, "invalid \\u escape at byte {at}"),
        }
    }
}

/// Checks that each `\u` escape of `json` has four hex digits and that `json` nests at most
/// `depth_max` levels: an escape error anywhere is reported first. Every `[` or `{` outside a
/// string opens a level, so the outermost brackets of a document are level 1: `{}` and `[1]`
/// nest 1 level, `{"a":[1]}` 2.
///
/// Escapes are found as the old `ws::command::check_escapes` found them: in valid JSON every
/// backslash starts an escape, inside a string, so each backslash is one, and the byte after
/// it is skipped. Strings are found as JSON defines them, a `"` outside a string opening one,
/// a backslash inside escaping the byte after it, so brackets inside strings count for
/// nothing. The parser that runs next finds the same strings: a `\u` with its four hex digits
/// holds no `"` or `\`, and any other escape is two bytes to both. Bytes this pass cannot
/// place (a closing bracket too many, an unterminated string, a backslash outside a string)
/// make invalid JSON, which that parser refuses before it recurses any deeper than the
/// brackets counted here.
pub fn check(json: &[u8], depth_max: usize) -> Result<(), JsonError> {
    if escapes_and_openings(json)? > depth_max {
        deepest_within(json, depth_max)?;
    }
    Ok(())
}

/// Checks every escape and counts every `[` and `{` byte: at least as many as the brackets
/// outside strings that open a level.
fn escapes_and_openings(json: &[u8]) -> Result<usize, JsonError> {
    let mut openings = 0;
    let mut from = 0;
    while let Some(found) = json
        .get(from..)
        .and_then(|rest| memchr::memchr3(b'\\', b'[', b'{', rest))
    {
        let at = from + found;
        if json[at] != b'\\' {
            openings += 1;
            from = at + 1;
            continue;
        }
        match json.get(at + 1) {
            Some(b'u') => {
                let digits = json.get(at + 2..at + 6);
                if !digits.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(JsonError::InvalidEscape { at });
                }
            }
            Some(b'[' | b'{') => openings += 1,
            _ => {}
        }
        from = at + 2;
    }
    Ok(openings)
}

/// Finds the first bracket outside strings that opens level `depth_max + 1`, if any.
fn deepest_within(json: &[u8], depth_max: usize) -> Result<(), JsonError> {
    let mut depth = 0;
    let mut at = 0;
    while let Some(next) = next_structural(json, at) {
        match json[next] {
            b'"' => at = string_end(json, next + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Err(JsonError::TooDeep {
                        depth_max,
                        at: next,
                    });
                }
                at = next + 1;
            }
            _ => {
                depth = depth.saturating_sub(1);
                at = next + 1;
            }
        }
    }
    Ok(())
}

/// The index just past the closing quote of the string whose contents start at `from`, or the
/// end of the input for an unterminated one.
fn string_end(json: &[u8], mut from: usize) -> usize {
    while let Some(found) = json
        .get(from..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        let at = from + found;
        if json[at] == b'"' {
            return at + 1;
        }
        from = at + 2;
    }
    json.len()
}

/// The index of the first `"`, `[`, `]`, `{` or `}` at or after `at`, tested 8 bytes at a time:
/// the bytes between them (numbers, commas, `true`) are skipped a word per step.
fn next_structural(json: &[u8], mut at: usize) -> Option<usize> {
    while let Some(word) = word_at(json, at) {
        // `[` and `]` differ from `{` and `}` only in bit 5: setting it folds them together,
        // and folds nothing else onto `{` or `}`.
        let folded = word | (BYTES * 0x20);
        let hits = equal_bytes(word, b'"') | equal_bytes(folded, b'{') | equal_bytes(folded, b'}');
        if hits != 0 {
            return Some(at + first_byte(hits));
        }
        at += 8;
    }
    let rest = json.get(at..)?;
    let found = rest.iter().position(|byte| b"\"[]{}".contains(byte))?;
    Some(at + found)
}

/// 1 in every byte.
const BYTES: u64 = u64::from_le_bytes([1; 8]);

/// The 8 bytes from `at`, the first in the lowest bits, if there are 8.
fn word_at(json: &[u8], at: usize) -> Option<u64> {
    let bytes = json.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(
        bytes.try_into().expect("a slice of 8 bytes"),
    ))
}

/// Bit 7 set in each byte of `word` that equals `byte` (and possibly in bytes above the first
/// such one, where the subtraction's borrow runs on), none if no byte does: the lowest set bit
/// is always exact, which is all [`first_byte`] reads.
fn equal_bytes(word: u64, byte: u8) -> u64 {
    let zero_where_equal = word ^ (BYTES * u64::from(byte));
    zero_where_equal.wrapping_sub(BYTES) & !zero_where_equal & (BYTES * 0x80)
}

/// The index within the word of the byte that set the lowest bit of `hits`.
fn first_byte(hits: u64) -> usize {
    (hits.trailing_zeros() / 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn the_outermost_bracket_is_level_one() {
        assert_eq!(check(b"1", 0), Ok(()));
        assert_eq!(check(b"{}", 1), Ok(()));
        assert_eq!(
            check(b"{}", 0),
            Err(JsonError::TooDeep {
                depth_max: 0,
                at: 0
            })
        );
        assert_eq!(check(br#"{"a":[1]}"#, 2), Ok(()));
        assert_eq!(
            check(br#"{"a":[1]}"#, 1),
            Err(JsonError::TooDeep {
                depth_max: 1,
                at: 5
            })
        );
        assert_eq!(check(br#"[[],[],{"a":{}}]"#, 3), Ok(()));
        assert_eq!(check(nested(128).as_bytes(), 128), Ok(()));
        assert_eq!(
            check(nested(129).as_bytes(), 128),
            Err(JsonError::TooDeep {
                depth_max: 128,
                at: 128
            })
        );
    }

    #[test]
    fn brackets_inside_strings_open_nothing() {
        let text = format!(r#"{{"a":"{}","b":"\"[[[","c":"\\"}}"#, nested(500));
        assert_eq!(check(text.as_bytes(), 1), Ok(()));
        // An escaped quote does not end the string; the bracket after it is still inside.
        assert_eq!(check(br#"["\"[",[1]]"#, 2), Ok(()));
        // An escaped backslash does: the bracket after that quote opens level 2.
        assert_eq!(
            check(br#"["\\",[1]]"#, 1),
            Err(JsonError::TooDeep {
                depth_max: 1,
                at: 6
            })
        );
    }

    #[test]
    fn a_unicode_escape_needs_four_hex_digits() {
        assert_eq!(check(br#""\u00e9\\u00zz\n\"""#, 0), Ok(()));
        assert_eq!(check(br#""\uD83D\uDE00""#, 0), Ok(()));
        assert_eq!(
            check(br#""ab\u00E"#, 0),
            Err(JsonError::InvalidEscape { at: 3 })
        );
        assert_eq!(
            check(br#"["\u0"x"]"#, 1),
            Err(JsonError::InvalidEscape { at: 2 })
        );
        assert_eq!(
            check(br#""\u12""#, 0),
            Err(JsonError::InvalidEscape { at: 1 })
        );
        // A backslash that ends the input escapes nothing; the parser refuses the string.
        assert_eq!(check(br#""abc\"#, 0), Ok(()));
    }

    #[test]
    fn what_only_the_parser_can_refuse_passes() {
        // Unbalanced or unterminated input is invalid JSON, which the parser that runs next
        // refuses; depth is still counted for what can be counted.
        assert_eq!(check(b"]]]]", 0), Ok(()));
        assert_eq!(check(br#"["abc"#, 1), Ok(()));
        assert_eq!(check(br#""[[[["#, 0), Ok(()));
        assert_eq!(
            check(b"]][[", 1),
            Err(JsonError::TooDeep {
                depth_max: 1,
                at: 3
            })
        );
        assert_eq!(check(b"", 0), Ok(()));
    }

    /// The pass written the plain way, one byte at a time: what [`check`] must agree with.
    /// First every backslash and the byte after it, then the depth outside strings.
    fn reference(json: &[u8], depth_max: usize) -> Result<(), JsonError> {
        let mut at = 0;
        while let Some(&byte) = json.get(at) {
            let hex = json.get(at + 2..at + 6);
            let four = hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
            if byte == b'\\' && json.get(at + 1) == Some(&b'u') && !four {
                return Err(JsonError::InvalidEscape { at });
            }
            at += if byte == b'\\' { 2 } else { 1 };
        }
        let (mut depth, mut in_string, mut escaped) = (0, false, false);
        for (at, &byte) in json.iter().enumerate() {
            match (in_string, escaped, byte) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') => in_string = false,
                (true, false, _) => {}
                (false, _, b'"') => in_string = true,
                (false, _, b'[' | b'{') => {
                    depth += 1;
                    if depth > depth_max {
                        return Err(JsonError::TooDeep { depth_max, at });
                    }
                }
                (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
                (false, _, _) => {}
            }
        }
        Ok(())
    }

    #[test]
    fn both_passes_agree_with_the_plain_one_on_every_short_input() {
        // Every string of up to 5 bytes over an alphabet of what matters and two fillers, each
        // placed after 0 to 9 filler bytes and before 0 to 40 more (digits, so a `\u` at the
        // end gets its four), so every byte falls at every place in a word; under limits from
        // 0 (where any bracket takes the second pass) to 2.
        let alphabet = *b"\"\\[]{}u0a";
        let mut inputs = 0;
        for len in 0..=5u32 {
            for mut code in 0..alphabet.len().pow(len) {
                let mut core = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    core.push(alphabet[code % alphabet.len()]);
                    code /= alphabet.len();
                }
                for (before, after) in [(0, 0), (3, 9), (7, 40), (9, 1)] {
                    let input = [&b"aaaaaaaaa"[..before], &core, &[b'1'; 40][..after]].concat();
                    for depth_max in [0, 1, 2] {
                        assert_eq!(
                            check(&input, depth_max),
                            reference(&input, depth_max),
                            "{:?} under {depth_max}",
                            String::from_utf8_lossy(&input)
                        );
                    }
                    inputs += 1;
                }
            }
        }
        assert_eq!(
            inputs,
            4 * (0..=5).map(|len| 9usize.pow(len)).sum::<usize>()
        );
    }

    #[test]
    fn errors_name_the_limit_and_the_byte() {
        assert_eq!(
            JsonError::TooDeep {
                depth_max: 128,
                at: 4101
            }
            .to_string(),
            "nested deeper than json_depth_max = 128 (at byte 4101)"
        );
        assert_eq!(
            JsonError::InvalidEscape { at: 3 }.to_string(),
            "invalid \\u escape at byte 3"
        );
    }

    #[test]
    fn the_stack_grows_with_the_limit() {
        assert_eq!(thread_stack_bytes(0), THREAD_STACK_BASE_BYTES);
        assert_eq!(
            thread_stack_bytes(128) - thread_stack_bytes(127),
            STACK_BYTES_PER_LEVEL
        );
    }
}
