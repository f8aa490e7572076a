//! What a request costs against its key's limits: [`Costs`] per path, or a [`Cost`] an outer
//! layer sets.

use std::collections::HashMap;

/// The cost of one request, in the units of its key's limits. An outer layer (or your own
/// middleware in front of the [`ApiKeyLayer`](crate::ApiKeyLayer)) may put one into the
/// request's extensions; it then takes precedence over the layer's [`Costs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost(pub u32);

/// What requests cost, by path: a request costs 1 unless it is listed. A cost of 0 checks the
/// key's limits (the request is refused where a cost of 1 would be) without consuming them.
///
/// A path is looked up exactly first; then, among the listed paths that end in `/`, the longest
/// that starts the request's path: `/reports/` covers `/reports/2026/q3`, and a gRPC service
/// `/search.v1.Search/` covers its methods.
///
/// ```
/// use tower_api_key::{ApiKeyLayer, limit::Costs, MemoryStore};
///
/// let costs = Costs::per_path([("/search", 5), ("/reports/", 20), ("/status", 0)], 1);
/// assert_eq!(costs.of("/search"), 5);
/// assert_eq!(costs.of("/reports/2026/q3"), 20);
/// assert_eq!(costs.of("/status"), 0);
/// assert_eq!(costs.of("/offers"), 1);
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new()).costs(costs).build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Costs {
    exact: HashMap<Box<str>, u32>,
    /// Longest first.
    prefixes: Vec<(Box<str>, u32)>,
    otherwise: u32,
}

impl Costs {
    /// `paths` with their costs; every other path costs `otherwise`.
    pub fn per_path<I, P>(paths: I, otherwise: u32) -> Self
    where
        I: IntoIterator<Item = (P, u32)>,
        P: AsRef<str>,
    {
        let mut costs = Costs {
            otherwise,
            ..Costs::default()
        };
        for (path, cost) in paths {
            let path = path.as_ref();
            if path.ends_with('/') {
                costs.prefixes.push((path.into(), cost));
            }
            costs.exact.insert(path.into(), cost);
        }
        costs
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        costs
    }

    /// What a request to `path` costs.
    pub fn of(&self, path: &str) -> u32 {
        if let Some(cost) = self.exact.get(path) {
            return *cost;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(&**prefix))
            .map_or(self.otherwise, |(_, cost)| *cost)
    }
}
