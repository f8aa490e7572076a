//! Text from the store, safe to print on a terminal.

use std::fmt;

use tower_api_key::manage::is_hidden_control;

/// Text from the store (or an error that quotes it), shown on a terminal: a control character or
/// a bidirectional override is printed as its escape (`\u{1b}`), so a key's name cannot rewrite
/// the operator's terminal. Names from this version on cannot hold them; a store written by
/// other means still can. Pads as `str` does, for the tables.
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.chars().any(is_hidden_control) {
            return f.pad(self.0);
        }
        let mut text = String::with_capacity(self.0.len() + 8);
        for c in self.0.chars() {
            if is_hidden_control(c) {
                text.extend(c.escape_unicode());
            } else {
                text.push(c);
            }
        }
        f.pad(&text)
    }
}
