//! Reading policy and catalog files: syntax, `kind`, and the typed form, each problem located.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::catalog::CatalogFile;
use crate::error::{PolicyError, Problem, ProblemCode, Severity};

use super::model::PolicyLayer;

/// The text of one policy or catalog file, with the name problems will cite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The name problems cite (usually the path as given).
    pub name: String,
    /// The file's text.
    pub text: String,
}

impl Source {
    /// A source from a name and its text.
    #[must_use]
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    /// Reads every `*.json` file at `paths` (files, or directories searched recursively, in
    /// sorted order so results are stable).
    ///
    /// # Errors
    /// [`PolicyError::Io`] naming the path that could not be read.
    pub fn read_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Source>, PolicyError> {
        let mut files = Vec::new();
        for p in paths {
            collect(p.as_ref(), &mut files)?;
        }
        files
            .into_iter()
            .map(|path| {
                std::fs::read_to_string(&path)
                    .map(|text| Source::new(path.display().to_string(), text))
                    .map_err(|source| PolicyError::Io { path, source })
            })
            .collect()
    }
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let meta = std::fs::metadata(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let rd = std::fs::read_dir(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut entries = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        entries.push(entry.path());
    }
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "json") {
            out.push(e);
        }
    }
    Ok(())
}

/// A file after parsing.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    Catalog(CatalogFile),
    Policy(Box<PolicyLayer>, Value),
}

pub(crate) fn problem(
    severity: Severity,
    code: ProblemCode,
    file: &str,
    path: impl Into<String>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        severity,
        code,
        file: file.to_string(),
        path: path.into(),
        line_col: None,
        message: message.into(),
    }
}

/// Parses one source: JSON syntax, then `kind`, then the typed form.
pub(crate) fn parse(src: &Source) -> Result<Parsed, Problem> {
    let raw: Value = serde_json::from_str(&src.text).map_err(|e| Problem {
        severity: Severity::Error,
        code: ProblemCode::Syntax,
        file: src.name.clone(),
        path: "$".into(),
        line_col: Some((e.line(), e.column())),
        message: syntax_message(&e),
    })?;
    let kind = match raw.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => {
            return Err(problem(
                Severity::Error,
                ProblemCode::UnknownKind,
                &src.name,
                "$.kind",
                "`kind` must be the string \"policy\" or \"catalog\"",
            ));
        }
        None => {
            return Err(problem(
                Severity::Error,
                ProblemCode::UnknownKind,
                &src.name,
                "$",
                "missing `kind`: a file must say `\"kind\": \"policy\"` or `\"kind\": \"catalog\"`",
            ));
        }
    };
    match kind {
        "catalog" => typed::<CatalogFile>(src).map(Parsed::Catalog),
        "policy" => typed::<PolicyLayer>(src).map(|l| Parsed::Policy(Box::new(l), raw)),
        other => Err(problem(
            Severity::Error,
            ProblemCode::UnknownKind,
            &src.name,
            "$.kind",
            format!("unknown kind `{other}`: expected \"policy\" or \"catalog\""),
        )),
    }
}

fn syntax_message(e: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the location is reported separately.
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn typed<T: serde::de::DeserializeOwned>(src: &Source) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_str(&src.text);
    serde_path_to_error::deserialize::<_, T>(de).map_err(|err| {
        let path = json_path(&err.path().to_string());
        let inner = err.into_inner();
        let message = syntax_message(&inner);
        let code = if message.starts_with("unknown field") {
            ProblemCode::UnknownField
        } else {
            ProblemCode::Schema
        };
        Problem {
            severity: Severity::Error,
            code,
            file: src.name.clone(),
            path,
            line_col: Some((inner.line(), inner.column())),
            message,
        }
    })
}

/// Turns serde_path_to_error's `a.b[1].c` (or `.` for the root) into `$.a.b[1].c`.
fn json_path(p: &str) -> String {
    if p.is_empty() || p == "." {
        "$".to_string()
    } else {
        format!("$.{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let p = parse(&Source::new(
            "a.json",
            "{\n  \"kind\": \"policy\",\n  oops\n}",
        ))
        .unwrap_err();
        assert_eq!(p.code, ProblemCode::Syntax);
        assert_eq!(p.line_col, Some((3, 3)));
        assert_eq!(p.to_string(), "a.json:3:3: key must be a string");
    }

    #[test]
    fn unknown_fields_are_located() {
        let text = r#"{"kind":"policy","id":"p","version":"1","level":"platform",
            "constraints":{"flor":1}}"#;
        let p = parse(&Source::new("p.json", text)).unwrap_err();
        assert_eq!(p.code, ProblemCode::UnknownField);
        assert_eq!(p.path, "$.constraints.flor");
        assert!(
            p.message.starts_with("unknown field `flor`"),
            "{}",
            p.message
        );
    }
}
