//! The dashboard: one page, one script, one stylesheet, embedded in the crate. The page learns
//! where the console is mounted from the path it was asked for, so the same files work under
//! any prefix.

use axum::extract::OriginalUri;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The dashboard's routes.
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/", get(page))
        .route(
            "/assets/console.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/assets/console.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/assets/icon.svg", get(|| asset("image/svg+xml", ICON)))
}

/// The page, with the console's mount point (the path it was asked at: `/admin`) in it: the
/// script and every link and API call name it.
async fn page(OriginalUri(uri): OriginalUri) -> Response {
    let base = uri.path().trim_end_matches('/');
    Html(PAGE.replace("{{base}}", &escape(base))).into_response()
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `text` safe inside an HTML attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_is_escaped_and_no_script_is_inline() {
        assert_eq!(escape("/a\"<b>&'"), "/a&quot;&lt;b&gt;&amp;&#39;");
        assert!(PAGE.contains("{{base}}"));
        // The Content-Security-Policy allows scripts and styles from files only.
        let lower = PAGE.to_lowercase();
        assert!(
            !lower.contains("<script>") && !lower.contains("<style") && !lower.contains(" style=")
        );
        let handlers = lower
            .split_whitespace()
            .filter(|word| word.starts_with("on"));
        assert_eq!(
            handlers.filter(|word| word.contains('=')).count(),
            0,
            "no inline handlers"
        );
        // No third-party requests: no address but SVG's namespace.
        for text in [PAGE, SCRIPT, STYLE, ICON] {
            let rest = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !rest.contains("http://") && !rest.contains("https://") && !rest.contains("//cdn")
            );
        }
    }
}
