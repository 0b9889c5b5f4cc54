//! HuJSON ("human JSON", the format of Tailscale policy files) to standard JSON: `//` and
//! `/* */` comments and trailing commas before `]` / `}` are allowed.
//!
//! [`to_json`] blanks comments and trailing commas with spaces (newlines are kept), so line and
//! column numbers in `serde_json` errors still point into the original file. Strings, including
//! escaped quotes and comment-like text inside them, are left alone.

/// Why a HuJSON document could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HujsonError {
    /// A `/*` without `*/`.
    #[error("line {line}: unterminated /* comment")]
    UnterminatedComment {
        /// 1-based line of the `/*`.
        line: usize,
    },
}

/// Converts HuJSON text to JSON text of the same length and line structure.
pub fn to_json(input: &str) -> Result<String, HujsonError> {
    let src = input.as_bytes();
    let mut out = src.to_vec();
    let mut i = 0;
    let mut line = 1;
    let mut in_string = false;
    // Positions of commas outside strings that may turn out to be trailing.
    let mut pending_comma: Option<usize> = None;
    while i < src.len() {
        let c = src[i];
        if c == b'\n' {
            line += 1;
        }
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                pending_comma = None;
            }
            b'/' if src.get(i + 1) == Some(&b'/') => {
                while i < src.len() && src[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
                continue;
            }
            b'/' if src.get(i + 1) == Some(&b'*') => {
                let start_line = line;
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                loop {
                    if i + 1 >= src.len() {
                        return Err(HujsonError::UnterminatedComment { line: start_line });
                    }
                    if src[i] == b'*' && src[i + 1] == b'/' {
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        break;
                    }
                    if src[i] == b'\n' {
                        line += 1;
                    } else {
                        out[i] = b' ';
                    }
                    i += 1;
                }
                continue;
            }
            b',' => pending_comma = Some(i),
            b']' | b'}' => {
                if let Some(p) = pending_comma.take() {
                    out[p] = b' ';
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    // Only ASCII bytes outside strings were replaced by ASCII spaces, so this stays UTF-8.
    Ok(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(&to_json(s).unwrap()).unwrap()
    }

    #[test]
    fn comments_and_trailing_commas() {
        let v = parse(
            r#"{
              // a line comment
              "a": [1, 2, 3,], /* block
                 comment */ "b": {"c": "// not a comment", "d": "/* nor this */",},
              "e": "quote \" inside, }",
            }"#,
        );
        assert_eq!(v["a"], serde_json::json!([1, 2, 3]));
        assert_eq!(v["b"]["c"], "// not a comment");
        assert_eq!(v["b"]["d"], "/* nor this */");
        assert_eq!(v["e"], "quote \" inside, }");
    }

    #[test]
    fn trailing_comma_before_comment() {
        let v = parse("[1, // one\n 2, /* two */ ]");
        assert_eq!(v, serde_json::json!([1, 2]));
    }

    #[test]
    fn keeps_line_numbers_and_reports_unterminated() {
        let j = to_json("{\n// x\n\"a\": nope\n}").unwrap();
        let e = serde_json::from_str::<serde_json::Value>(&j).unwrap_err();
        assert_eq!(e.line(), 3);
        assert_eq!(
            to_json("{\n /* open").unwrap_err(),
            HujsonError::UnterminatedComment { line: 2 }
        );
    }

    #[test]
    fn plain_json_is_unchanged() {
        let s = r#"{"x": [1, {"y": "z,]"}], "w": null}"#;
        assert_eq!(to_json(s).unwrap(), s);
    }

    proptest! {
        #[test]
        fn never_panics_and_keeps_length(s in ".{0,200}") {
            if let Ok(j) = to_json(&s) {
                prop_assert_eq!(j.len(), s.len());
            }
        }
    }
}
