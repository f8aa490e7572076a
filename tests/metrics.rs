//! The `metrics` facade over real HTTP on 127.0.0.1, read back as the Prometheus text the demo
//! serves (`metrics-exporter-prometheus`).

#[cfg(not(all(feature = "metrics", feature = "axum")))]
#[test]
#[ignore = "metrics need `--features metrics,axum` (run by .ci/run)"]
fn metrics_suite_needs_its_features() {}

#[cfg(all(feature = "metrics", feature = "axum"))]
mod common;

#[cfg(all(feature = "metrics", feature = "axum"))]
mod metrics_facade {
    use axum::routing::get;
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use tower_api_key::usage::{MetricsSink, DURATION, REQUESTS};
    use tower_api_key::{store::KeyStoreAdmin, ApiKeyLayer, MemoryStore, NewKey};

    use super::common::{api_key, items, serve, HttpClient};

    /// The value of the sample of `name` whose labels include every one of `labels`.
    fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| labels.iter().all(|label| line.contains(label)))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    fn install() -> PrometheusHandle {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).unwrap();
        handle
    }

    #[tokio::test]
    async fn requests_are_counted_by_outcome_status_and_route_with_bounded_labels() {
        let prometheus = install();
        let store = MemoryStore::new();
        let layer = ApiKeyLayer::builder("mesh", store.clone())
            .usage_sink(MetricsSink::new().max_endpoints(1))
            .build()
            .unwrap();
        let app = items()
            .route("/other", get(|| async { "" }))
            .layer(layer.clone());
        let client = HttpClient::new(serve(app).await);
        let created = NewKey::new("metrics").generate(layer.format()).unwrap();
        store.create(created.record.clone()).await.unwrap();
        let key = api_key(created.key.expose_secret());
        for id in 0..3 {
            let reply = client
                .get(&format!("/items/{id}"), &[("authorization", &key)])
                .await;
            assert_eq!(reply.status, 200);
        }
        assert_eq!(
            client
                .get("/other", &[("authorization", &key)])
                .await
                .status,
            200
        );
        assert_eq!(client.get("/items/1", &[]).await.status, 401);

        let text = prometheus.render();
        let ok = ["outcome=\"ok\"", "status=\"2xx\""];
        let route = [&ok[..], &["endpoint=\"/items/{id}\""]].concat();
        assert_eq!(sample(&text, REQUESTS, &route), Some(3.0), "{text}");
        let other = [&ok[..], &["endpoint=\"other\""]].concat();
        assert_eq!(sample(&text, REQUESTS, &other), Some(1.0), "{text}");
        let refused = ["outcome=\"MISSING_API_KEY\"", "status=\"4xx\""];
        assert_eq!(sample(&text, REQUESTS, &refused), Some(1.0), "{text}");
        // No key ids unless asked for.
        assert!(!text.contains(&created.record.id), "{text}");
        let count = format!("{DURATION}_count");
        assert_eq!(
            sample(&text, &count, &["endpoint=\"/items/{id}\""]),
            Some(3.0),
            "{text}"
        );
    }
}
