//! A validating reader of RFC 8941 Structured Fields dictionaries: the grammar of §3.2,
//! parsed as §4.2 says (surrounding spaces dropped, `OWS` around commas, no trailing
//! comma), reporting each member's key and the type of its value. Pure; never panics on
//! any input.

/// A bare item's type (and, for an Integer, its value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareItem {
    /// `-?[0-9]{1,15}`
    Integer(i64),
    /// `-?[0-9]{1,12}.[0-9]{1,3}`
    Decimal,
    /// A quoted string.
    String,
    /// A token.
    Token,
    /// `:base64:`
    Binary,
    /// `?0` or `?1` (a member without `=` is a `true` Boolean).
    Boolean,
}

/// A dictionary member's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberValue {
    /// An item.
    Item(BareItem),
    /// An inner list.
    InnerList,
}

/// Parse `input` as a dictionary, calling `member` with each member's key and value type in
/// order. False when it is not a valid dictionary (then some members may have been
/// reported already).
pub fn dictionary<'a>(input: &'a [u8], mut member: impl FnMut(&'a [u8], MemberValue)) -> bool {
    let mut p = Parser { s: input, i: 0 };
    p.skip_sp();
    let end = input.len() - input.iter().rev().take_while(|b| **b == b' ').count();
    p.s = &input[..end.max(p.i)];
    while !p.done() {
        let Some(key) = p.key() else { return false };
        let value = if p.eat(b'=') {
            if p.peek() == Some(b'(') {
                if !p.inner_list() {
                    return false;
                }
                MemberValue::InnerList
            } else {
                match p.item() {
                    Some(item) => MemberValue::Item(item),
                    None => return false,
                }
            }
        } else {
            if !p.parameters() {
                return false;
            }
            MemberValue::Item(BareItem::Boolean)
        };
        member(key, value);
        p.skip_ows();
        if p.done() {
            return true;
        }
        if !p.eat(b',') {
            return false;
        }
        p.skip_ows();
        if p.done() {
            return false; // a trailing comma
        }
    }
    true
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn skip_sp(&mut self) {
        self.take_while(|b| b == b' ');
    }

    fn skip_ows(&mut self) {
        self.take_while(|b| b == b' ' || b == b'\t');
    }

    /// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(&mut self) -> Option<&'a [u8]> {
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        {
            return None;
        }
        Some(self.take_while(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        }))
    }

    /// `parameters = *( ";" *SP parameter )`, `parameter = key [ "=" bare-item ]`
    fn parameters(&mut self) -> bool {
        while self.eat(b';') {
            self.skip_sp();
            if self.key().is_none() {
                return false;
            }
            if self.eat(b'=') && self.bare_item().is_none() {
                return false;
            }
        }
        true
    }

    /// `sf-item = bare-item parameters`
    fn item(&mut self) -> Option<BareItem> {
        let item = self.bare_item()?;
        self.parameters().then_some(item)
    }

    /// `inner-list = "(" *SP [ sf-item *( 1*SP sf-item ) *SP ] ")" parameters`
    fn inner_list(&mut self) -> bool {
        if !self.eat(b'(') {
            return false;
        }
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return self.parameters();
            }
            if self.item().is_none() {
                return false;
            }
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return false;
            }
        }
    }

    fn bare_item(&mut self) -> Option<BareItem> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b':' => self.binary(),
            b'?' => {
                self.i += 1;
                let ok = self.eat(b'0') || self.eat(b'1');
                ok.then_some(BareItem::Boolean)
            }
            b if b.is_ascii_alphabetic() || b == b'*' => {
                self.take_while(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
                Some(BareItem::Token)
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<BareItem> {
        let negative = self.eat(b'-');
        let int = self.take_while(|b| b.is_ascii_digit());
        if int.is_empty() {
            return None;
        }
        if self.eat(b'.') {
            let frac = self.take_while(|b| b.is_ascii_digit());
            let ok = int.len() <= 12 && (1..=3).contains(&frac.len());
            return ok.then_some(BareItem::Decimal);
        }
        if int.len() > 15 {
            return None;
        }
        let n: i64 = std::str::from_utf8(int).ok()?.parse().ok()?;
        Some(BareItem::Integer(if negative { -n } else { n }))
    }

    fn string(&mut self) -> Option<BareItem> {
        self.i += 1; // the opening quote
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(BareItem::String);
                }
                b'\\' => {
                    self.i += 1;
                    if !matches!(self.peek()?, b'"' | b'\\') {
                        return None;
                    }
                    self.i += 1;
                }
                0x20..=0x7e => self.i += 1,
                _ => return None,
            }
        }
    }

    fn binary(&mut self) -> Option<BareItem> {
        self.i += 1; // the opening colon
        self.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        self.eat(b':').then_some(BareItem::Binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_field_dictionaries_are_validated() {
        let members = |s: &str| {
            let mut out = Vec::new();
            dictionary(s.as_bytes(), |k, v| {
                out.push((String::from_utf8_lossy(k).into_owned(), v))
            })
            .then_some(out)
        };
        let item = MemberValue::Item;
        assert_eq!(
            members("  max-age=3600, no-store ,\tprivate;x=?1  "),
            Some(vec![
                ("max-age".into(), item(BareItem::Integer(3600))),
                ("no-store".into(), item(BareItem::Boolean)),
                ("private".into(), item(BareItem::Boolean)),
            ])
        );
        assert_eq!(
            members(r#"a="x\"y", b=tok/en:1, c=:aGk=:, d=-1.5, e=(1 "s" t);p, f=?0, *g"#)
                .map(|m| m.into_iter().map(|(_, v)| v).collect::<Vec<_>>()),
            Some(vec![
                item(BareItem::String),
                item(BareItem::Token),
                item(BareItem::Binary),
                item(BareItem::Decimal),
                MemberValue::InnerList,
                item(BareItem::Boolean),
                item(BareItem::Boolean),
            ])
        );
        assert_eq!(members(""), Some(vec![]));
        for bad in [
            "max-age=10000, &&&&&",
            "max-age =100",
            "max-age= 100",
            "MaX-aGe=1",
            "a=1,",
            "a=1,,b",
            "a=1 b",
            "a=\"open",
            "a=\"bad\\q\"",
            "a=1234567890123456",
            "a=1.2345",
            "a=1.",
            "a=-",
            "a=?2",
            "a=:abc",
            "a=(1 2",
            "a=(1,2)",
            "a;=1",
            "a=\u{e9}",
        ] {
            assert_eq!(members(bad), None, "{bad:?}");
        }
    }
}
