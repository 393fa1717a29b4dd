//! containerd's filter language, as used by `List` (Walk) requests.
//!
//! A request carries several filter strings; a snapshot matches if it matches any of
//! them. One filter string is a comma-separated list of selectors that must all match.
//! A selector is a field path (`name`, `parent`, `kind`, `labels.<key>`, where a path
//! segment may be double-quoted, as in `labels."containerd.io/gc.root"`), optionally
//! followed by an operator (`==`, `!=`, `~=` for a regular expression) and a value
//! (double-quoted, or bare up to the next comma). A bare field path tests presence.

use crate::error::{Error, Result};

/// Looks up a field path on the thing being filtered.
pub trait Fields {
    /// The value at `path`, or `None` if it is absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, item: &dyn Fields) -> bool {
        let value = item.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

/// A parsed set of filters: matches when any of its filter strings matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parses the filter strings of a request. No strings (or only empty ones) match
    /// everything.
    pub fn parse_all(filters: &[String]) -> Result<Self> {
        let mut any_of = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            any_of.push(
                parse_one(f).map_err(|e| Error::InvalidArgument(format!("filter {f:?}: {e}")))?,
            );
        }
        Ok(Self { any_of })
    }

    /// Whether `item` passes.
    pub fn matches(&self, item: &dyn Fields) -> bool {
        self.any_of.is_empty()
            || self
                .any_of
                .iter()
                .any(|all| all.iter().all(|s| s.matches(item)))
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }
    fn quoted(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(format!("unterminated quoted string at {start}")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.peek().ok_or("dangling backslash")?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| "quoted string is not UTF-8".to_string())
    }
    fn field(&mut self) -> Result<String, String> {
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(format!("expected a field name at position {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }
    fn value(&mut self) -> Result<String, String> {
        self.skip_space();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c != b',') {
            self.pos += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos])
            .trim_end()
            .to_string())
    }
}

fn parse_one(f: &str) -> Result<Vec<Selector>, String> {
    let mut sc = Scanner {
        s: f.as_bytes(),
        pos: 0,
    };
    let mut selectors = Vec::new();
    loop {
        sc.skip_space();
        let mut path = vec![sc.field()?];
        while sc.peek() == Some(b'.') {
            sc.pos += 1;
            path.push(sc.field()?);
        }
        sc.skip_space();
        let rest = &sc.s[sc.pos..];
        let op = if rest.starts_with(b"==") {
            sc.pos += 2;
            Op::Equal(sc.value()?)
        } else if rest.starts_with(b"!=") {
            sc.pos += 2;
            Op::NotEqual(sc.value()?)
        } else if rest.starts_with(b"~=") {
            sc.pos += 2;
            let v = sc.value()?;
            Op::Matches(regex::Regex::new(&v).map_err(|e| format!("bad regular expression: {e}"))?)
        } else {
            Op::Present
        };
        selectors.push(Selector { path, op });
        sc.skip_space();
        match sc.peek() {
            None => return Ok(selectors),
            Some(b',') => sc.pos += 1,
            Some(c) => return Err(format!("unexpected {:?} at position {}", c as char, sc.pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Item(HashMap<&'static str, &'static str>);
    impl Fields for Item {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|s| s.to_string())
        }
    }

    fn m(filters: &[&str], item: &Item) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filter::parse_all(&f).unwrap().matches(item)
    }

    #[test]
    fn selectors_and_or() {
        let it = Item(HashMap::from([
            ("name", "a-wl"),
            ("kind", "active"),
            ("parent", "p-wl"),
            ("labels.l", "2"),
            ("labels.containerd.io/gc.root", "check-walk"),
        ]));
        assert!(m(&[], &it));
        assert!(m(&["labels.\"containerd.io/gc.root\"==check-walk"], &it));
        assert!(m(&["kind==active,labels.l==2"], &it));
        assert!(!m(&["kind==view,labels.l==2"], &it));
        assert!(m(&["name==p", "name==a-wl"], &it));
        assert!(m(&["name==a-wl,labels.l"], &it));
        assert!(!m(&["labels.missing"], &it));
        assert!(m(&["parent!=\"\""], &it));
        assert!(m(&["name~=^a-"], &it));
        assert!(m(&["labels.nothere!=x"], &it));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for bad in ["==x", "name==\"open", "name~=(", "name==a b,,"] {
            let r = Filter::parse_all(&[bad.to_string()]);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad}");
        }
    }
}
