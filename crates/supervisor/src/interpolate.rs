//! `${VAR}` interpolation in manifest strings, as Compose files write it.
//!
//! `${NAME}` and `$NAME` take a variable's value, `${NAME:-fallback}` falls back
//! when the variable is unset or empty (the fallback may itself interpolate),
//! `$$` is a literal dollar sign. Anything else after a `$` is an error, so a
//! shell line keeps its own `$i` only when written `$$i`.

/// Why a template could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateError {
    /// `${NAME}` with no value and no fallback.
    Undefined(String),
    /// A `${` without its closing brace.
    Unclosed,
    /// `${...}` whose name is not `[A-Za-z_][A-Za-z0-9_]*`.
    BadName(String),
    /// A `$` followed by something that is neither a name, `{` nor `$`.
    StrayDollar,
}

/// Expands `template`, reading variables through `lookup` and recording in
/// `used` every name the template refers to (for hints and the secret check).
pub(crate) fn expand(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner_and_tail) = after.strip_prefix('{') {
            let close = matching_brace(inner_and_tail).ok_or(TemplateError::Unclosed)?;
            let inner = &inner_and_tail[..close];
            out.push_str(&braced(inner, lookup, used)?);
            rest = &inner_and_tail[close + 1..];
        } else {
            let len = after
                .char_indices()
                .find(|&(i, c)| {
                    !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
                })
                .map_or(after.len(), |(i, _)| i);
            if len == 0 {
                return Err(TemplateError::StrayDollar);
            }
            out.push_str(&value(&after[..len], None, lookup, used)?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The body of `${...}`: a name, optionally followed by `:-fallback`.
fn braced(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<String>,
) -> Result<String, TemplateError> {
    let (name, fallback) = match inner.split_once(":-") {
        Some((name, fallback)) => (name, Some(fallback)),
        None => (inner, None),
    };
    if !is_name(name) {
        return Err(TemplateError::BadName(name.to_string()));
    }
    value(name, fallback, lookup, used)
}

fn value(
    name: &str,
    fallback: Option<&str>,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<String>,
) -> Result<String, TemplateError> {
    if !used.iter().any(|u| u == name) {
        used.push(name.to_string());
    }
    match (lookup(name), fallback) {
        (Some(v), Some(fallback)) if v.is_empty() => expand(fallback, lookup, used),
        (Some(v), _) => Ok(v),
        (None, Some(fallback)) => expand(fallback, lookup, used),
        (None, None) => Err(TemplateError::Undefined(name.to_string())),
    }
}

/// The index of the `}` closing a `${`, counting nested `${...}` in a fallback.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(template: &str) -> Result<String, TemplateError> {
        let lookup = |name: &str| match name {
            "ROOT" => Some("/src/mesh".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        expand(template, &lookup, &mut Vec::new())
    }

    #[test]
    fn braced_and_bare_names_take_their_values() {
        assert_eq!(run("${ROOT}/apps").unwrap(), "/src/mesh/apps");
        assert_eq!(run("$ROOT/apps").unwrap(), "/src/mesh/apps");
        assert_eq!(run("no dollar").unwrap(), "no dollar");
    }

    #[test]
    fn fallback_applies_when_unset_or_empty_and_may_nest() {
        assert_eq!(run("${PORT:-8081}").unwrap(), "8081");
        assert_eq!(run("${EMPTY:-x}").unwrap(), "x");
        assert_eq!(run("${CFG:-${ROOT}/configs/a.yaml}").unwrap(), "/src/mesh/configs/a.yaml");
        assert_eq!(run("${PASSWORD:-}").unwrap(), "");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(run("echo $$i $${ROOT}").unwrap(), "echo $i ${ROOT}");
    }

    #[test]
    fn fail_undefined_names_the_variable() {
        assert_eq!(run("${ROOT}/${MISSING}"), Err(TemplateError::Undefined("MISSING".into())));
        assert_eq!(run("$MISSING"), Err(TemplateError::Undefined("MISSING".into())));
    }

    #[test]
    fn fail_malformed_templates() {
        assert_eq!(run("${ROOT"), Err(TemplateError::Unclosed));
        assert_eq!(run("${1X}"), Err(TemplateError::BadName("1X".into())));
        assert_eq!(run("cost: $5"), Err(TemplateError::StrayDollar));
    }

    #[test]
    fn used_names_are_recorded_once() {
        let mut used = Vec::new();
        let lookup = |_: &str| Some("v".to_string());
        expand("${A}${B:-${A}}$A", &lookup, &mut used).unwrap();
        assert_eq!(used, ["A", "B"]);
    }
}
