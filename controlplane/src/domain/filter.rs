//! Worker filters: the boolean expressions (a subset of go-bexpr, as Boundary uses) that pick
//! the workers allowed to handle a target's sessions.
//!
//! ```text
//! "prod" in "/tags/env" and not ("/name" == "w-old")
//! "/tags/region" contains "eu" or "/name" == "w-eu-1"
//! ```
//!
//! Operands are double-quoted strings or bare words. One that starts with `/` is a selector:
//! `/name` is the worker's name, `/tags/<key>` the list of its values for that tag key.
//! Operators: `==`, `!=`, `in`, `not in`, `contains`, `not contains`, `is empty`,
//! `is not empty`, combined with `and`, `or`, `not` and parentheses.

use std::collections::BTreeMap;

/// Longest filter accepted.
const MAX_LEN: usize = 4096;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// A parsed worker filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Expr);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Eq(String, String),
    In(String, String),
    Empty(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Word(String),
    Op(&'static str),
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some(&(i, c)) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '(' => {
                it.next();
                out.push(Tok::Open);
            }
            ')' => {
                it.next();
                out.push(Tok::Close);
            }
            '=' | '!' => {
                it.next();
                match it.next() {
                    Some((_, '=')) => out.push(Tok::Op(if c == '=' { "==" } else { "!=" })),
                    _ => return Err(format!("expected `{c}=` at position {i}")),
                }
            }
            '"' => {
                it.next();
                let mut v = String::new();
                loop {
                    match it.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match it.next() {
                            Some((_, e)) => v.push(e),
                            None => return Err("unfinished escape in a quoted string".into()),
                        },
                        Some((_, ch)) => v.push(ch),
                        None => {
                            return Err(format!("the string opened at position {i} is not closed"))
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let mut w = String::new();
                while let Some(&(_, ch)) = it.peek() {
                    if ch.is_whitespace() || "()\"=!".contains(ch) {
                        break;
                    }
                    w.push(ch);
                    it.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x == w)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the filter nests deeper than {MAX_DEPTH} levels"));
        }
        let e = if self.peek_word("not") {
            self.pos += 1;
            Expr::Not(Box::new(self.unary()?))
        } else if self.toks.get(self.pos) == Some(&Tok::Open) {
            self.pos += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::Close) {
                return Err("a `(` is not closed".into());
            }
            e
        } else {
            self.matcher()?
        };
        self.depth -= 1;
        Ok(e)
    }
    fn operand(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            Some(Tok::Word(w)) if !["and", "or", "not", "in", "is"].contains(&w.as_str()) => Ok(w),
            Some(t) => Err(format!("expected a value or selector, found {t:?}")),
            None => Err("the filter ends where a value or selector was expected".into()),
        }
    }
    fn matcher(&mut self) -> Result<Expr, String> {
        let left = self.operand()?;
        let negate = self.peek_word("not");
        if negate {
            self.pos += 1;
        }
        let e = match self.next() {
            Some(Tok::Op("==")) if !negate => Expr::Eq(left, self.operand()?),
            Some(Tok::Op("!=")) if !negate => Expr::Not(Box::new(Expr::Eq(left, self.operand()?))),
            Some(Tok::Word(w)) if w == "in" => Expr::In(left, self.operand()?),
            Some(Tok::Word(w)) if w == "contains" => Expr::In(self.operand()?, left),
            Some(Tok::Word(w)) if w == "is" && !negate => {
                let not = self.peek_word("not");
                if not {
                    self.pos += 1;
                }
                if !self.peek_word("empty") {
                    return Err("expected `empty` after `is`".into());
                }
                self.pos += 1;
                let e = Expr::Empty(left);
                return Ok(if not { Expr::Not(Box::new(e)) } else { e });
            }
            Some(t) => {
                return Err(format!(
                    "expected an operator (==, !=, in, contains, is empty), found {t:?}"
                ))
            }
            None => return Err("the filter ends where an operator was expected".into()),
        };
        Ok(if negate { Expr::Not(Box::new(e)) } else { e })
    }
}

