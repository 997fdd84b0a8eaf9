//! Just enough of a Rust lexer for the import-cycle check: identifiers, string
//! literals (for `#[path = "…"]`), `::` and single punctuation, each with its
//! line. Comments (doc comments too), character literals, lifetimes and
//! numbers are dropped, so a path in a comment or a string is no reference.

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Ident(String),
    Str(String),
    PathSep,
    Punct(char),
}

/// A token and the line (from 1) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    tokens: Vec<Token>,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    /// Moves on one character, counting lines.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn push(&mut self, kind: Kind, line: usize) {
        self.tokens.push(Token { kind, line });
    }

    fn line_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.bump();
        }
    }

    /// A block comment, nested ones included (the opening `/*` is next).
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.bump() {
            if c == '/' && self.peek(0) == Some('*') {
                self.bump();
                depth += 1;
            } else if c == '*' && self.peek(0) == Some('/') {
                self.bump();
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return;
                }
            }
        }
    }

    /// A quoted string with escapes (the opening quote is next).
    fn string(&mut self) -> String {
        let mut text = String::new();
        self.bump();
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    if let Some(escaped) = self.bump() {
                        text.push('\\');
                        text.push(escaped);
                    }
                }
                '"' => break,
                _ => text.push(c),
            }
        }
        text
    }

    /// A raw string `#…#"…"#…#` (after its `r`, `br` or `cr`).
    fn raw_string(&mut self) -> String {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            self.bump();
            hashes += 1;
        }
        self.bump(); // the opening quote
        let mut text = String::new();
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                for _ in 0..hashes {
                    self.bump();
                }
                break;
            }
            text.push(c);
        }
        text
    }

    /// A character literal or a lifetime (the quote is next).
    fn quote(&mut self) {
        self.bump();
        match (self.peek(0), self.peek(1)) {
            (Some('\\'), _) => {
                // The backslash and the escaped character, then up to the
                // closing quote (`'\u{…}'`).
                self.bump();
                self.bump();
                while self.bump().is_some_and(|c| c != '\'') {}
            }
            (Some(_), Some('\'')) => {
                self.bump();
                self.bump();
            }
            // A lifetime or a label: its name follows as an identifier,
            // which is no path anyway.
            _ => {}
        }
    }

    fn ident(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek(0).filter(|c| is_ident_char(*c)) {
            name.push(c);
            self.bump();
        }
        name
    }

    fn run(mut self) -> Vec<Token> {
        while let Some(c) = self.peek(0) {
            let line = self.line;
            match c {
                '/' if self.peek(1) == Some('/') => self.line_comment(),
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => {
                    let text = self.string();
                    self.push(Kind::Str(text), line);
                }
                '\'' => self.quote(),
                ':' if self.peek(1) == Some(':') => {
                    self.bump();
                    self.bump();
                    self.push(Kind::PathSep, line);
                }
                c if c.is_ascii_digit() => {
                    while self.peek(0).is_some_and(is_ident_char) {
                        self.bump();
                    }
                }
                c if is_ident_start(c) => self.word(line),
                c if c.is_whitespace() => {
                    self.bump();
                }
                c => {
                    self.bump();
                    self.push(Kind::Punct(c), line);
                }
            }
        }
        self.tokens
    }

    /// An identifier, or the prefix of a literal (`b"…"`, `r#"…"#`, `b'x'`)
    /// or of a raw identifier (`r#name`).
    fn word(&mut self, line: usize) {
        let name = self.ident();
        let next = self.peek(0);
        let raw_string_next =
            next == Some('"') || next == Some('#') && matches!(self.peek(1), Some('"' | '#'));
        match name.as_str() {
            "r" | "br" | "cr" if raw_string_next => {
                let text = self.raw_string();
                self.push(Kind::Str(text), line);
            }
            "r" if next == Some('#') => {
                self.bump();
                let name = self.ident();
                self.push(Kind::Ident(name), line);
            }
            "b" | "c" if next == Some('"') => {
                let text = self.string();
                self.push(Kind::Str(text), line);
            }
            "b" if next == Some('\'') => self.quote(),
            _ => self.push(Kind::Ident(name), line),
        }
    }
}

/// The tokens of `source`.
pub fn tokens(source: &str) -> Vec<Token> {
    Lexer {
        chars: source.chars().collect(),
        pos: 0,
        line: 1,
        tokens: Vec::new(),
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<Kind> {
        tokens(source).into_iter().map(|t| t.kind).collect()
    }

    fn ident(name: &str) -> Kind {
        Kind::Ident(name.to_owned())
    }

    #[test]
    fn paths_and_lines() {
        let toks = tokens("use crate::a;\nfn f() { super::b(); }");
        assert_eq!(toks[0].kind, ident("use"));
        assert_eq!(toks[2].kind, Kind::PathSep);
        let sup = toks
            .iter()
            .find(|t| t.kind == ident("super"))
            .expect("super");
        assert_eq!(sup.line, 2);
    }

    #[test]
    fn comments_and_literals_hide_paths() {
        let source = "// crate::a\n/* crate::b /* nested */ crate::c */\n\
                      /// [`crate::d`]\nlet s = \"crate::e \\\" crate::f\";\n\
                      let r = r#\"crate::g \"quoted\" \"#; let c = '\"'; let b = b'\\''; let d = '\\\\';\n\
                      fn f<'a>(x: &'a str) {}";
        let names: Vec<Kind> = kinds(source)
            .into_iter()
            .filter(|k| matches!(k, Kind::Ident(n) if n == "crate"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert!(kinds(source).contains(&ident("f")));
    }

    #[test]
    fn path_attribute_strings_are_kept() {
        assert_eq!(
            kinds("#[path = \"../x.rs\"] mod x;"),
            vec![
                Kind::Punct('#'),
                Kind::Punct('['),
                ident("path"),
                Kind::Punct('='),
                Kind::Str("../x.rs".to_owned()),
                Kind::Punct(']'),
                ident("mod"),
                ident("x"),
                Kind::Punct(';'),
            ]
        );
    }

    #[test]
    fn raw_identifiers() {
        assert_eq!(kinds("r#type"), vec![ident("type")]);
    }
}
