//! The console's dashboard in a real browser: headless Chromium driven through chromedriver
//! (`fantoccini`), against a server on 127.0.0.1. `.ci/run` installs both from the
//! distribution's packages, starts chromedriver and sets `TOWER_API_KEY_CHROMEDRIVER`.
//!
//! An admin signs in, issues a key through the form, reads it once, uses it against the service
//! (200), sees its requests on its page, moves its expiry, takes a permission away, revokes it
//! (the key now answers 401), and disables, enables and rotates another key. A key holder with
//! the self-service scope sees and issues its owner's keys only. Screenshots of each page go to
//! `target/console-screenshots/`.

#[cfg(not(feature = "console"))]
#[test]
#[ignore = "the console needs the `console` feature: cargo test --features console"]
fn browser_suite_needs_the_console_feature() {}

#[cfg(feature = "console")]
mod common;

#[cfg(feature = "console")]
mod browser {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use fantoccini::{Client, ClientBuilder, Locator};
    use http::StatusCode;
    use hyper_util::client::legacy::connect::HttpConnector;
    use serde_json::json;

    use super::common::{api_key, console_app, serve, HttpClient};
    use tower_api_key::manage::AuditEvent;
    use tower_api_key::store::{KeyFilter, KeyStoreAdmin};
    use tower_api_key::NewKey;

    /// Where chromedriver listens.
    const DRIVER: &str = "TOWER_API_KEY_CHROMEDRIVER";

    async fn browser() -> Client {
        let url = std::env::var(DRIVER).unwrap_or_else(|_| {
            panic!("{DRIVER} names the chromedriver to use (.ci/run starts one): http://127.0.0.1:9515")
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("TOWER_API_KEY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1500", "--lang=en-US"],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot start a browser session at {url}: {e}"))
    }

    /// While `on`, holds each answer of a last-hour usage report back by a second, and counts
    /// those answered: an answer that comes after a newer one's.
    #[derive(Clone, Default)]
    struct HeldBack {
        on: Arc<AtomicBool>,
        answered: Arc<AtomicUsize>,
    }

    impl HeldBack {
        fn hold_hour_reports(&self, app: axum::Router) -> axum::Router {
            let held = self.clone();
            app.layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let held = held.clone();
                    async move {
                        let query = request.uri().query().unwrap_or_default();
                        let hour = request.uri().path().ends_with("/api/usage")
                            && query.contains("hours=1&");
                        if !(hour && held.on.load(Ordering::SeqCst)) {
                            return next.run(request).await;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let response = next.run(request).await;
                        held.answered.fetch_add(1, Ordering::SeqCst);
                        response
                    }
                },
            ))
        }
    }

