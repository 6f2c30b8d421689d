//! One span and one measurement per call: the method, the calling
//! organisation (as the `x-phb-org` header names it, if it is a valid id)
//! and the result code, in a `tracing` span (`rpc`) and in the metrics
//! (`phb_requests_total`, `phb_request_duration_seconds`). Never request
//! content: ids only, never references or amounts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument as _;

/// The methods a label may name: anything else is `other`, so the number
/// of series stays bounded whatever paths clients send.
const LEDGER_METHODS: &[&str] = &[
    "Append",
    "GetBalance",
    "ListBalances",
    "ReadLog",
    "GetHoldings",
    "GetBudgetStatement",
    "GetCarePlan",
    "ListFlags",
    "GetSpendingSummary",
    "GetQuarterlyReturn",
    "GetCheckpoint",
    "GetInclusionProof",
    "GetConsistencyProof",
];

fn method_label(path: &str) -> &'static str {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return "other";
    };
    if service == phb_proto::SERVICE_NAME {
        return LEDGER_METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other");
    }
    match service {
        "grpc.health.v1.Health" => "health",
        s if s.starts_with("grpc.reflection.") => "reflection",
        _ => "other",
    }
}

/// The organisation id a read call names, if it is a well-formed id (the
/// rule every id follows: `phb_domain::event::check_id`); `invalid` if it
/// is not, `-` if there is none.
fn org_label(req: &http::HeaderMap) -> String {
    match req.get("x-phb-org").map(|v| v.to_str()) {
        Some(Ok(id))
            if phb_domain::event::check_id("x-phb-org", id, phb_domain::event::MAX_ID_LEN)
                .is_ok() =>
        {
            id.to_string()
        }
        Some(_) => "invalid".into(),
        None => "-".into(),
    }
}

/// See the module docs.
#[derive(Clone, Default)]
pub(crate) struct ObserveLayer;

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        let org = org_label(req.headers());
        let span = tracing::info_span!("rpc", method, org = %org, code = tracing::field::Empty);
        let started = Instant::now();
        let fut = {
            let _in = span.enter();
            self.inner.call(req)
        };
        Box::pin(async move {
            let res = fut.instrument(span.clone()).await;
            // A unary success carries its status in the trailers: headers
            // without one mean OK so far (a stream's later failure is in
            // its trailers, counted as OK here).
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => 2,
            };
            let name = crate::status::code_name(code);
            span.record("code", name);
            let elapsed = started.elapsed();
            let m = phb_metrics::global();
            m.requests.with(&[method, name]).inc();
            m.request_seconds
                .with(&[method])
                .observe(elapsed.as_secs_f64());
            tracing::debug!(parent: &span, elapsed_us = elapsed.as_micros() as u64, "call answered");
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label("/phb.ledger.v1.LedgerService/Append"),
            "Append"
        );
        assert_eq!(method_label("/phb.ledger.v1.LedgerService/Nope"), "other");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "health");
        assert_eq!(method_label("/x"), "other");
        let mut h = http::HeaderMap::new();
        assert_eq!(org_label(&h), "-");
        h.insert("x-phb-org", "icb-north".parse().unwrap());
        assert_eq!(org_label(&h), "icb-north");
        h.insert("x-phb-org", "nhs:icb-north".parse().unwrap());
        assert_eq!(
            org_label(&h),
            "nhs:icb-north",
            "every well-formed id, ':' too"
        );
        h.insert("x-phb-org", "Jane Smith 1960".parse().unwrap());
        assert_eq!(org_label(&h), "invalid");
    }
}
