//! Permission scopes: what a key may do, how one scope implies another, and the route-level
//! [`RequireScopeLayer`](crate::RequireScopeLayer).
//!
//! Scopes are strings: `read`, `write`, `admin`, namespaced ones such as `offers:write`, and
//! wildcards: `offers:*` grants every scope under `offers:`, `*` grants everything. An
//! implication, by default `admin` ⊇ `write` ⊇ `read` as in the reference documents, applies to
//! the last segment within one namespace: `offers:admin` grants `offers:read`.
//!
//! ```
//! use tower_api_key::scope::ScopeHierarchy;
//!
//! let h = ScopeHierarchy::default();
//! assert!(h.grants("admin", "read"));
//! assert!(!h.grants("read", "write"));
//! assert!(h.grants("offers:admin", "offers:write"));
//! assert!(!h.grants("offers:admin", "billing:write"));
//! assert!(h.grants("offers:*", "offers:write"));
//! assert!(h.grants("*", "anything:at:all"));
//! ```

use std::fmt;

/// The longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;

/// Which scope implies which: `admin` ⊇ `write` ⊇ `read` by default.
///
/// Implications are closed transitively when the hierarchy is built, so checking one is a scan of
/// a short list.
///
/// ```
/// use tower_api_key::scope::ScopeHierarchy;
///
/// let custom = ScopeHierarchy::empty().imply("owner", "member").imply("member", "guest");
/// assert!(custom.grants("owner", "guest"));
/// assert!(!ScopeHierarchy::empty().grants("admin", "read"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeHierarchy {
    /// For each scope, every scope it implies (transitively), without itself.
    implied: Vec<(Box<str>, Vec<Box<str>>)>,
}

impl Default for ScopeHierarchy {
    fn default() -> Self {
        ScopeHierarchy::empty()
            .imply("admin", "write")
            .imply("write", "read")
    }
}

impl ScopeHierarchy {
    /// No implications: every scope grants only itself (and wildcards still apply).
    pub fn empty() -> Self {
        ScopeHierarchy {
            implied: Vec::new(),
        }
    }

    /// Adds that `higher` implies `lower` (and so everything `lower` implies).
    pub fn imply(mut self, higher: &str, lower: &str) -> Self {
        let mut edges: Vec<(Box<str>, Box<str>)> = self
            .implied
            .iter()
            .flat_map(|(h, ls)| ls.iter().map(move |l| (h.clone(), l.clone())))
            .collect();
        edges.push((higher.into(), lower.into()));
        let mut nodes: Vec<Box<str>> = edges.iter().map(|(h, _)| h.clone()).collect();
        nodes.sort();
        nodes.dedup();
        self.implied = nodes
            .into_iter()
            .map(|node| {
                let mut reach: Vec<Box<str>> = Vec::new();
                let mut todo = vec![node.clone()];
                while let Some(current) = todo.pop() {
                    for (h, l) in &edges {
                        if *h == current && *l != node && !reach.contains(l) {
                            reach.push(l.clone());
                            todo.push(l.clone());
                        }
                    }
                }
                (node, reach)
            })
            .collect();
        self
    }

    /// Whether a key granted `granted` may do what needs `required`.
    pub fn grants(&self, granted: &str, required: &str) -> bool {
        if granted == required || granted == "*" {
            return true;
        }
        if let Some(namespace) = granted.strip_suffix('*') {
            if namespace.ends_with(':') && required.starts_with(namespace) {
                return true;
            }
        }
        let (granted_ns, granted_leaf) = split_leaf(granted);
        let (required_ns, required_leaf) = split_leaf(required);
        granted_ns == required_ns
            && self
                .implied
                .iter()
                .find(|(scope, _)| **scope == *granted_leaf)
                .is_some_and(|(_, lower)| lower.iter().any(|l| **l == *required_leaf))
    }
}

fn split_leaf(scope: &str) -> (&str, &str) {
    match scope.rfind(':') {
        Some(at) => (&scope[..at], &scope[at + 1..]),
        None => ("", scope),
    }
}