    /// Saves a screenshot of the page as `target/console-screenshots/<name>.png`.
    async fn screenshot(browser: &Client, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = browser.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Waits until the element `css` exists and its text contains `text`; returns its text.
    async fn wait_text(browser: &Client, css: &str, text: &str) -> String {
        eventually(&format!("{css} showing {text:?}"), move || async move {
            let shown = browser
                .find(Locator::Css(css))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            shown.contains(text).then_some(shown)
        })
        .await
    }

    /// Types `text` into the field `css`.
    async fn fill(browser: &Client, css: &str, text: &str) {
        let field = browser.find(Locator::Css(css)).await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// The key the page shows once.
    async fn shown_once(browser: &Client) -> String {
        let shown = browser.find(Locator::Css("#new-key")).await.unwrap();
        let key = shown.prop("value").await.unwrap().unwrap_or_default();
        assert!(key.starts_with("mesh_live_"), "the page shows a key");
        key
    }

    /// Says the key shown once was copied: the page then shows `text` in `css`, and `key` is
    /// gone from it.
    async fn copied(browser: &Client, key: &str, css: &str, text: &str) {
        click(browser, "#done").await;
        wait_text(browser, css, text).await;
        let page = browser.source().await.unwrap();
        assert!(!page.contains(key), "the key is shown once, then gone");
    }

    /// `at` in Unix seconds.
    fn seconds(at: std::time::SystemTime) -> u64 {
        at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    /// Asserts that `at` (Unix seconds) is `by` after a time from `before` to now.
    fn from_now(at: u64, before: std::time::SystemTime, by: Duration) {
        let (from, to) = (
            seconds(before + by),
            seconds(std::time::SystemTime::now() + by),
        );
        assert!((from..=to).contains(&at), "{at} in {from}..={to}");
    }

    /// Signs in with `key` on the sign-in page; the page then names the caller `who`.
    async fn sign_in(browser: &Client, key: &str, who: &str) {
        fill(browser, "#key", key).await;
        click(browser, "#sign-in").await;
        wait_text(browser, "#who-name", who).await;
    }

    /// Whether an element `css` is on the page now.
    async fn present(browser: &Client, css: &str) -> bool {
        !browser
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    /// Polls `check` until it gives a value, for 15 s at most.
    async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
    where
        F: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: not within 15 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(browser: &Client, css: &str) {
        let element = browser
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.click().await.unwrap();
    }

    /// Chooses `value` in the select `css`.
    async fn choose(browser: &Client, css: &str, value: &str) {
        let select = browser.find(Locator::Css(css)).await.unwrap();
        select.select_by_value(value).await.unwrap();
    }

    #[tokio::test]
    #[ignore = "needs chromium and chromedriver: .ci/run installs and starts them (TOWER_API_KEY_CHROMEDRIVER)"]
    async fn an_operator_issues_uses_watches_and_revokes_a_key_in_the_browser() {
        let quarter = Duration::from_secs(90 * 86_400);
        let (app, keys, admin) = console_app("operator", |console| {
            console.max_keys_per_owner(2).max_key_lifetime(quarter)
        })
        .await;
        let held = HeldBack::default();
        let addr = serve(held.hold_hour_reports(app)).await;
        let http = HttpClient::new(addr);
        let base = format!("http://{addr}/admin");

        let browser = browser().await;
        browser.goto(&base).await.unwrap();
        wait_text(&browser, "h1", "Sign in").await;
        screenshot(&browser, "1-sign-in").await;

        sign_in(&browser, &admin, "operator · admin").await;
        wait_text(&browser, "main h1", "Overview").await;
        wait_text(&browser, ".cards", "Requests").await;
        screenshot(&browser, "2-overview").await;

        // An owner at the most keys allowed gets none more: the form says why, and what to do.
        click(&browser, "#nav a.primary").await;
        wait_text(&browser, "main h1", "Generate New API Key").await;
        wait_text(
            &browser,
            "#key-limit",
            "Each owner may hold at most 2 keys in use",
        )
        .await;
        for name in ["acme one", "acme two"] {
            keys.create(NewKey::new(name).owner("acme")).await.unwrap();
        }
        fill(&browser, "#new-name", "One too many").await;
        fill(&browser, "#new-owner", "acme").await;
        click(&browser, "#create-submit").await;
        wait_text(&browser, "#create .notice", "KEY_LIMIT_REACHED").await;
        wait_text(&browser, "#create .notice", "revoke or delete one first").await;
        screenshot(&browser, "3a-key-limit-reached").await;
        let acme = tower_api_key::store::KeyFilter::new().owner("acme");
        let listed = keys.list_matching(&acme).await.unwrap();
        assert_eq!(listed.len(), 2, "nothing issued");

        // Issue a key through a new form: a name, Read and Write, the pro plan.
        browser.goto(&format!("{base}#/keys")).await.unwrap();
        wait_text(&browser, "main h1", "API keys").await;
        click(&browser, "#nav a.primary").await;
        wait_text(&browser, "main h1", "Generate New API Key").await;
        fill(&browser, "#new-name", "Production App").await;
        click(&browser, "#scope-write").await;
        choose(&browser, "#f-plan", "pro").await;
        // No key lives longer than 90 days: the form says so, and offers no later expiry.
        wait_text(
            &browser,
            "#key-lifetime",
            "Keys expire at most 90 days after they are issued.",
        )
        .await;
        let expiries = wait_text(&browser, "#f-expires_in", "At the longest (90 days)").await;
        assert!(expiries.contains("In 30 days"), "{expiries}");
        for later in ["In 90 days", "In a year", "Never"] {
            assert!(!expiries.contains(later), "{expiries}");
        }
        screenshot(&browser, "3-new-key-form").await;
        let before = std::time::SystemTime::now();
        click(&browser, "#create-submit").await;

        // Shown once: the key, the export line, the warning.
        wait_text(&browser, "#once-title", "Your new API key").await;
        let plaintext = shown_once(&browser).await;
        let export = wait_text(&browser, "#export", "export MESH_API_KEY=").await;
        assert!(
            export.ends_with(&plaintext),
            "the export line holds the key"
        );
        wait_text(&browser, ".warning", "will only be shown once").await;
        screenshot(&browser, "4-shown-once").await;
        let issued = keys.list().await.unwrap();
        let issued = issued
            .iter()
            .find(|key| key.name == "Production App")
            .unwrap();
        let issued_id = issued.id.clone();
        let expires = issued.expires_at.expect("the longest lifetime");
        from_now(expires, before, quarter);
        let url = browser.current_url().await.unwrap();
        assert!(
            !url.as_str().contains(&plaintext),
            "the key is never in a URL"
        );

        // The key works against the service: three requests.
        for _ in 0..3 {
            let reply = http
                .get("/items/7", &[("authorization", &api_key(&plaintext))])
                .await;
            assert_eq!(reply.status, StatusCode::OK);
        }

        // Done: the key is gone from the page, which now shows the key and its usage.
        copied(&browser, &plaintext, "main h1", "Production App").await;
        wait_text(&browser, ".usage .cards", "3").await;
        wait_text(&browser, ".usage .tables", "/items/{id}").await;
        wait_text(&browser, ".details", "pro").await;
        wait_text(&browser, "table.limits", "minute").await;
        screenshot(&browser, "5-key").await;

        // The last 30 days: the same three requests, on charts that start a month ago.
        click(&browser, ".segmented button[data-range='30d']").await;
        let days_ago = |n: u64| {
            let at = std::time::SystemTime::now() - Duration::from_secs(n * 86_400);
            humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
        };
        let (month, days) = (&days_ago(30), &days_ago(29));
        let page = &browser;
        eventually("the charts of the last 30 days", || async move {
            let chart = page
                .find(Locator::Css(".usage .charts figure"))
                .await
                .ok()?;
            let text = chart.text().await.ok()?;
            (text.contains(month.as_str()) || text.contains(days.as_str())).then_some(())
        })
        .await;
        wait_text(&browser, ".usage .cards", "3").await;
        let pressed = browser
            .find(Locator::Css(".segmented button[aria-pressed='true']"))
            .await
            .unwrap();
        assert_eq!(pressed.text().await.unwrap(), "Last 30 days");

        // The last hour asked, then the last 30 days at once: the hour's answer, held back,
        // comes last, and the panel still shows the range chosen last.
        held.on.store(true, Ordering::SeqCst);
        click(&browser, ".segmented button[data-range='1h']").await;
        click(&browser, ".segmented button[data-range='30d']").await;
        eventually("the hour's report answered", || async {
            (held.answered.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        held.on.store(false, Ordering::SeqCst);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let chart = browser.find(Locator::Css(".usage .charts figure")).await;
            let text = chart.unwrap().text().await.unwrap();
            assert!(
                text.contains(month.as_str()) || text.contains(days.as_str()),
                "the older answer replaced the newer: {text}"
            );
        }
        let pressed = browser
            .find(Locator::Css(".segmented button[aria-pressed='true']"))
            .await
            .unwrap();
        assert_eq!(pressed.text().await.unwrap(), "Last 30 days");

        // The keys page lists it, with its sparkline.
        click(&browser, "#nav a[href='#/keys']").await;
        wait_text(&browser, "table.keys", "Production App").await;
        browser
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css("table.keys svg.spark"))
            .await
            .unwrap();
        // This layer's only sink is `Analytics`: no key's last use reaches the store, so the
        // page says so and offers no filter that would show keys in use as unused.
        wait_text(
            &browser,
            "#last-use-note",
            "does not record when keys were last used",
        )
        .await;
        assert!(
            !present(&browser, "#f-unused_for").await,
            "no last-use filter"
        );
        wait_text(&browser, "table.keys tbody", "not recorded").await;
        screenshot(&browser, "6-keys").await;

        // A key made 200 days ago: the filter for keys due for rotation finds it, and not the
        // new one.
        let format = tower_api_key::key::KeyFormat::new("operator").unwrap();
        let mut legacy = NewKey::new("Legacy Deploy")
            .generate(&format)
            .unwrap()
            .record;
        let day = Duration::from_secs(86_400);
        legacy.created_at = std::time::SystemTime::now() - 200 * day;
        legacy.expires_at = Some(std::time::SystemTime::now() + 5 * day);
        let legacy_id = legacy.id.clone();
        keys.store().create(legacy).await.unwrap();
        choose(&browser, "#f-older_than", "90d").await;
        click(&browser, "form.filters button[type=submit]").await;
        let listed = wait_text(&browser, "table.keys tbody", "Legacy Deploy").await;
        assert!(!listed.contains("Production App"), "{listed}");
        assert!(browser
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("older_than=90d"));
        screenshot(&browser, "6b-keys-due-for-rotation").await;

        // It expires in five days: the filter for keys about to expire finds it alone.
        click(&browser, "#nav a[href='#/keys']").await;
        wait_text(&browser, "table.keys", "Production App").await;
        choose(&browser, "#f-expires_within", "7d").await;
        click(&browser, "form.filters button[type=submit]").await;
        wait_text(&browser, ".pager", "of 1").await;
        let listed = wait_text(&browser, "table.keys tbody", "Legacy Deploy").await;
        assert!(!listed.contains("Production App"), "{listed}");
        screenshot(&browser, "6c-keys-expiring-soon").await;
        click(&browser, "#nav a[href='#/keys']").await;
        wait_text(&browser, "table.keys", "Production App").await;

        // Keys issued before the longest lifetime (the admin's own, acme's two: no expiry) are
        // brought within it, after a confirmation; the list shows their new expiry.
        wait_text(&browser, "#lifetime", "Keys live at most 90 days.").await;
        wait_text(
            &browser,
            "#lifetime",
            "3 keys in use expire later, or never",
        )
        .await;
        let row = |name: &'static str| {
            let browser = browser.clone();
            async move {
                let rows = browser
                    .find_all(Locator::Css("table.keys tbody tr"))
                    .await
                    .unwrap();
                for row in rows {
                    let text = row.text().await.unwrap();
                    if text.contains(name) {
                        return text;
                    }
                }
                panic!("no row for {name}");
            }
        };
        click(&browser, "#apply-lifetime").await;
        wait_text(
            &browser,
            "#confirm-title",
            "Bring every key within 90 days?",
        )
        .await;
        click(&browser, "#confirm-ok").await;
        let said = wait_text(&browser, "#lifetime-status", "keys now expire").await;
        let date = said
            .split("expire ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix('.'))
            .unwrap_or_else(|| panic!("{said}"))
            .to_owned();
        for name in ["acme one", "acme two", "operator"] {
            let text = row(name).await;
            assert!(text.contains(&date), "{name}: {text}");
        }
        assert!(
            !row("Legacy Deploy").await.contains(&date),
            "it expires sooner"
        );
        wait_text(&browser, "#lifetime", "Every key in use expires within it.").await;
        assert!(
            !present(&browser, "#apply-lifetime").await,
            "nothing left to bring"
        );
        screenshot(&browser, "6d-keys-within-lifetime").await;

        // Revoke it through its page, confirming in the dialog.
        browser
            .find(Locator::LinkText("Production App"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&browser, "main h1", "Production App").await;

        // An admin moves its expiry: a week from now; nothing later than 90 days is offered.
        let offered = wait_text(&browser, "#f-expiry", "At the longest (90 days)").await;
        assert!(
            !offered.contains("Never") && !offered.contains("In a year"),
            "{offered}"
        );
        choose(&browser, "#f-expiry", "7d").await;
        let before = std::time::SystemTime::now();
        click(&browser, "#save-expiry").await;
        let week = Duration::from_secs(7 * 86_400);
        let (manager, id) = (&keys, &issued_id);
        let shown = || async move { manager.show(id).await.unwrap().unwrap() };
        let moved = eventually("the expiry moved", || async {
            let expires = shown().await.expires_at;
            expires.filter(|at| *at <= seconds(std::time::SystemTime::now() + week))
        })
        .await;
        from_now(moved, before, week);
        let at = std::time::UNIX_EPOCH + Duration::from_secs(moved);
        let date = humantime::format_rfc3339_seconds(at)
            .to_string()
            .replace('T', " ");
        wait_text(&browser, ".details", &format!("{} UTC", &date[..16])).await;
        screenshot(&browser, "7a-expiry-moved").await;

        // And takes Write away: the form saves in place, without the browser's own submission.
        let page = browser.current_url().await.unwrap();
        click(&browser, "#scope-write").await;
        click(&browser, "#save-scopes").await;
        eventually("the scopes changed", || async {
            (shown().await.scopes == ["read"]).then_some(())
        })
        .await;
        let details = wait_text(&browser, ".details", "Scopes\nread\n").await;
        assert!(!details.contains("read, write"), "{details}");
        assert_eq!(browser.current_url().await.unwrap(), page);

        // Its changes, newest first, by the admin's key: the scopes, the expiry, its creation.
        let listed = keys.list().await.unwrap();
        let admin_id = &listed.iter().find(|key| key.name == "operator").unwrap().id;
        let changes = wait_text(&browser, ".history tbody", "scopes").await;
        let order: Vec<Option<usize>> = ["scopes", "expires_at", "create"]
            .iter()
            .map(|change| changes.find(change))
            .collect();
        assert!(order.iter().all(Option::is_some), "{changes}");
        assert!(order.is_sorted(), "newest first: {changes}");
        assert!(changes.contains(admin_id.as_str()), "{changes}");
        let scroll = "document.querySelector('.history').scrollIntoView()";
        browser.execute(scroll, Vec::new()).await.unwrap();
        screenshot(&browser, "7b-key-changes").await;

        click(&browser, "#revoke").await;
        wait_text(&browser, "#confirm-title", "Revoke this key?").await;
        screenshot(&browser, "7-confirm-revoke").await;
        click(&browser, "#confirm-ok").await;
        wait_text(&browser, ".page-head .badge", "revoked").await;
        screenshot(&browser, "8-revoked").await;
        let refused = http
            .get("/items/7", &[("authorization", &api_key(&plaintext))])
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.code(), "API_KEY_REVOKED");
        // "Monitor for any unauthorized usage": the attempt is on the revoked key's page.
        click(&browser, ".segmented button[data-range='1h']").await;
        wait_text(&browser, ".usage .tables", "API_KEY_REVOKED").await;
        let rejected = wait_text(&browser, ".usage .cards .stat:nth-child(2)", "1").await;
        assert!(rejected.contains("Rejected by the layer"), "{rejected}");
        assert!(
            !present(&browser, "table.limits").await,
            "a revoked key's limits no longer matter"
        );
        screenshot(&browser, "8b-revoked-key-tried").await;

        // The old key due for rotation: disabled and enabled again, then rotated with an hour's
        // grace. Its successor is shown once and works; the old key ends within the hour.
        browser
            .goto(&format!("{base}#/keys/{legacy_id}"))
            .await
            .unwrap();
        wait_text(&browser, "main h1", "Legacy Deploy").await;
        click(&browser, "#toggle").await;
        wait_text(&browser, ".page-head .badge", "disabled").await;
        assert_eq!(
            keys.show(&legacy_id).await.unwrap().unwrap().state,
            "disabled"
        );
        click(&browser, "#toggle").await;
        wait_text(&browser, ".page-head .badge", "active").await;
        choose(&browser, "#f-grace", "1h").await;
        let before = std::time::SystemTime::now();
        click(&browser, "#rotate").await;
        wait_text(&browser, "#confirm-title", "Rotate this key?").await;
        click(&browser, "#confirm-ok").await;
        wait_text(&browser, "#once-title", "The new key for Legacy Deploy").await;
        let successor = shown_once(&browser).await;
        let works = http
            .get("/items/7", &[("authorization", &api_key(&successor))])
            .await;
        assert_eq!(works.status, StatusCode::OK);
        let hour = Duration::from_secs(3_600);
        let ends = keys.show(&legacy_id).await.unwrap().unwrap().expires_at;
        from_now(ends.expect("the grace period's end"), before, hour);
        screenshot(&browser, "8a-rotated").await;
        copied(&browser, &successor, ".details", "rotated_from").await;

        // The command line tool sets an owner's limits: a change of no key, in the same trail.
        let owner = AuditEvent::new("cli:alice", "owner", "")
            .owner(Some("acme"))
            .detail(["limits"]);
        keys.record_change(&owner).await.unwrap();

        // The activity page lists the changes, newest first: the owner's, the revoke, then the
        // creation.
        click(&browser, "#nav a[href='#/activity']").await;
        let trail = wait_text(&browser, "table.activity", "revoke").await;
        let (revoke, create) = (trail.find("revoke"), trail.find("create"));
        assert!(
            revoke < create,
            "newest first: {revoke:?} before {create:?}"
        );
        let first = browser
            .find(Locator::Css("table.activity tbody tr"))
            .await
            .unwrap();
        let first = first.text().await.unwrap();
        for shown in ["owner", "—", "acme", "cli:alice", "limits"] {
            assert!(first.contains(shown), "{shown:?} in {first:?}");
        }
        let links = browser
            .find_all(Locator::Css("table.activity tbody tr:first-child a"))
            .await
            .unwrap();
        assert!(links.is_empty(), "an owner's change links to no key");
        screenshot(&browser, "9-activity").await;

        // A narrow screen: the keys table becomes one card per key.
        browser.set_window_size(390, 844).await.unwrap();
        click(&browser, "#nav a[href='#/keys']").await;
        wait_text(&browser, "table.keys", "Production App").await;
        screenshot(&browser, "10-narrow").await;

        // Signing out forgets the key: the page asks for one again.
        click(&browser, "#sign-out").await;
        wait_text(&browser, "h1", "Sign in").await;
        let stored = browser
            .execute("return sessionStorage.length", Vec::new())
            .await
            .unwrap();
        assert_eq!(stored, json!(0));
        browser.close().await.unwrap();
    }

    /// A key holder with the self-service scope manages its owner's keys only: it sees them and
    /// no other owner's, issues keys in its own environment with the scopes it holds (no plan,
    /// no owner, no expiry past the longest), disables a key but cannot enable it again or move
    /// its expiry, and another owner's key is a key that does not exist.
    #[tokio::test]
    #[ignore = "needs chromium and chromedriver: .ci/run installs and starts them (TOWER_API_KEY_CHROMEDRIVER)"]
    async fn a_key_holder_manages_its_own_keys_and_no_others_in_the_browser() {
        let (app, keys, _) = console_app("operator", |console| {
            let month = Duration::from_secs(30 * 86_400);
            // As where the service's own replicas write last use into the store.
            (console.max_keys_per_owner(5).max_key_lifetime(month)).last_use_recorded(true)
        })
        .await;
        let holder = keys
            .create(
                NewKey::new("acme console")
                    .owner("acme")
                    .scopes(["read", "keys:self"]),
            )
            .await
            .unwrap();
        keys.create(NewKey::new("acme worker").owner("acme").scopes(["read"]))
            .await
            .unwrap();
        let globex = keys
            .create(NewKey::new("globex app").owner("globex").scopes(["write"]))
            .await
            .unwrap();
        let addr = serve(app).await;
        let base = format!("http://{addr}/admin");
        let browser = browser().await;
        browser.goto(&base).await.unwrap();
        wait_text(&browser, "h1", "Sign in").await;
        sign_in(
            &browser,
            holder.key.expose_secret(),
            "acme console · self-service",
        )
        .await;
        wait_text(&browser, "main p", "Usage of the keys of acme.").await;

        // Its owner's keys only, and no owner filter.
        click(&browser, "#nav a[href='#/keys']").await;
        let listed = wait_text(&browser, "table.keys tbody", "acme worker").await;
        assert!(
            listed.contains("acme console") && !listed.contains("globex"),
            "{listed}"
        );
        assert!(!present(&browser, "#f-owner").await, "no owner filter");
        // Last use is recorded here: the filter by it, and no note. Nothing used these keys.
        assert!(!present(&browser, "#last-use-note").await, "no note");
        choose(&browser, "#f-unused_for", "30d").await;
        click(&browser, "form.filters button[type=submit]").await;
        wait_text(&browser, ".pager", "of 2").await;
        let unused = wait_text(&browser, "table.keys tbody", "acme worker").await;
        assert!(unused.contains("acme console"), "{unused}");
        screenshot(&browser, "s1-self-service-keys").await;

        // The new-key form: its own environment, the scopes it holds, no plan or owner.
        click(&browser, "#nav a.primary").await;
        wait_text(&browser, "#key-limit", "You may hold at most 5 keys in use").await;
        wait_text(&browser, "#key-lifetime", "at most 30 days").await;
        let environments = wait_text(&browser, "#f-environment", "live").await;
        assert_eq!(environments.trim(), "live");
        let scopes = wait_text(&browser, "fieldset.scopes", "Read").await;
        assert!(
            !scopes.contains("Write") && !scopes.contains("Admin"),
            "{scopes}"
        );
        for absent in ["#f-plan", "#new-owner"] {
            assert!(!present(&browser, absent).await, "no {absent}");
        }
        fill(&browser, "#new-name", "acme deploy").await;
        screenshot(&browser, "s2-self-service-new-key").await;
        click(&browser, "#create-submit").await;
        wait_text(&browser, "#once-title", "Your new API key").await;
        click(&browser, "#done").await;
        wait_text(&browser, "main h1", "acme deploy").await;
        let details = wait_text(&browser, ".details", "acme").await;
        assert!(details.contains("read"), "{details}");
        let issued = keys
            .list_matching(&KeyFilter::new().name("acme deploy"))
            .await
            .unwrap();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].owner.as_deref(), Some("acme"));
        assert!(issued[0].expires_at.is_some(), "the longest lifetime");

        // No expiry to move; disabled, it cannot be enabled again by its holder.
        assert!(!present(&browser, "#expiry").await, "no expiry form");
        click(&browser, "#toggle").await;
        wait_text(&browser, ".page-head .badge", "disabled").await;
        assert!(!present(&browser, "#toggle").await, "no Enable button");
        wait_text(
            &browser,
            "#disabled-note",
            "until an admin enables it again",
        )
        .await;
        screenshot(&browser, "s3-self-service-disabled").await;

        // Another owner's key, by its id: no such key.
        let id = &globex.record.id;
        browser.goto(&format!("{base}#/keys/{id}")).await.unwrap();
        wait_text(&browser, "main", "no such key").await;
        screenshot(&browser, "s4-another-owners-key").await;
        let page = browser.source().await.unwrap();
        assert!(!page.contains("globex app"), "nothing of it is shown");
        click(&browser, "main a[href='#/keys']").await;
        wait_text(&browser, "table.keys tbody", "acme deploy").await;
        browser.close().await.unwrap();
    }
}
