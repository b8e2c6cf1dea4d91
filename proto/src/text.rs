//! Text from peers made safe to show (S9): hosts choose their labels, service details, reasons
//! and progress messages, and none of it may reach an operator's terminal or a log as control
//! characters (an ANSI escape can repaint `rollgate hosts`, a CR or backspace can overwrite a
//! line, a bidi override can reorder it).

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every character a terminal would act on rather than print written out visibly
/// as a Rust-style escape (`\u{1b}`): C0 controls (newline and tab included), DEL, C1 controls,
/// bidi embeddings, overrides, isolates and marks, and the Unicode line and paragraph
/// separators. Everything else, backslashes included, is kept, so escaping twice changes
/// nothing. Borrowed when there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on_terminal(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] applied to each line of `text`, keeping its line breaks: for text that is
/// meant to span lines (an error with its causes) but may carry peer text.
pub fn printable_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && acts_on_terminal(c)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.split('\n')
            .map(printable)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Serialized JSON made safe to show, with the same value: serde_json escapes C0 controls in
/// strings but writes DEL, C1 controls and bidi characters raw; those become `\uXXXX` escapes
/// (all are in the Basic Multilingual Plane). Raw newlines in JSON are layout, never string
/// content, so they stay.
pub fn printable_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| c != '\n' && acts_on_terminal(c)) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if c != '\n' && acts_on_terminal(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether a terminal (or a log viewer) would act on `c` rather than print it.
fn acts_on_terminal(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(
            c,
            '\u{061c}' // Arabic letter mark
            | '\u{200e}' | '\u{200f}' // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // embeddings, pop, overrides
            | '\u{2066}'..='\u{2069}' // isolates
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        let table = [
            ("plain site-1", "plain site-1"),
            ("", ""),
            ("ünïcødé 名前 ✓", "ünïcødé 名前 ✓"),
            ("back\\slash \\u{1b}", "back\\slash \\u{1b}"),
            ("\x1b[31mred\x1b[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            ("\x1b]0;title\x07", "\\u{1b}]0;title\\u{7}"),
            ("ok\rFAKE", "ok\\u{d}FAKE"),
            ("abc\x08\x08\x08xyz", "abc\\u{8}\\u{8}\\u{8}xyz"),
            ("two\nlines", "two\\u{a}lines"),
            ("tab\there", "tab\\u{9}here"),
            ("nul\0", "nul\\u{0}"),
            ("del\x7f", "del\\u{7f}"),
            ("csi\u{9b}31m", "csi\\u{9b}31m"),
            ("nel\u{85}", "nel\\u{85}"),
            ("\u{202e}evil", "\\u{202e}evil"),
            ("\u{2066}iso\u{2069}", "\\u{2066}iso\\u{2069}"),
            ("mark\u{200f}", "mark\\u{200f}"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("alm\u{61c}", "alm\\u{61c}"),
        ];
        for (input, want) in table {
            let got = printable(input);
            assert_eq!(got, want, "{input:?}");
            assert!(!got.chars().any(acts_on_terminal), "{input:?}");
            // Idempotent: an escaped text is left alone.
            assert_eq!(printable(&got), got, "{input:?}");
        }
    }

    #[test]
    fn borrows_when_nothing_needs_escaping() {
        assert!(matches!(printable("web 1.2.0 healthy"), Cow::Borrowed(_)));
        assert!(matches!(printable("a\x1b"), Cow::Owned(_)));
    }

    #[test]
    fn json_keeps_its_layout_and_escapes_the_rest_as_json() {
        // As serde_json writes it: C0 escaped already, DEL, C1 and bidi raw.
        let json = "{\n  \"label\": \"a\\u001b[31m\u{9b}b\u{202e}c\u{7f}\"\n}";
        assert_eq!(
            printable_json(json),
            "{\n  \"label\": \"a\\u001b[31m\\u009bb\\u202ec\\u007f\"\n}"
        );
        assert!(matches!(printable_json("{\"a\": 1}"), Cow::Borrowed(_)));
    }

    #[test]
    fn lines_keep_their_breaks() {
        assert_eq!(printable_lines("a\nb"), "a\nb");
        assert_eq!(
            printable_lines("error: x\x1b[2K\ncaused by: \ry"),
            "error: x\\u{1b}[2K\ncaused by: \\u{d}y"
        );
    }
}