/// Checks that `scope` is a well-formed scope: 1 to [`MAX_SCOPE_LEN`] bytes of `a-z A-Z 0-9 _ - .`
/// in segments separated by `:`, no empty segment, and `*` only as a whole last segment.
///
/// # Errors
/// [`InvalidScope`] naming the scope.
///
/// ```
/// use tower_api_key::scope::validate_scope;
///
/// assert!(validate_scope("offers:write").is_ok());
/// assert!(validate_scope("offers:*").is_ok());
/// assert!(validate_scope("*").is_ok());
/// assert!(validate_scope("off*").is_err());
/// assert!(validate_scope("a::b").is_err());
/// assert!(validate_scope("").is_err());
/// ```
pub fn validate_scope(scope: &str) -> Result<(), InvalidScope> {
    let invalid = || InvalidScope(scope.chars().take(MAX_SCOPE_LEN).collect());
    if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
        return Err(invalid());
    }
    let segments: Vec<&str> = scope.split(':').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let ok = if *segment == "*" {
            i == last
        } else {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !ok {
            return Err(invalid());
        }
    }
    Ok(())
}

/// The error of a malformed scope; it names the scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidScope(pub String);

impl fmt::Display for InvalidScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid scope `{}`: use segments of a-z, A-Z, 0-9, `_`, `-`, `.` separated by `:`, \
             with `*` only as the last segment",
            self.0
        )
    }
}

impl std::error::Error for InvalidScope {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hierarchy_is_admin_write_read() {
        let h = ScopeHierarchy::default();
        for (granted, required, expected) in [
            ("admin", "admin", true),
            ("admin", "write", true),
            ("admin", "read", true),
            ("write", "read", true),
            ("write", "admin", false),
            ("read", "write", false),
            ("read", "admin", false),
            ("offers:write", "offers:read", true),
            ("offers:write", "read", false),
            ("write", "offers:read", false),
            ("offers:*", "offers", false),
            ("offers:*", "offersx:read", false),
            ("offers:*", "offers:deep:read", true),
            ("*", "admin", true),
        ] {
            assert_eq!(
                h.grants(granted, required),
                expected,
                "{granted} -> {required}"
            );
        }
    }

    #[test]
    fn implications_are_transitive_and_cycles_terminate() {
        let h = ScopeHierarchy::empty()
            .imply("a", "b")
            .imply("b", "c")
            .imply("c", "a");
        assert!(h.grants("a", "c"));
        assert!(h.grants("c", "b"));
        assert!(!h.grants("a", "d"));
    }
}

/// Which scopes a request needs: all of a list, any of a list, or none beyond authentication.
///
/// ```
/// use tower_api_key::scope::ScopeRequirement;
///
/// let writers = ScopeRequirement::all(["write"]);
/// let either = ScopeRequirement::any(["offers:write", "admin"]);
/// let anyone = ScopeRequirement::none();
/// # let _ = (writers, either, anyone);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeRequirement(Requirement);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    All(Box<[Box<str>]>),
    Any(Box<[Box<str>]>),
}

impl ScopeRequirement {
    /// Every one of `scopes` (none given: any authenticated key).
    pub fn all<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Self {
        ScopeRequirement(Requirement::All(collect(scopes)))
    }

    /// At least one of `scopes` (none given: nothing passes).
    pub fn any<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Self {
        ScopeRequirement(Requirement::Any(collect(scopes)))
    }

    /// No scope: any authenticated key.
    pub fn none() -> Self {
        ScopeRequirement::all(std::iter::empty::<&str>())
    }

    /// Whether a key whose scopes grant what `has_scope` says meets this requirement.
    pub(crate) fn met_by(&self, has_scope: impl Fn(&str) -> bool) -> bool {
        match &self.0 {
            Requirement::All(scopes) => scopes.iter().all(|s| has_scope(s)),
            Requirement::Any(scopes) => scopes.iter().any(|s| has_scope(s)),
        }
    }
}

pub(crate) fn collect<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Box<[Box<str>]> {
    scopes.into_iter().map(|s| s.as_ref().into()).collect()
}
