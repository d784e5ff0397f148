//! The checks every JSON parse runs first: nesting depth and `\u` escapes, in one pass.
//!
//! sonic-rs recurses once per nesting level, with no bound of its own on the paths corecast
//! uses (its checked skip of `LazyValue`s and unknown fields, its `Value` parser; only its
//! serde path stops at 255), so a 16 KB document nested 8,250 arrays deep overflowed a shard's
//! stack and aborted the process. [`check`] walks a document once, iteratively, before any
//! parser sees it: past `json_depth_max` levels it refuses the document, so sonic-rs never
//! recurses deeper than that. The same pass checks what sonic-rs's skip does not: that every
//! `\u` escape has its four hex digits (see [`JsonError::InvalidEscape`]).
//!
//! The pass decodes nothing and allocates nothing: outside strings it counts brackets, inside
//! them it jumps from one `"` or `\` to the next with `memchr2`, so long strings cost what a
//! memchr costs. It does not validate JSON either; the parser that runs next does, and the
//! pass only has to agree with it on where strings start and end (see [`check`]).
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

/// Checks that `json` nests at most `depth_max` levels and that each of its `\u` escapes has
/// four hex digits. Every `[` or `{` outside a string opens a level, so the outermost brackets
/// of a document are level 1: `{}` and `[1]` nest 1 level, `{"a":[1]}` 2.
///
/// Strings are found as JSON defines them, a `"` outside a string opening one, a backslash
/// inside escaping the byte after it, so brackets inside strings count for nothing. The parser
/// that runs next finds the same strings: a `\u` with its four hex digits holds no `"` or `\`,
/// and any other escape is two bytes to both. Bytes this pass cannot place (a closing bracket
/// too many, an unterminated string, a backslash outside a string) make invalid JSON, which
/// that parser refuses before it recurses any deeper than the brackets counted here.
pub fn check(json: &[u8], depth_max: usize) -> Result<(), JsonError> {
    let mut depth = 0;
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        match byte {
            b'"' => at = string_end(json, at + 1)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Err(JsonError::TooDeep { depth_max, at });
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            _ => at += 1,
        }
    }
    Ok(())
}

/// The index just past the closing quote of the string whose contents start at `from`, or the
/// end of the input for an unterminated one.
fn string_end(json: &[u8], mut from: usize) -> Result<usize, JsonError> {
    while let Some(found) = json
        .get(from..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        let at = from + found;
        if json[at] == b'"' {
            return Ok(at + 1);
        }
        if json.get(at + 1) == Some(&b'u') {
            let digits = json.get(at + 2..at + 6);
            if !digits.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)) {
                return Err(JsonError::InvalidEscape { at });
            }
        }
        from = at + 2;
    }
    Ok(json.len())
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