fn check_selector(v: &str) -> Result<(), String> {
    if let Some(sel) = v.strip_prefix('/') {
        if sel != "name" && sel.strip_prefix("tags/").is_none_or(|k| k.is_empty()) {
            return Err(format!(
                "unknown selector {v:?}; use \"/name\" or \"/tags/<key>\""
            ));
        }
    }
    Ok(())
}

fn check(e: &Expr) -> Result<(), String> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => check(a).and(check(b)),
        Expr::Not(a) => check(a),
        Expr::Eq(a, b) | Expr::In(a, b) => check_selector(a).and(check_selector(b)),
        Expr::Empty(a) => check_selector(a),
    }
}

impl Filter {
    /// Parses a filter; the error says what is wrong and where.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_LEN {
            return Err(format!("the filter is longer than {MAX_LEN} characters"));
        }
        let toks = lex(s)?;
        if toks.is_empty() {
            return Err("the filter is empty".into());
        }
        let mut p = Parser {
            toks,
            pos: 0,
            depth: 0,
        };
        let e = p.or()?;
        if p.pos < p.toks.len() {
            return Err(format!(
                "unexpected {:?} after a complete expression",
                p.toks[p.pos]
            ));
        }
        check(&e)?;
        Ok(Self(e))
    }

    /// Whether a worker with this name and these tags matches.
    pub fn matches(&self, name: &str, tags: &BTreeMap<String, Vec<String>>) -> bool {
        eval(&self.0, name, tags)
    }
}

fn values<'a>(v: &'a str, name: &'a str, tags: &'a BTreeMap<String, Vec<String>>) -> Vec<&'a str> {
    if v == "/name" {
        vec![name]
    } else if let Some(k) = v.strip_prefix("/tags/") {
        tags.get(k)
            .map(|vs| vs.iter().map(String::as_str).collect())
            .unwrap_or_default()
    } else {
        vec![v]
    }
}

fn eval(e: &Expr, name: &str, tags: &BTreeMap<String, Vec<String>>) -> bool {
    match e {
        Expr::And(a, b) => eval(a, name, tags) && eval(b, name, tags),
        Expr::Or(a, b) => eval(a, name, tags) || eval(b, name, tags),
        Expr::Not(a) => !eval(a, name, tags),
        Expr::Eq(a, b) | Expr::In(a, b) => {
            let (l, r) = (values(a, name, tags), values(b, name, tags));
            l.iter().any(|x| r.contains(x))
        }
        Expr::Empty(a) => values(a, name, tags).iter().all(|v| v.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn filters_pick_workers_by_name_and_tags() {
        let prod = tags(&[("env", &["prod"]), ("region", &["eu", "us"])]);
        let dev = tags(&[("env", &["dev"])]);
        let f = Filter::parse(r#""prod" in "/tags/env""#).unwrap();
        assert!(f.matches("w1", &prod));
        assert!(!f.matches("w2", &dev));
        let f =
            Filter::parse(r#""/tags/region" contains "us" and not ("/name" == "old")"#).unwrap();
        assert!(f.matches("w1", &prod));
        assert!(!f.matches("old", &prod));
        assert!(!f.matches("w1", &dev));
        let f = Filter::parse(r#"/name == w2 or "/tags/env" == "prod""#).unwrap();
        assert!(f.matches("w2", &dev) && f.matches("x", &prod) && !f.matches("x", &dev));
        let f = Filter::parse(r#""/tags/region" is empty"#).unwrap();
        assert!(f.matches("w2", &dev) && !f.matches("w1", &prod));
        let f = Filter::parse(r#""prod" not in "/tags/env" and "/name" != "w9""#).unwrap();
        assert!(f.matches("w2", &dev) && !f.matches("w1", &prod) && !f.matches("w9", &dev));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for (f, why) in [
            ("", "empty"),
            (r#""prod" in"#, "ends"),
            (r#""prod" = "x""#, "=="),
            (r#"("a" == "b""#, "not closed"),
            (r#""a" == "b" "c""#, "after a complete"),
            (r#""x" in "/tagz/env""#, "unknown selector"),
            (r#""unclosed"#, "not closed"),
        ] {
            let e = Filter::parse(f).unwrap_err();
            assert!(e.contains(why), "{f:?}: {e}");
        }
        let deep = format!("{}\"a\" == \"b\"{}", "(".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep).unwrap_err().contains("deeper"));
    }
}
